"""The ControlNet tab: control maps from an image (Canny), a sketch or a pose; one or two ControlNets; live preview."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np

from studio import jobs
from studio.control import annotators, detect
from studio.control.controlnet import MAX_CONTROL_SCALE, ControlInput, list_controlnets
from studio.control.pose import KEYPOINT_NAMES, POSE_PRESETS, move_joint, preset_pose
from studio.errors import RequestError, StudioError
from studio.jobs import Txt2ImgRequest
from studio.sampling.schedulers import SAMPLERS
from studio.studio import Studio
from studio.ui.common import ACCELERATOR, status
from studio.ui.generate import Outputs, job_updates

SOURCES = ("Sketch", "Image → Canny edges", "Pose", "Ready-made map")
MODULES = {"Sketch": "scribble", "Image → Canny edges": "canny", "Pose": "pose", "Ready-made map": "none"}
SKETCH_CANVAS = 512
DEFAULT_NETS = ("shapes-v1-canny", "shapes-v1-pose")
DEFAULT_SOURCES = ("Sketch", "Pose")


@dataclass
class Unit:
    """The widgets of one ControlNet slot."""

    enabled: gr.Checkbox
    net: gr.Dropdown
    source: gr.Radio
    image: gr.Image
    low: gr.Slider
    high: gr.Slider
    sketch: gr.Sketchpad
    drawing: gr.Image
    pose_json: gr.Textbox
    control_map: gr.Image
    scale: gr.Slider
    start: gr.Slider
    end: gr.Slider

    def map_inputs(self) -> list:
        return [self.source, self.image, self.low, self.high, self.sketch, self.drawing, self.pose_json, self.control_map]

    def inputs(self) -> list:
        return [self.enabled, self.net, *self.map_inputs(), self.scale, self.start, self.end]


# ---------------------------------------------------------------- pose state (OpenPose JSON in a text box)
def pose_state(text: str) -> tuple[np.ndarray, tuple[int, int]]:
    keypoints, canvas = annotators.pose_from_json(text or "")
    if canvas is None:  # no canvas given: the keypoints' own extent
        finite = keypoints[np.isfinite(keypoints).all(1)]
        side = int(math.ceil(finite.max())) + 1 if len(finite) else 64
        canvas = (side, side)
    return keypoints, canvas


def pose_for_size(text: str, size: tuple[int, int]) -> np.ndarray:
    """The pose's keypoints from its canvas to the image size (H, W): scaled evenly (never stretched), centred."""
    keypoints, (ch, cw) = pose_state(text)
    k = min(size[0] / ch, size[1] / cw)
    offset = np.array([(size[1] - cw * k) / 2, (size[0] - ch * k) / 2], dtype=np.float32)
    return keypoints * np.float32(k) + offset


def make_map(source: str, image, low, high, sketch, drawing, pose_json: str, ready, size: tuple[int, int]) -> np.ndarray:
    """The control map from the slot's chosen source, at the image size (H, W) (a ready-made map as given: the job
    resizes it and says so); clear errors for missing input."""
    if source == "Image → Canny edges":
        if image is None:
            raise RequestError("Canny edges: upload an image first.")
        import cv2

        resized = cv2.resize(annotators.as_rgb(image), (size[1], size[0]), interpolation=cv2.INTER_AREA)
        return annotators.canny(resized, int(low), int(high))
    if source == "Sketch":
        if drawing is None:
            drawing = sketch.get("composite") if isinstance(sketch, dict) else sketch
        if drawing is None or _blank(drawing):
            raise RequestError("Sketch: draw something on the sketchpad (or upload a drawing into it) first.")
        return annotators.scribble(drawing, size=size)
    if source == "Pose":
        return annotators.pose(pose_for_size(pose_json, size), size)
    if ready is None:
        raise RequestError("Ready-made map: drop a control map image into the Control map box.")
    return annotators.as_rgb(ready)


