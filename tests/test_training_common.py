"""The shared training pieces against closed forms and hand computations; the trainers' smoke runs."""
from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

from studio.training import common as C


def _x0_noise(shape=(2, 4, 3, 3)):
    g = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


# ---------------------------------------------------------------- noising
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_noised_matches_the_vp_closed_form(prediction_type):
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction_type)
    x0, noise = _x0_noise()
    t = torch.tensor([10, 800])
    a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t, target = C.noised(scheduler, x0, noise, t)
    torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * noise)
    expected = noise if prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
    torch.testing.assert_close(target, expected)


def test_noised_matches_the_flow_closed_form():
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    x0, noise = _x0_noise()
    t = torch.tensor([250.0, 900.0])
    s = torch.tensor([0.25, 0.9]).view(-1, 1, 1, 1)
    x_t, target = C.noised(scheduler, x0, noise, t)
    torch.testing.assert_close(x_t, (1 - s) * x0 + s * noise)
    torch.testing.assert_close(target, noise - x0)


def test_flow_timesteps_come_from_the_schedulers_own_shifted_grid():
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    t = C.sample_timesteps(scheduler, 64, torch.device("cpu"))
    assert set(t.tolist()) <= set(scheduler.timesteps.tolist())
    ddpm = C.sample_timesteps(DDPMScheduler(), 64, torch.device("cpu"))
    assert ddpm.dtype == torch.int64 and 0 <= ddpm.min() and ddpm.max() < 1000


def test_unknown_prediction_type_is_a_loud_error():
    with pytest.raises(ValueError, match="sample"):
        C.noised(DDPMScheduler(prediction_type="sample"), *_x0_noise(), torch.tensor([1, 2]))


# ---------------------------------------------------------------- min-SNR
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_by_hand_at_two_timesteps(prediction_type):
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction_type)
    t = torch.tensor([20, 700])  # SNR far above 5 (clipped) and below it (weight 1 for epsilon)
    weights = C.min_snr_weights(scheduler, t, gamma=5.0)
    for w, step in zip(weights.tolist(), t.tolist()):
        a = scheduler.alphas_cumprod[step].item()
        snr = a / (1 - a)
        expected = min(snr, 5.0) / (snr if prediction_type == "epsilon" else snr + 1)
        assert w == pytest.approx(expected, rel=1e-5)
    if prediction_type == "epsilon":
        assert weights[0] < 1 and weights[1] == pytest.approx(1.0)


def test_min_snr_refuses_flow_matching():
    with pytest.raises(ValueError, match="flow"):
        C.min_snr_weights(FlowMatchEulerDiscreteScheduler(), torch.tensor([500.0]))


def test_diffusion_loss_weights_each_sample():
    pred, target = torch.zeros(2, 1, 2, 2), torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 2.0)])
    assert C.diffusion_loss(pred, target).item() == pytest.approx((1 + 4) / 2)
    assert C.diffusion_loss(pred, target, torch.tensor([1.0, 0.5])).item() == pytest.approx((1 + 2) / 2)


