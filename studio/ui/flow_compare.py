"""The Flow matching tab's first section: flow vs diffusion at equal model evaluations, filled in live, with prompt
adherence per evaluation count (plot) and the flow model's trajectory straightness (table)."""
from __future__ import annotations

import gradio as gr
import pandas as pd
from PIL import Image

from studio.events import Cell, Notice, SweepSummary
from studio.jobs.flow_compare import EVALUATIONS, CompareRequest, Contender, compare
from studio.sampling.schedulers import SAMPLERS
from studio.studio import Studio
from studio.ui.common import ACCELERATOR, compose_grid, guarded, status

TABLE_HEADERS = ["model", "evaluations", "steps", "adherence", "straightness"]
DEFAULTS = (("shapes-v1", "DPM++ 2M"), ("shapes-v1-flow", "Flow Match Euler"))


def build_comparison(studio: Studio) -> None:
    """Lay out the comparison inside the current gr.Blocks and wire it."""
    models = studio.model_choices()
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", value="a big red star", lines=1, elem_id="flow-prompt")
            pickers = []
            for k, (model, sampler) in enumerate(DEFAULTS):
                with gr.Row():
                    pickers.append(gr.Dropdown(models, value=model if model in models else None, label=f"Model {k + 1}",
                                               allow_custom_value=True, elem_id=f"flow-model-{k}"))
                    pickers.append(gr.Dropdown(list(SAMPLERS), value=sampler, label="Sampler", elem_id=f"flow-sampler-{k}"))
            evaluations = gr.CheckboxGroup(list(EVALUATIONS), value=list(EVALUATIONS), label="Model evaluations",
                                           elem_id="flow-evaluations")
            with gr.Row():
                seed = gr.Number(value=0, precision=0, label="Seed", info="adherence over seed, seed + 1, ...")
                judge_seeds = gr.Slider(1, 8, value=4, step=1, label="Seeds for adherence")
                cfg = gr.Slider(0, 20, value=5.0, step=0.5, label="Guidance scale (CFG)")
            with gr.Row():
                run_btn = gr.Button("Compare", variant="primary", elem_id="flow-compare")
                stop = gr.Button("Stop", variant="stop")
        with gr.Column(scale=3):
            grid = gr.Image(show_label=False, type="pil", interactive=False, elem_id="flow-grid", elem_classes=["pixelated"])
            progress = gr.Markdown("", elem_id="flow-status")
            plot = gr.LinePlot(x="evaluations", y="adherence", color="model", label="Prompt adherence against model evaluations",
                               x_title="model evaluations", y_title="adherence", y_lim=[0, 1], elem_id="flow-plot")
            table = gr.Dataframe(headers=TABLE_HEADERS, label="Per model and evaluation count", interactive=False,
                                 elem_id="flow-table")

    def run(text, model_a, sampler_a, model_b, sampler_b, counts, seed_v, seeds_v, cfg_v):
        shown: dict[tuple[int, int], Image.Image] = {}
        labels = {"rows": [], "cols": [f"{n} evals" for n in sorted(counts or [])]}

        def events():
            contenders = tuple(Contender(m, s) for m, s in ((model_a, sampler_a), (model_b, sampler_b)) if m)
            req = CompareRequest(text or "", contenders, tuple(sorted(int(n) for n in counts or [])), int(seed_v or 0),
                                 float(cfg_v), int(seeds_v))
            labels["rows"] = [f"{c.model} ({c.sampler})" for c in contenders]
            yield from compare(studio.manager, req)

        def on_event(event) -> dict:
            if isinstance(event, Notice):
                return {progress: status(event.text)}
            if isinstance(event, Cell):
                shown[(event.row, event.col)] = event.image
                total = len(labels["rows"]) * len(labels["cols"])
                return {grid: compose_grid(shown, labels["rows"], labels["cols"]),
                        progress: status(f"Cell {len(shown)}/{total}: {event.row_label}, {event.col_label}")}
            assert isinstance(event, SweepSummary)
            return {table: summary_table(event), plot: summary_plot(event),
                    progress: status(f"Done: {len(shown)} cells in {event.seconds:.1f} s", "ok")}

        yield from guarded(events(), on_event, lambda msg, kind: {progress: status(msg, kind)})

    run_btn.click(run, [prompt, *pickers, evaluations, seed, judge_seeds, cfg], [grid, progress, table, plot],
                  concurrency_id=ACCELERATOR, concurrency_limit=1, api_name="flow_compare")
    stop.click(studio.manager.request_stop, None, None, queue=False)


def summary_table(summary: SweepSummary) -> pd.DataFrame:
    def fmt(v, digits=3):
        return "n/a" if v is None else round(v, digits)

    return pd.DataFrame([[c["label"], c["evaluations"], c["steps"], fmt(c["adherence"]), fmt(c["straightness"], 4)]
                         for c in summary.columns], columns=TABLE_HEADERS)


def summary_plot(summary: SweepSummary) -> pd.DataFrame:
    rows = [{"evaluations": c["evaluations"], "adherence": c["adherence"], "model": c["label"]}
            for c in summary.columns if c["adherence"] is not None]
    return pd.DataFrame(rows, columns=["evaluations", "adherence", "model"])