def _blank(drawing) -> bool:
    arr = np.asarray(drawing)
    if arr.ndim == 3 and arr.shape[2] == 4:
        return not (arr[..., 3] > 0).any()
    return arr.size == 0 or arr.min() == arr.max()


# ---------------------------------------------------------------- layout
def unit_panel(studio: Studio, k: int, nets: list[str]) -> Unit:
    default_net = DEFAULT_NETS[k] if DEFAULT_NETS[k] in nets else (nets[0] if nets else None)
    source_default = DEFAULT_SOURCES[k]
    with gr.Row():
        enabled = gr.Checkbox(k == 0, label="Enabled", elem_id=f"cn{k}-enabled", scale=1)
        net = gr.Dropdown(nets, value=default_net, label="ControlNet", allow_custom_value=True, elem_id=f"cn{k}-net", scale=4,
                          info="embedded, <models>/controlnet/<name>, a ControlNetModel folder, or a hub id")
    source = gr.Radio(list(SOURCES), value=source_default, label="Control from", elem_id=f"cn{k}-source")
    with gr.Group(visible=source_default == "Sketch") as sketch_group:
        sketch = gr.Sketchpad(type="numpy", canvas_size=(SKETCH_CANVAS, SKETCH_CANVAS), format="png",
                              brush=gr.Brush(colors=["#000000"], default_size=8, color_mode="fixed"), height=360,
                              label="Sketch (draw an outline)", elem_id=f"cn{k}-sketch")
        drawing = gr.Image(type="numpy", label="…or upload a drawing (dark lines on a light ground); it wins over the sketchpad",
                           sources=["upload", "clipboard"], height=140, elem_id=f"cn{k}-drawing")
    with gr.Group(visible=source_default == "Image → Canny edges") as canny_group:
        image = gr.Image(type="numpy", label="Image for Canny edges", sources=["upload", "clipboard"], elem_id=f"cn{k}-image")
        with gr.Row():
            low = gr.Slider(0, 500, value=100, step=1, label="Canny low threshold")
            high = gr.Slider(1, 1000, value=200, step=1, label="Canny high threshold")
    with gr.Group(visible=source_default == "Pose") as pose_group:
        with gr.Row():
            preset = gr.Dropdown(list(POSE_PRESETS), value="waving", label="Pose preset", elem_id=f"cn{k}-preset")
            joint = gr.Dropdown(list(KEYPOINT_NAMES), value="r_wrist", label="Joint")
            jx = gr.Number(label="x (px)", precision=1)
            jy = gr.Number(label="y (px)", precision=1, info="empty x or y: remove the joint")
            move = gr.Button("Move joint", scale=0)
        pose_json = gr.Textbox(annotators.pose_to_json(preset_pose("waving"), (64, 64)), lines=3, max_lines=6,
                               label="Pose (OpenPose JSON; editable)", elem_id=f"cn{k}-pose-json")
        with gr.Row():
            pose_file = gr.File(label="Load an OpenPose JSON file", file_types=[".json"], height=80)
            photo = gr.Image(type="numpy", label="Detect from a photo", sources=["upload"], height=160)
        detect_model = gr.Textbox(str(detect.find_openpose_model(studio.config.models_dir) or
                                      Path(studio.config.models_dir) / detect.DEFAULT_OPENPOSE_DIR_NAME),
                                  label="OpenPose model (folder or file) for detection")
        detect_btn = gr.Button("Detect pose")
    control_map = gr.Image(type="numpy", label="Control map (what the ControlNet sees; download it, or drop a ready one here)",
                           sources=["upload"], height=220, buttons=["download"], elem_id=f"cn{k}-map",
                           elem_classes=["pixelated", "control-map"])
    with gr.Row():
        scale = gr.Slider(0, MAX_CONTROL_SCALE, value=1.0, step=0.05, label="Conditioning scale", elem_id=f"cn{k}-scale")
        start = gr.Slider(0, 1, value=0.0, step=0.05, label="Guidance start")
        end = gr.Slider(0, 1, value=1.0, step=0.05, label="Guidance end")
    pose_msg = gr.Markdown(elem_id=f"cn{k}-pose-status")

    source.change(lambda s: [gr.update(visible=s == "Sketch"), gr.update(visible=s == "Image → Canny edges"),
                             gr.update(visible=s == "Pose")], source, [sketch_group, canny_group, pose_group], queue=False)

    def use_preset(name):
        try:
            return annotators.pose_to_json(preset_pose(name), (64, 64)), ""
        except StudioError as e:
            return gr.update(), status(str(e), "error")

    def move_one(text, name, x, y):
        try:
            keypoints, canvas = pose_state(text)
            return annotators.pose_to_json(move_joint(keypoints, name, x, y), canvas), ""
        except StudioError as e:
            return gr.update(), status(str(e), "error")

    def load_file(file):
        if file is None:
            return gr.update(), ""
        try:
            text = Path(file).read_text()
            keypoints, canvas = pose_state(text)
            return annotators.pose_to_json(keypoints, canvas), status("Pose loaded.", "ok")
        except (StudioError, UnicodeDecodeError) as e:
            return gr.update(), status(f"{e}", "error")

    def run_detection(picture, model_path):
        try:
            if picture is None:
                raise RequestError("Upload a photo to detect a pose from.")
            rgb = annotators.as_rgb(picture)
            keypoints = detect.detect_pose(rgb, model_path)
            return annotators.pose_to_json(keypoints, rgb.shape[:2]), status("Pose detected.", "ok")
        except StudioError as e:
            return gr.update(), status(str(e), "error")

    def joint_position(text, name):
        try:
            keypoints, _ = pose_state(text)
            x, y = keypoints[KEYPOINT_NAMES.index(name)]
            return (None if np.isnan(x) else float(x)), (None if np.isnan(y) else float(y))
        except (StudioError, ValueError):
            return gr.update(), gr.update()

    preset.input(use_preset, preset, [pose_json, pose_msg], queue=False)
    move.click(move_one, [pose_json, joint, jx, jy], [pose_json, pose_msg], queue=False)
    joint.change(joint_position, [pose_json, joint], [jx, jy], queue=False)
    pose_file.upload(load_file, pose_file, [pose_json, pose_msg], queue=False)
    detect_btn.click(run_detection, [photo, detect_model], [pose_json, pose_msg])
    return Unit(enabled, net, source, image, low, high, sketch, drawing, pose_json, control_map, scale, start, end)


