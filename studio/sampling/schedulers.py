"""Sampler names as users know them (A1111 / ComfyUI) -> diffusers schedulers; or the model's own scheduler."""
from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import diffusers
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
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
    # Sigmas for n steps, when not the scheduler's own spacing (passed to set_timesteps(sigmas=...)).
    sigmas: Callable[[int], list[float]] | None = None


def uniform_flow_sigmas(steps: int) -> list[float]:
    """Flow sigmas evenly spaced from 1 down to 1/n, as diffusers' Flux pipeline passes them. The scheduler's own
    spacing (SD3's) ends at sigma 1/1000, so its last step moves almost nothing: 2 steps then draw what 1 does, and
    4 steps what 3 do. Here every one of the n model evaluations moves the sample by 1/n."""
    return [1 - k / steps for k in range(steps)]


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
    "Flow Match Heun": Sampler(FlowMatchHeunDiscreteScheduler, "flow"),
    "Flow Match Euler Uniform": Sampler(FlowMatchEulerDiscreteScheduler, "flow", sigmas=uniform_flow_sigmas),
}
FLOW_SAMPLERS = tuple(name for name, sampler in SAMPLERS.items() if sampler.space == "flow")

MODEL_DEFAULT = ""  # the sampler "name" that means: the model's own scheduler, as its folder configures it
# The space of each scheduler class a model folder may name as its own: the registry's classes, and the defaults of
# well-known folders outside it (PNDM: SD 1.x; LMS: early SD 1.x; the others: fine-tunes that ship them).
OWN_SCHEDULER_SPACES: dict[str, str] = {
    **{sampler.cls.__name__: sampler.space for sampler in SAMPLERS.values()},
    "PNDMScheduler": "vp",
    "LMSDiscreteScheduler": "ve",
    "DPMSolverSinglestepScheduler": "vp",
    "DEISMultistepScheduler": "vp",
}


def sampler_names(flow: bool = False) -> list[str]:
    """The samplers that fit a model: flow samplers for velocity models, the others for noise/v models."""
    return [n for n in SAMPLERS if (n in FLOW_SAMPLERS) == flow]


def get_sampler(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise RequestError(f"Unknown sampler {name!r}. Known samplers: {', '.join(SAMPLERS)}.")
    return SAMPLERS[name]


def check_sampler(name: str) -> None:
    """A request's sampler: a registry name, or MODEL_DEFAULT (checked against the model when it is loaded)."""
    if name != MODEL_DEFAULT:
        get_sampler(name)


def _is_flow(base_config: dict) -> bool:
    return "FlowMatch" in base_config.get("_class_name", "")


def _fitting(base_config: dict) -> str:
    return ", ".join(sampler_names(flow=_is_flow(base_config)))


MAX_SHIFT = 20.0


def with_shift(base_config: dict, shift: float) -> dict:
    """A flow model's scheduler config with another timestep shift (sigma' = s sigma / (1 + (s - 1) sigma), SD3's
    rule); 0 keeps the model's own. A clear error for noise-prediction models and for values out of range."""
    if not shift:
        return base_config
    if not _is_flow(base_config):
        raise RequestError("Shift applies to flow-matching models only (it moves their timesteps); use 0 for this model.")
    if not 0 < shift <= MAX_SHIFT:
        raise RequestError(f"Shift must be above 0 and at most {MAX_SHIFT:g} (got {shift}); 0 keeps the model's own.")
    return {**base_config, "shift": float(shift)}


def make_scheduler(name: str, base_config: dict, shift: float = 0.0) -> tuple[SchedulerMixin, str]:
    """A fresh scheduler of the named kind built on the model's own scheduler config; returns it and its space.
    MODEL_DEFAULT gives the model's own scheduler; `shift` > 0 replaces a flow model's timestep shift."""
    base_config = with_shift(base_config, shift)
    if name == MODEL_DEFAULT:
        return own_scheduler(base_config)
    sampler = get_sampler(name)
    is_flow_model = _is_flow(base_config)
    if is_flow_model != (sampler.space == "flow"):
        kind = "a flow-matching (velocity)" if is_flow_model else "a noise-prediction"
        raise RequestError(f"Sampler {name!r} does not fit {kind} model. Samplers for this model: {_fitting(base_config)}.")
    return fresh(sampler.cls, base_config, sampler.kwargs), sampler.space


_PRISTINE: dict[tuple, SchedulerMixin] = {}
_PRISTINE_LOCK = threading.Lock()
PRISTINE_KEPT = 64


def fresh(cls: type[SchedulerMixin], config: dict, kwargs: dict | None = None) -> SchedulerMixin:
    """`cls.from_config(config, **kwargs)`, as a copy of one kept unused instance per (class, config, kwargs): a copy
    costs a third to a quarter of building one (from_config inspects signatures and checks every key)."""
    kwargs = kwargs or {}
    key = (cls, json.dumps(config, sort_keys=True, default=str), json.dumps(kwargs, sort_keys=True, default=str))
    with _PRISTINE_LOCK:
        pristine = _PRISTINE.get(key)
        if pristine is None:
            if len(_PRISTINE) >= PRISTINE_KEPT:
                _PRISTINE.pop(next(iter(_PRISTINE)))
            pristine = _PRISTINE[key] = cls.from_config(config, **kwargs)
    return copy.deepcopy(pristine)


def set_steps(scheduler: SchedulerMixin, name: str, steps: int, device) -> None:
    """The scheduler's timesteps for `steps` steps, with the named sampler's own spacing where it has one."""
    sampler = SAMPLERS.get(name)
    if sampler is not None and sampler.sigmas is not None:
        scheduler.set_timesteps(sigmas=sampler.sigmas(steps), device=device)
    else:
        scheduler.set_timesteps(steps, device=device)


def own_scheduler(base_config: dict) -> tuple[SchedulerMixin, str]:
    """The model's own scheduler (class and settings from its folder) and its space."""
    class_name = base_config.get("_class_name", "")
    if class_name not in OWN_SCHEDULER_SPACES:
        raise RequestError(f"The model's own scheduler, {class_name or 'of no named class'}, is not one the studio knows "
                           f"how to sample with; choose a sampler: {_fitting(base_config)}.")
    return fresh(getattr(diffusers, class_name), base_config), OWN_SCHEDULER_SPACES[class_name]


def sampler_label(name: str, scheduler: SchedulerMixin) -> str:
    """How a run's sampler is named in its saved settings: the request's name; for the model's own scheduler, the
    registry name of the same class and options (the most specific: "DPM++ 2M Karras" over "DPM++ 2M"), else the
    class name."""
    if name != MODEL_DEFAULT:
        return name
    same = [(n, s) for n, s in SAMPLERS.items()
            if s.cls is type(scheduler) and all(scheduler.config.get(k) == v for k, v in s.kwargs.items())]
    return max(same, key=lambda item: len(item[1].kwargs))[0] if same else type(scheduler).__name__


def sampler_from_label(label: str) -> str:
    """A saved "Sampler" setting back to a request's sampler: a scheduler class name (the model's own scheduler,
    saved by `sampler_label`) means MODEL_DEFAULT; anything else stays as it is (and is checked as a name)."""
    return MODEL_DEFAULT if label in OWN_SCHEDULER_SPACES else label
