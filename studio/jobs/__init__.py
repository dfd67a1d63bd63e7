"""Jobs: a request dataclass in, a generator of events out; the UI and the CLI run the same ones.

    txt2img(manager, Txt2ImgRequest)       text to image
    controlnet(manager, ControlNetRequest)   ControlNets with maps built from sketches, images, poses or ready maps
    inverse(manager, InverseRequest)       inpainting, deblurring, super-resolution by DPS
    sweep(manager, SweepRequest)           a grid of guidance scales by seeds or a second setting
Shared preparation and the loop -> Step events live in jobs.common.
"""
from studio.jobs.controlnet import ControlNetRequest, ControlUnitRequest, controlnet
from studio.jobs.inverse import InverseRequest, inverse
from studio.jobs.sweep import SweepRequest, sweep
from studio.jobs.txt2img import Txt2ImgRequest, params_to_request, txt2img, validate

__all__ = ["ControlNetRequest", "ControlUnitRequest", "InverseRequest", "SweepRequest", "Txt2ImgRequest", "controlnet",
           "inverse", "params_to_request", "sweep", "txt2img", "validate"]
