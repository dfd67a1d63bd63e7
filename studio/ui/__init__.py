"""The web page: one gr.Blocks with a tab per module, all sharing the Studio (and so one model manager)."""
from __future__ import annotations

import gradio as gr

from studio.studio import Studio
from studio.ui import controlnet, flow, generate, inverse, personalize, sweep
from studio.ui.common import CSS

TITLE = "Diffusion Studio"


def build(studio: Studio) -> gr.Blocks:
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"## {TITLE}\nDevice: `{studio.config.device}` · dtype: `{str(studio.config.dtype).removeprefix('torch.')}` · "
                    f"outputs: `{studio.config.outputs_dir}`")
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"):
                generate.build(studio)
            with gr.Tab("ControlNet", id="controlnet"):
                controlnet.build(studio)
            with gr.Tab("Guidance sweep", id="sweep"):
                sweep.build(studio)
            with gr.Tab("Inverse problems", id="inverse"):
                inverse.build(studio)
            with gr.Tab("Flow matching", id="flow"):
                flow.build(studio)
            with gr.Tab("Personalize", id="personalize"):
                personalize.build(studio)
    publish_only(demo, PUBLIC_ENDPOINTS)
    return demo


# The scriptable API: each tab's main actions, with named parameters (see the README). Everything else the page
# wires (presets, uploads, Stop, pose editing, ...) is private to the page.
PUBLIC_ENDPOINTS = ("generate", "controlnet", "controlnet_maps", "sweep", "inverse", "flow_compare", "flow_2d",
                    "flow_2d_reflow", "personalize_start", "personalize_resume")


def publish_only(demo: gr.Blocks, names: tuple[str, ...]) -> None:
    """Make every event but the named main actions private: not in the API docs, not callable by clients."""
    for fn in demo.fns.values():
        if fn.api_name not in names:
            fn.api_visibility = "private"


def launch_kwargs() -> dict:
    """App-level look, passed to launch() (Gradio 6)."""
    return {"css": CSS, "theme": gr.themes.Soft()}
