"""Sampler names as users know them (A1111 / ComfyUI) -> diffusers schedulers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from studio.errors import RequestError


@dataclass(frozen=True)
class Sampler:
    cls: type[SchedulerMixin]
    # Which space the scheduler's latents live in, needed for x0-hat:
    # "vp" x_t = sqrt(a) x0 + sqrt(1-a) eps;  "ve" x_t = x0 + sigma eps (k-diffusion);  "flow" x_t = (1-s) x0 + s noise.
    space: str
    kwargs: dict[str, Any] = field(default_factory=dict)


SAMPLERS: dict[str, Sampler] = {
    "DDIM": Sampler(DDIMScheduler, "vp"),
    "DDPM": Sampler(DDPMScheduler, "vp"),
    "Euler": Sampler(EulerDiscreteScheduler, "ve"),
    "Euler a": Sampler(EulerAncestralDiscreteScheduler, "ve"),
    "Heun": Sampler(HeunDiscreteScheduler, "ve"),
    "DPM++ 2M": Sampler(DPMSolverMultistepScheduler, "vp"),
    "DPM++ 2M Karras": Sampler(DPMSolverMultistepScheduler, "vp", {"use_karras_sigmas": True}),
    "UniPC": Sampler(UniPCMultistepScheduler, "vp"),
    "Flow Match Euler": Sampler(FlowMatchEulerDiscreteScheduler, "flow"),
}
FLOW_SAMPLERS = ("Flow Match Euler",)


def sampler_names(flow: bool = False) -> list[str]:
    """The samplers that fit a model: flow samplers for velocity models, the others for noise/v models."""
    return [n for n in SAMPLERS if (n in FLOW_SAMPLERS) == flow]


def get_sampler(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise RequestError(f"Unknown sampler {name!r}. Known samplers: {', '.join(SAMPLERS)}.")
    return SAMPLERS[name]


def make_scheduler(name: str, base_config: dict) -> tuple[SchedulerMixin, str]:
    """A fresh scheduler of the named kind built on the model's own scheduler config; returns it and its space."""
    sampler = get_sampler(name)
    is_flow_model = "FlowMatch" in base_config.get("_class_name", "")
    if is_flow_model != (sampler.space == "flow"):
        fits = ", ".join(sampler_names(flow=is_flow_model))
        kind = "a flow-matching (velocity)" if is_flow_model else "a noise-prediction"
        raise RequestError(f"Sampler {name!r} does not fit {kind} model. Samplers for this model: {fits}.")
    return sampler.cls.from_config(base_config, **sampler.kwargs), sampler.space
