"""The Guidance sweep tab: a grid of CFG scales by seeds (or a second setting), filled in live, with per-column metrics."""
from __future__ import annotations

import gradio as gr
import pandas as pd
from PIL import Image

from studio.events import SweepSummary
from studio.studio import Studio
from studio.jobs.sweep import AXES, MAX_SIDE, SweepRequest, parse_axis_values, parse_scales, sweep
from studio.ui import form as forms
from studio.ui.common import ACCELERATOR, grid_job_updates, status, wire_stop
from studio.ui.form import SAMPLER_CHOICES, opening_request

TABLE_HEADERS = ["scale", "adherence", "diversity"]
AXIS_CHOICES = [(f"{label} ({name})" if name != "seed" else "seeds", name) for name, label in AXES.items()]


def build(studio: Studio) -> None:
    """Lay out the tab inside the current gr.Blocks and wire its events."""
    start = opening_request(studio)  # the same opening values as Generate (the default preset)
    with gr.Row():
        with gr.Column(scale=2):
            model = gr.Dropdown(studio.model_choices(), value=studio.default_model(), label="Model", allow_custom_value=True,
                                elem_id="sweep-model")
            prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a big red star on the left", elem_id="sweep-prompt")
            negative = gr.Textbox(label="Negative prompt", lines=1, elem_id="sweep-negative")
            with gr.Row():
                sampler = gr.Dropdown(SAMPLER_CHOICES, value=start.sampler, label="Sampler")
                steps = gr.Number(value=start.steps, label="Steps", info=f"1-{studio.config.limits.max_steps}",
                                  elem_id="sweep-steps")
            with gr.Row():
                seed = gr.Number(value=-1, label="Seed", info="-1 = random; row r uses seed + r")
                rows = gr.Slider(1, MAX_SIDE, value=4, step=1, label="Rows (seeds)", elem_id="sweep-rows")
            scales = gr.Textbox(value="1, 3, 5, 7", label="Guidance scales (columns)", info=f"comma-separated, up to {MAX_SIDE}",
                                elem_id="sweep-scales")
            with gr.Row():
                axis = gr.Dropdown(AXIS_CHOICES, value="seed", label="Rows vary", elem_id="sweep-axis")
                values = gr.Textbox(label="Row values", placeholder="e.g. DDIM, Euler a  ·  10, 25  ·  0, 0.7",
                                    info="comma-separated; not used for seeds", elem_id="sweep-values")
            with gr.Row():
                run_btn = gr.Button("Run sweep", variant="primary", elem_id="sweep-run")
                stop = gr.Button("Stop", variant="stop", elem_id="sweep-stop")
        with gr.Column(scale=3):
            # No floating label: it would cover the column headers drawn into the image.
            grid = gr.Image(label="Sweep grid", show_label=False, type="pil", interactive=False, elem_id="sweep-grid",
                            elem_classes=["pixelated"])
            progress = gr.Markdown("", elem_id="sweep-status")
            table = gr.Dataframe(headers=TABLE_HEADERS, label="Per column (suite evaluator)", interactive=False,
                                 elem_id="sweep-table")
            plot = gr.LinePlot(x="scale", y="value", color="metric", label="Adherence and diversity against scale",
                               x_title="guidance scale", y_title="value", y_lim=[0, 1], elem_id="sweep-plot")

    # The API's parameter names are this function's.
    def run(model: str, prompt: str | None = None, negative_prompt: str | None = None, sampler: str = "", steps: float = 25,
            seed: float = -1, rows: float = 4, scales: str = "", row_axis: str = "seed", row_values: str | None = None,
            request: gr.Request = None):
        shown: dict[tuple[int, int], Image.Image] = {}
        labels = {"rows": [], "cols": []}

        def events():
            # Parsing happens here so bad input reaches the status line through guarded().
            base = forms.request_from_form({"model": model or "", "prompt": prompt, "negative_prompt": negative_prompt,
                                            "sampler": sampler, "steps": steps, "seed": seed})
            req = SweepRequest(base, parse_scales(scales), row_axis, parse_axis_values(row_axis, row_values),
                               forms.number_field("rows", rows, 0))
            n_rows = req.rows if req.axis == "seed" else len(req.values)
            labels["cols"] = [f"CFG {s:g}" for s in req.scales]
            labels["rows"] = [""] * n_rows
            yield from sweep(studio.manager, req)

        def on_summary(event: SweepSummary) -> dict:
            return {table: summary_table(event), plot: summary_plot(event),
                    progress: status(f"Done: {len(shown)} images in {event.seconds:.1f} s, saved to "
                                     f"{studio.config.outputs_dir}", "ok")}

        yield {grid: None, table: pd.DataFrame(columns=TABLE_HEADERS), progress: status("Starting…")}
        yield from grid_job_updates(events(), shown, labels, grid, progress, on_summary, request, studio.manager)

    run_btn.click(run, [model, prompt, negative, sampler, steps, seed, rows, scales, axis, values], [grid, progress, table, plot],
                  concurrency_id=ACCELERATOR, concurrency_limit=1, api_name="sweep")
    wire_stop(stop, studio.manager, progress)


def summary_table(summary: SweepSummary) -> pd.DataFrame:
    def fmt(v):
        return "n/a" if v is None else round(v, 3)

    return pd.DataFrame([[c["scale"], fmt(c["adherence"]), fmt(c["diversity"])] for c in summary.columns], columns=TABLE_HEADERS)


def summary_plot(summary: SweepSummary) -> pd.DataFrame:
    """Long format for gr.LinePlot: one row per (scale, metric); metrics without a value are left out.

    Diversity (feature distances, tens) is divided by its largest column so it shares adherence's 0..1 axis;
    the legend says by how much, and the table keeps the raw numbers.
    """
    top = max((c["diversity"] for c in summary.columns if c["diversity"] is not None), default=None)
    rows = [{"scale": c["scale"], "metric": "adherence", "value": c["adherence"]} for c in summary.columns
            if c["adherence"] is not None]
    if top:
        rows += [{"scale": c["scale"], "metric": f"diversity / {top:.3g}", "value": c["diversity"] / top}
                 for c in summary.columns if c["diversity"] is not None]
    return pd.DataFrame(rows, columns=["scale", "metric", "value"])
