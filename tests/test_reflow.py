"""A reflow round of the flow suite: pairs made by the flow model itself (resumable, one chunk), then training on
those couplings (`train_flow --pairs`): the same noise that made a sample is the one it is trained against."""
from __future__ import annotations

import json

import pytest
import torch

from studio.config import ASSETS_MODELS
from studio.shapes import reflow_pairs, train_flow

TEACHER = ASSETS_MODELS / "shapes-v1-flow"
pytestmark = pytest.mark.skipif(not (TEACHER / "unet").is_dir(), reason="the embedded flow suite is not installed")


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("reflow")
    reflow_pairs.main(["--out", str(out), "--n", str(reflow_pairs.CHUNK), "--steps", "2", "--seed", "3"])
    return out


def test_pairs_hold_the_noise_the_teacher_started_from_and_a_rerun_keeps_them(pairs_dir):
    pairs = reflow_pairs.load_pairs(pairs_dir)
    assert pairs["noise"].shape == pairs["latents"].shape == (reflow_pairs.CHUNK, 4, 16, 16)
    expected = torch.randn(pairs["noise"].shape, generator=torch.Generator().manual_seed(3 * 100_003))
    assert torch.equal(pairs["noise"], expected)
    # Two Euler steps moved every sample well away from its noise, to latents of the data's scale.
    assert (pairs["latents"] - pairs["noise"]).pow(2).mean() > 0.5
    chunk = next(pairs_dir.glob("pairs-*.pt"))
    made = chunk.stat().st_mtime_ns
    reflow_pairs.main(["--out", str(pairs_dir), "--n", str(reflow_pairs.CHUNK), "--steps", "2", "--seed", "3"])
    assert chunk.stat().st_mtime_ns == made  # done chunks are not made again
    assert json.loads((pairs_dir / "pairs.json").read_text())["steps"] == 2


def test_missing_pairs_are_a_clear_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="make them first"):
        reflow_pairs.load_pairs(tmp_path)


def test_training_on_pairs_runs_and_exports_a_loadable_flow_model(pairs_dir, tmp_path, manager):
    out, folder = tmp_path / "run", tmp_path / "shapes-reflow"
    train_flow.main(["--base", str(TEACHER), "--pairs", str(pairs_dir), "--out", str(out), "--steps", "2", "--batch", "4",
                     "--sigmas", "uniform", "--cond-drop", "0", "--export", str(folder)])
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged[0] == {"stage": "flow-data", "scenes": reflow_pairs.CHUNK, "pairs": True, "seconds": logged[0]["seconds"]}
    assert logged[-1]["done"] and logged[-1]["step"] == 2
    assert (folder / "vae_tiny").is_dir() and (folder / "judges.json").is_file()
    model = manager.get(str(folder))
    assert "FlowMatch" in model.pipe.scheduler.config["_class_name"]