def build(studio: Studio) -> None:
    """Lay out the tab inside the current gr.Blocks and wire its events."""
    nets = list_controlnets(studio.config)
    start = Txt2ImgRequest()
    with gr.Row():
        model = gr.Dropdown(studio.model_choices(), value=studio.default_model(), label="Base model", allow_custom_value=True,
                            elem_id="cn-model", scale=4)
        refresh = gr.Button("↻", scale=0, min_width=40)
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a red star", elem_id="cn-prompt")
            negative = gr.Textbox(label="Negative prompt", lines=1)
            with gr.Row():
                sampler = gr.Dropdown(list(SAMPLERS), value=start.sampler, label="Sampler")
                steps = gr.Slider(1, studio.config.limits.max_steps, value=start.steps, step=1, label="Steps")
                cfg = gr.Slider(0, 20, value=5.0, step=0.5, label="Guidance scale (CFG)")
            with gr.Row():
                seed = gr.Number(value=-1, precision=0, label="Seed", info="-1 = random")
                width = gr.Number(value=0, precision=0, label="Width", info="0 = model's native size")
                height = gr.Number(value=0, precision=0, label="Height", info="0 = model's native size")
                batch = gr.Slider(1, studio.config.limits.max_batch, value=1, step=1, label="Batch size")
            units = []
            with gr.Tabs():
                for k in range(2):
                    with gr.Tab(f"ControlNet {k + 1}", id=f"cn-unit-{k}"):
                        units.append(unit_panel(studio, k, nets))
            with gr.Row():
                show_maps = gr.Button("Show control maps", elem_id="cn-show-maps")
                generate = gr.Button("Generate", variant="primary", elem_id="cn-generate")
                stop = gr.Button("Stop", variant="stop", elem_id="cn-stop")
        with gr.Column(scale=2):
            live = gr.Image(label="Live preview (x0-hat)", type="pil", interactive=False, height=320,
                            elem_id="cn-live", elem_classes=["pixelated"])
            progress = gr.Markdown(elem_id="cn-status")
            used_seed = gr.Number(label="Seed used", interactive=False, precision=0)
            gallery = gr.Gallery(label="Finished images (saved with their settings)", columns=4, height=260,
                                 object_fit="contain", elem_id="cn-gallery", elem_classes=["pixelated"])
            infotext = gr.Textbox(label="Settings of the last image", lines=3, interactive=False)
    history = gr.State([])
    out = Outputs(live, progress, gallery, history, used_seed, infotext)
    unit_inputs = [c for u in units for c in u.inputs()]
    per_unit = len(units[0].inputs())
    maps = [u.control_map for u in units]

    def image_size(model_spec, w, h) -> tuple[int, int]:
        native = studio.native_size(model_spec)
        return int(h or native), int(w or native)

    def compute_maps(size: tuple[int, int], values) -> tuple[list, list]:
        """(maps per slot (unchanged where off), ControlInputs) for the enabled slots; RequestError names the slot."""
        shown, controls = [], []
        for k in range(len(units)):
            enabled, net, source, *map_values, scale, s0, s1 = values[k * per_unit:(k + 1) * per_unit]
            if not enabled:
                shown.append(gr.update())
                continue
            try:
                control = make_map(source, *map_values, size=size)
            except RequestError as e:
                raise RequestError(f"ControlNet {k + 1}: {e}") from e
            shown.append(control)
            controls.append(ControlInput(net or "", control, float(scale), float(s0), float(s1), MODULES[source]))
        return shown, controls

    def preview_maps(model_spec, w, h, *values):
        size = image_size(model_spec, w, h)
        try:
            shown, controls = compute_maps(size, values)
        except StudioError as e:
            return [gr.update()] * len(units) + [status(str(e), "error")]
        note = "No ControlNet enabled." if not controls else f"Control maps at {size[1]}x{size[0]}."
        return shown + [status(note)]

    def run(model_spec, text, neg, smp, n_steps, scale, sd, w, h, b, *rest):
        *values, past = rest
        try:
            shown, controls = compute_maps(image_size(model_spec, w, h), values)
            if not controls:
                raise RequestError("Enable at least one ControlNet (or use the Generate tab for plain text-to-image).")
        except StudioError as e:
            yield {progress: status(str(e), "error")}
            return
        yield dict(zip(maps, shown))
        defaults = Txt2ImgRequest()
        req = Txt2ImgRequest(model=model_spec or "", prompt=text or "", negative_prompt=neg or "", sampler=smp,
                             steps=int(n_steps), guidance_scale=float(scale),
                             seed=defaults.seed if sd is None else int(sd), width=int(w or 0), height=int(h or 0),
                             batch_size=int(b), controls=tuple(controls))
        yield from job_updates(jobs.txt2img(studio.manager, req), past, out)

    common = [model, prompt, negative, sampler, steps, cfg, seed, width, height, batch]
    generate.click(run, common + unit_inputs + [history], [live, progress, gallery, history, used_seed, infotext] + maps,
                   concurrency_id=ACCELERATOR, concurrency_limit=1, api_name="controlnet")
    show_maps.click(preview_maps, [model, width, height] + unit_inputs, maps + [progress], queue=False)
    stop.click(studio.manager.request_stop, None, None, queue=False)
    refresh.click(lambda: [gr.update(choices=studio.model_choices())] + [gr.update(choices=list_controlnets(studio.config))] * len(units),
                  None, [model] + [u.net for u in units], queue=False)