# ---------------------------------------------------------------- LR schedule and budget
def test_lr_schedule_values():
    base = 3e-4
    assert C.lr_at(base, 0.0, 0, warmup=300) == pytest.approx(base / 300)  # warmup start
    assert C.lr_at(base, 0.0, 299, warmup=300) == pytest.approx(base)  # warmup end, cosine at its top
    assert C.lr_at(base, 0.5, 5000, warmup=300) == pytest.approx(base * 0.55)  # halfway: floor + half the rest
    assert C.lr_at(base, 1.0, 10_000, warmup=300) == pytest.approx(0.1 * base)  # end of run: the floor
    assert C.lr_at(2e-3, 1.0, 10_000, floor=0.05) == pytest.approx(1e-4)
    # The numbers the trainers had before the move, to the bit.
    for frac, step in [(0.0, 0), (0.3, 150), (0.77, 4000)]:
        old = base * min(1.0, (step + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        assert C.lr_at(base, frac, step) == old


def test_budget_stops_at_the_step_cap_counted_from_the_resume_point():
    budget = C.Budget(minutes=60, max_steps=100, start_step=60)
    assert not budget.done(99) and budget.done(100)
    assert budget.fraction(80) == pytest.approx(0.5, abs=1e-3)
    assert C.Budget(minutes=0, max_steps=100).done(0)


# ---------------------------------------------------------------- EMA
def test_ema_moves_toward_the_parameters_by_the_decay():
    model = torch.nn.Linear(3, 1)
    ema = C.EMA(model, max_decay=0.9)
    before = ema.model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=1)  # decay min(0.9, 2/11)
    d = 2 / 11
    torch.testing.assert_close(ema.model.weight, d * before + (1 - d) * model.weight.detach())
    ema.update(model, step=1000)  # decay capped at 0.9
    assert ema.decay(1000) == 0.9
    assert not ema.model.weight.requires_grad


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_and_resume_picks_the_latest(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ema = C.EMA(model)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    folder = tmp_path / "checkpoints"
    assert C.resume(folder, {"model": model}) == 0 and C.load_latest(folder) is None
    C.save_checkpoint(folder, 5, {"model": model, "optimizer": opt, "ema": ema})
    with torch.no_grad():
        model.weight.add_(1.0)
    C.save_checkpoint(folder, 12, {"model": model, "optimizer": opt, "ema": ema})
    C.save_checkpoint(folder, 9, {"model": model, "optimizer": opt, "ema": ema})  # written later, but an earlier step
    assert [p.name for p in C.checkpoints(folder)] == ["step-000000009.pt", "step-000000012.pt"]  # keep=2 pruned 5
    assert not list(folder.glob("*.tmp")) and C.latest_step(folder) == 12

    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    fresh_ema = C.EMA(fresh)
    assert C.resume(folder, {"model": fresh, "optimizer": fresh_opt, "ema": fresh_ema}) == 12
    torch.testing.assert_close(fresh.weight, model.weight)
    torch.testing.assert_close(fresh_ema.model.weight, ema.model.weight)
    torch.testing.assert_close(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(KeyError, match="text_encoder"):
        C.resume(folder, {"text_encoder": fresh})


# ---------------------------------------------------------------- smoke runs of the trainers (seconds on a CPU)
def test_suite_trainer_runs_a_few_steps_and_resumes(tmp_path):
    from studio.shapes import train

    common = ["--out", str(tmp_path), "--device", "cpu", "--data", "16", "--workers", "1",
              "--vae-steps", "2", "--vae-batch", "4", "--eval-steps", "1", "--eval-batch", "4",
              "--unet-steps", "2", "--unet-batch", "4"]
    train.main(common + ["--stages", "vae,unet"])
    assert C.latest_step(tmp_path / "checkpoints" / "unet") == 2
    assert (tmp_path / "ema" / "unet" / "config.json").exists() and (tmp_path / "vae" / "config.json").exists()
    train.main(common[:-4] + ["--unet-steps", "3", "--unet-batch", "4", "--stages", "unet"])  # resumes at step 2
    assert C.latest_step(tmp_path / "checkpoints" / "unet") == 3


def test_controlnet_trainer_runs_a_few_steps_and_resumes(tmp_path):
    from studio.shapes import train_controlnet

    args = ["--kind", "canny", "--out", str(tmp_path), "--device", "cpu", "--data", "8", "--batch", "2"]
    train_controlnet.main(args + ["--steps", "2"])
    train_controlnet.main(args + ["--steps", "3", "--export", str(tmp_path / "export")])
    assert C.latest_step(tmp_path / "checkpoints") == 3
    assert (tmp_path / "export" / "diffusion_pytorch_model.safetensors").exists()


def test_noisy_classifier_trainer_runs_a_few_steps_and_resumes(tmp_path, monkeypatch):
    from studio.shapes import noisy_classifier as nc

    encode = nc.encode_scenes
    monkeypatch.setattr(nc, "encode_scenes", lambda vae, seed, n: encode(vae, seed, min(n, 32)))  # a small validation set
    args = ["--out", str(tmp_path), "--device", "cpu", "--data", "16", "--batch", "4"]
    nc.main(args + ["--steps", "2"])
    nc.main(args + ["--steps", "3"])
    assert C.latest_step(tmp_path / "checkpoints") == 3
    assert set(nc.load(tmp_path).heads) == set(nc.HEADS)  # the finished classifier loads as the studio loads it
