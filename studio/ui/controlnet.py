"""The ControlNet tab: per ControlNet, where its map comes from (a sketch, an image for Canny, a pose, a ready map);
the shared generation form; live preview. The job builds the maps; this page only collects their sources."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np

from studio import sources
from studio.control import annotators, detect
from studio.control.controlnet import MAX_CONTROL_SCALE
from studio.control.maps import ANNOTATORS, MapSource, pose_state
from studio.control.pose import KEYPOINT_NAMES, POSE_PRESETS, move_joint, preset_pose
from studio.errors import RequestError, StudioError
from studio.events import Maps
from studio.jobs import ControlNetRequest, ControlUnitRequest, controlnet
from studio.studio import Studio
from studio.ui import form as forms
from studio.ui.common import ACCELERATOR, api_signature, blank_canvas, deferred, guarded, job_updates, result_panel, status, wire_stop
from studio.ui.form import number_field
from studio.ui.uploads import read_array

LABELS = {a.label: a.name for a in ANNOTATORS.values()}  # the page's source choices -> annotator names
SKETCH_CANVAS = 512
DEFAULT_NETS = ("shapes-v1-canny", "shapes-v1-pose")
DEFAULT_SOURCES = ("scribble", "pose")


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
    ready: gr.Image
    control_map: gr.Image  # output only
    scale: gr.Slider
    start: gr.Slider
    end: gr.Slider

    def inputs(self) -> list:
        """In UNIT_FIELDS order."""
        return [self.enabled, self.net, self.source, self.image, self.low, self.high, self.sketch, self.drawing,
                self.pose_json, self.ready, self.scale, self.start, self.end]


# A slot's API parameter names (prefixed cn1_, cn2_ in the /controlnet endpoint), in Unit.inputs() order.
UNIT_FIELDS = ("enabled", "controlnet", "source", "image", "canny_low", "canny_high", "sketch", "drawing", "pose_json",
               "ready_map", "scale", "start", "end")


def unit_request(enabled, controlnet, source, image, canny_low, canny_high, sketch, drawing, pose_json, ready_map,
                 scale, start, end) -> ControlUnitRequest | None:
    """One slot's values as the job's request (None when the slot is off): the source's input, as collected.
    Uploaded files (image, drawing, ready_map) are read here, so a broken one gets a message naming it."""
    if not enabled:
        return None
    if source == "scribble":  # an uploaded drawing wins over the sketchpad
        picture = (read_array(drawing, "drawing") if drawing is not None
                   else read_array(sketch.get("composite") if isinstance(sketch, dict) else sketch, "sketch", "RGBA"))
    elif source == "none":
        picture = read_array(ready_map, "control map")
    else:
        picture = read_array(image, "image for Canny edges")
    low, high = (number_field(name, v, 0) for name, v in (("canny_low", canny_low), ("canny_high", canny_high)))
    scale, start, end = (number_field(name, v, 0.0) for name, v in (("scale", scale), ("start", start), ("end", end)))
    return ControlUnitRequest(controlnet or "", MapSource(source, picture, pose_json or "", low, high), scale, start, end)


# ---------------------------------------------------------------- layout
def unit_panel(studio: Studio, k: int, nets: list[str]) -> Unit:
    default_net = DEFAULT_NETS[k] if DEFAULT_NETS[k] in nets else (nets[0] if nets else None)
    source_default = DEFAULT_SOURCES[k]
    with gr.Row():
        enabled = gr.Checkbox(k == 0, label="Enabled", elem_id=f"cn{k}-enabled", scale=1)
        net = gr.Dropdown(nets, value=default_net, label="ControlNet", allow_custom_value=True, elem_id=f"cn{k}-net", scale=4,
                          info="embedded, <models>/controlnet/<name>, a ControlNetModel folder, or a hub id")
    source = gr.Radio(list(LABELS.items()), value=source_default, label="Control from", elem_id=f"cn{k}-source")
    with gr.Group(visible=source_default == "scribble") as sketch_group:
        # A white ground to draw on: with it the sketchpad draws at once (without, only after picking its brush).
        sketch = gr.Sketchpad(blank_canvas(), type="numpy", canvas_size=(SKETCH_CANVAS, SKETCH_CANVAS), format="png",
                              brush=gr.Brush(colors=["#000000"], default_size=8, color_mode="fixed"), height=360,
                              label="Sketch (draw an outline)", elem_id=f"cn{k}-sketch")
        drawing = gr.Image(type="filepath", label="…or upload a drawing (dark lines on a light ground); it wins over the sketchpad",
                           sources=["upload", "clipboard"], height=140, elem_id=f"cn{k}-drawing")
    with gr.Group(visible=source_default == "canny") as canny_group:
        image = gr.Image(type="filepath", label="Image for Canny edges", sources=["upload", "clipboard"], elem_id=f"cn{k}-image")
        with gr.Row():
            low = gr.Slider(0, 500, value=100, step=1, label="Canny low threshold")
            high = gr.Slider(1, 1000, value=200, step=1, label="Canny high threshold")
    with gr.Group(visible=source_default == "pose") as pose_group:
        with gr.Row():
            preset = gr.Dropdown(list(POSE_PRESETS), value="waving", label="Pose preset", elem_id=f"cn{k}-preset")
            joint = gr.Dropdown(list(KEYPOINT_NAMES), value="r_wrist", label="Joint")
            jx = gr.Number(label="x (px)", precision=1)
            jy = gr.Number(label="y (px)", precision=1, info="empty x or y: remove the joint")
            move = gr.Button("Move joint", scale=0)
        pose_json = gr.Textbox(annotators.pose_to_json(preset_pose("waving"), (64, 64)), lines=3, max_lines=6,
                               label="Pose (OpenPose JSON; editable)", elem_id=f"cn{k}-pose-json")
        with gr.Row():
            pose_file = gr.File(label="Load an OpenPose JSON file", file_types=[".json"], height=150)
            photo = gr.Image(type="filepath", label="Detect from a photo", sources=["upload"], height=150)
        detect_model = gr.Textbox(str(detect.find_openpose_model(studio.config.models_dir) or
                                      Path(studio.config.models_dir) / detect.DEFAULT_OPENPOSE_DIR_NAME),
                                  label="OpenPose model (folder or file) for detection")
        detect_btn = gr.Button("Detect pose")
    with gr.Group(visible=source_default == "none") as ready_group:
        ready = gr.Image(type="filepath", label="Ready-made control map (drop one here)", sources=["upload", "clipboard"],
                         height=160, elem_id=f"cn{k}-ready")
    # Output only: a map the job showed is never sent back as an input (a shown image round-tripping as input made
    # the next click fail with "Image path is None").
    # The label above the image, not floating over it (it hid the top of the map: a pose's head).
    gr.Markdown("**Control map** (what the ControlNet sees; download it)")
    control_map = gr.Image(type="numpy", show_label=False, interactive=False, height=220, buttons=["download"],
                           elem_id=f"cn{k}-map", elem_classes=["pixelated", "control-map"])
    with gr.Row():
        scale = gr.Slider(0, MAX_CONTROL_SCALE, value=1.0, step=0.05, label="Conditioning scale", elem_id=f"cn{k}-scale")
        start = gr.Slider(0, 1, value=0.0, step=0.05, label="Guidance start")
        end = gr.Slider(0, 1, value=1.0, step=0.05, label="Guidance end")
    pose_msg = gr.Markdown(elem_id=f"cn{k}-pose-status")

    groups = {"scribble": sketch_group, "canny": canny_group, "pose": pose_group, "none": ready_group}
    source.change(lambda s: [gr.update(visible=s == name) for name in groups], source, list(groups.values()), queue=False)

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
            rgb = annotators.as_rgb(read_array(picture, "photo"))
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
    detect_btn.click(run_detection, [photo, detect_model], [pose_json, pose_msg], preprocess=False)  # photo read by the handler
    return Unit(enabled, net, source, image, low, high, sketch, drawing, pose_json, ready, control_map, scale, start, end)


def build(studio: Studio) -> None:
    """Lay out the tab inside the current gr.Blocks and wire its events."""
    nets = sources.list_controlnets(studio.config)
    model, refresh = forms.model_row(studio, "cn-model", label="Base model")
    with gr.Row():
        with gr.Column(scale=3):
            prompt, negative = forms.prompt_boxes(studio, "cn-")
            form = forms.settings(studio, "cn-", model, refresh, prompt, negative)
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
            out = result_panel("cn-")
    maps = [u.control_map for u in units]
    named = {**form.named(), **{f"cn{k + 1}_{name}": c for k, u in enumerate(units) for name, c in zip(UNIT_FIELDS, u.inputs())}}

    def request(values: dict, maps_only: bool, enabled: list[int]) -> ControlNetRequest:
        """The page's values by API name as the job's request; `enabled` gets the slots in use (to show their maps)."""
        wanted = [unit_request(**{name: values[f"cn{k + 1}_{name}"] for name in UNIT_FIELDS}) for k in range(len(units))]
        enabled.extend(k for k, u in enumerate(wanted) if u is not None)
        req = forms.request_from_form({k: values[k] for k in forms.FIELDS})
        return ControlNetRequest(req, tuple(wanted[k] for k in enabled), maps_only)

    def shown_maps(event: Maps, enabled: list[int]) -> dict:
        return {maps[k]: m for k, m in zip(enabled, event.maps)}

    def run(history: list | None = None, request_: gr.Request = None, **values):
        enabled: list[int] = []
        job = deferred(lambda: controlnet(studio.manager, request(values, False, enabled)))
        yield from job_updates(job, history, out, on_other=lambda e: shown_maps(e, enabled), request=request_,
                               manager=studio.manager)

    def preview_maps(request_: gr.Request = None, **values):
        enabled: list[int] = []

        def on_event(event) -> dict:
            if isinstance(event, Maps):
                return {**shown_maps(event, enabled), out.progress: status(f"Control maps at {event.size[1]}x{event.size[0]}.")}
            return {out.progress: status(event.text)}

        job = deferred(lambda: controlnet(studio.manager, request(values, True, enabled)))
        yield from guarded(job, on_event, lambda text, kind: {out.progress: status(text, kind)}, request_, studio.manager)

    # The API: /controlnet and /controlnet_maps, with the form's names and cn1_*, cn2_* for the slots.
    # Unprocessed (preprocess=False): uploads arrive as files in Gradio's cache and are read by unit_request, so a
    # broken image gets a message naming it instead of Gradio's bare "Error"; numbers are checked by the job.
    generate.click(api_signature(run, named), [out.history], list(out) + maps, inputs_kwargs=named, preprocess=False,
                   concurrency_id=ACCELERATOR, concurrency_limit=1, api_name="controlnet")
    show_maps.click(api_signature(preview_maps, named), None, maps + [out.progress], inputs_kwargs=named,
                    preprocess=False, concurrency_id=ACCELERATOR, concurrency_limit=1, api_name="controlnet_maps")
    wire_stop(stop, studio.manager, out.progress)
    refresh.click(lambda: [gr.update(choices=sources.list_controlnets(studio.config))] * len(units), None,
                  [u.net for u in units], queue=False)
