"""The ControlNet job: a text-to-image request plus, per ControlNet, where its map comes from (a sketch, an image for
Canny, a pose, a ready map). The job builds the maps at the size it samples, yields them (Maps), then samples."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from studio.control.controlnet import ControlInput, check_control_settings
from studio.control.maps import MapSource, build_map, get_annotator
from studio.errors import RequestError, StudioError
from studio.events import Maps, Notice, Result, Step
from studio.jobs.txt2img import Txt2ImgRequest, image_size, sample, validate
from studio.manager import ModelManager

MAX_UNITS = 4


@dataclass
class ControlUnitRequest:
    """One ControlNet: which model, where its map comes from, its conditioning scale and step window."""

    model: str
    source: MapSource
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0


@dataclass
class ControlNetRequest:
    base: Txt2ImgRequest  # prompt, sampler, steps, size, seed ... (its own `controls` must be empty)
    units: tuple[ControlUnitRequest, ...] = field(default_factory=tuple)
    maps_only: bool = False  # build and yield the maps, sample nothing ("Show control maps")


def controlnet(manager: ModelManager, req: ControlNetRequest) -> Iterator[Step | Notice | Maps | Result]:
    """Maps at the real image size (Maps), then txt2img with them through the one loop (Steps, Result)."""
    # 1. Check inputs: the base request as txt2img would, and each unit's settings.
    if not req.units:
        raise RequestError("Enable at least one ControlNet (or use the Generate tab for plain text-to-image).")
    if len(req.units) > MAX_UNITS:
        raise RequestError(f"At most {MAX_UNITS} ControlNets at once (got {len(req.units)}).")
    base, notices = validate(req.base, manager.config.limits)
    for k, unit in enumerate(req.units, 1):
        _named(k, get_annotator, unit.source.annotator)
        check_control_settings(k, unit.model, unit.scale, unit.start, unit.end)
    for text in notices:
        yield Notice(text)
    with manager.session():
        # 2. The model decides the size; each map is built at it.
        model = manager.get(base.model)
        size = image_size(model, base)
        maps = [_named(k, build_map, unit.source, size) for k, unit in enumerate(req.units, 1)]
        yield Maps(maps, size)
        if req.maps_only:
            return
        # 3. Sample with the maps.
        controls = tuple(ControlInput(u.model, m, u.scale, u.start, u.end, u.source.annotator) for u, m in zip(req.units, maps))
        result = yield from sample(manager, model, replace(base, controls=controls))
    yield result


def _named(k: int, fn, *args):
    """Errors of ControlNet k say which one it is."""
    try:
        return fn(*args)
    except StudioError as e:
        raise type(e)(f"ControlNet {k}: {e}") from e
