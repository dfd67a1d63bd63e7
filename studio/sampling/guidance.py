"""Guidance beyond CFG, as the loop's guidance hook: classifier guidance and text guidance.

Both follow classifier guidance in its eps form (Dhariwal & Nichol 2021, sec. 4; Song et al. 2021):
    eps_hat = eps - sqrt(1 - a_t) * scale * grad_{x_t} log p(y | x_t)
with x_t in VP form. Classifier guidance takes log p from a noise-aware classifier of x_t; text guidance takes it
from a clean-image judge (CLIP, or the embedded suite's evaluator) applied to the decoded x0-hat, with the gradient
reaching x_t through x0-hat = (x_t - sqrt(1 - a) eps) / sqrt(a) (eps held fixed: no backward pass through the UNet).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from studio.errors import RequestError
from studio.sampling.loop import LoopState, vp_view

# log p(y | x) per sample, from (x_t in VP form, timestep, alpha_bar, eps)
LogProb = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def attribute_log_prob(logits: dict[str, torch.Tensor], targets: dict[str, int]) -> torch.Tensor:
    """Sum over the requested heads of log softmax at the target class: log p(all requested attributes)."""
    return sum(F.log_softmax(logits[head].float(), dim=1)[:, cls] for head, cls in targets.items())


@dataclass
class GradientGuidance:
    """The loop's guidance hook: shifts the (CFG-combined) eps by the gradient of a log-probability."""

    log_prob: LogProb
    scale: float
    scheduler: object
    space: str

    def __call__(self, state: LoopState) -> torch.Tensor:
        if self.scheduler.config.prediction_type != "epsilon":
            raise RequestError("Classifier and text guidance need an eps-prediction model; this one predicts "
                               f"{self.scheduler.config.prediction_type}.")
        eps = state.model_output.detach()
        with torch.enable_grad():
            x_vp, alpha_bar = vp_view(self.scheduler, self.space, state.latents.detach(), state.t)
            x_vp = x_vp.detach().float().requires_grad_(True)
            logp = self.log_prob(x_vp, state.t, alpha_bar.float(), eps.float())
            grad = torch.autograd.grad(logp.sum(), x_vp)[0]
        state.metrics["guidance_log_prob"] = float(logp.detach().mean())
        return (eps - (1 - alpha_bar).sqrt() * self.scale * grad.to(eps.dtype)).to(state.model_output.dtype)


def classifier_log_prob(classifier: torch.nn.Module, targets: dict[str, int]) -> LogProb:
    """log p(y | x_t) from a noise-aware classifier called as classifier(x_t, t) -> {head: logits}."""

    def log_prob(x_vp, t, alpha_bar, eps):
        t_batch = t.float().expand(len(x_vp)).to(x_vp.device)
        return attribute_log_prob(classifier(x_vp, t_batch), targets)

    return log_prob


def x0_judge_log_prob(decode: Callable[[torch.Tensor], torch.Tensor], judge: Callable[[torch.Tensor], torch.Tensor]) -> LogProb:
    """log p(y | x0-hat) from a judge of clean images: `decode` maps UNet latents to images in [-1, 1]."""

    def log_prob(x_vp, t, alpha_bar, eps):
        x0 = (x_vp - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
        return judge(decode(x0))

    return log_prob


def evaluator_judge(evaluator: torch.nn.Module, targets: dict[str, int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The embedded suite's attribute classifier as a text judge: log p(prompt's attributes | image)."""
    return lambda images: attribute_log_prob(evaluator(images.clamp(-1, 1)), targets)


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_judge(clip_model, tokenizer, prompt: str, weight: float = 100.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """CLIP as a text judge: weight * cosine(image, prompt), the logit CLIP itself uses (logit scale ~100)."""
    device = next(clip_model.parameters()).device
    with torch.no_grad():
        ids = tokenizer([prompt], padding=True, truncation=True, return_tensors="pt").to(device)
        text = F.normalize(_projected(clip_model.get_text_features(**ids)).float(), dim=-1)
    size = clip_model.config.vision_config.image_size
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)

    def judge(images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate((images.float().clamp(-1, 1) + 1) / 2, size=(size, size), mode="bilinear", align_corners=False)
        feats = _projected(clip_model.get_image_features(pixel_values=((x - mean) / std).to(clip_model.dtype)))
        feats = F.normalize(feats.float(), dim=-1)
        return weight * (feats @ text.T).squeeze(1)

    return judge


def _projected(output) -> torch.Tensor:
    """CLIP's projected embedding: transformers 5 returns it as pooler_output of a model output, 4.x as a tensor."""
    return output if torch.is_tensor(output) else output.pooler_output
