"""The Flow matching tab: flow vs diffusion at equal model evaluations (image models, live grid, adherence and
straightness), then the 2D playground (random vs minibatch-OT pairing, trained in the page)."""
from __future__ import annotations

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from studio.errors import RequestError
from studio.events import Notice, Result, Step, SweepSummary
from studio.flow.distributions import DISTRIBUTIONS, MIN_DRAWN_POINTS, SOURCES, TARGETS, parse_points
from studio.flow.pairings import DEFAULT_SINKHORN_REG, PAIRINGS
from studio.flow.plots import side_by_side
from studio.jobs.flow_compare import EVALUATIONS, REFLOW_MODEL, CompareRequest, Contender, compare, row_label
from studio.jobs.flow2d import DRAWN, TRAJECTORIES, Flow2DRequest, flow2d, parse_steps, summary
from studio.sampling.schedulers import SAMPLERS
from studio.studio import Studio
from studio.ui.common import ACCELERATOR, blank_canvas, grid_job_updates, guarded, status, wire_stop
from studio.ui.form import number_field

SKETCH_CANVAS = 256
EXTENT = 4.0  # the sketch canvas spans [-EXTENT, EXTENT]^2, the scale of the moons and the checkerboard
MAX_SKETCH_POINTS = 2000
W2_COLUMNS = ["steps", "W2", "model"]


def build(studio: Studio) -> None:
    """The tab: the comparison of image models, then the 2D playground."""
    gr.Markdown("#### Flow vs diffusion at equal model evaluations")
    build_comparison(studio)
    build_playground(studio)


# ================================================================ 1. 2D playground (laid out second)
def points_from_sketch(value, extent: float = EXTENT, max_points: int = MAX_SKETCH_POINTS) -> np.ndarray:
    """The pixels a sketch painted, as (x, y) points in [-extent, extent]^2 (y up), evenly thinned to `max_points`.

    Painted means alpha > 0 on a layer; failing layers, a dark pixel of the composite."""
    value = value if isinstance(value, dict) else {"composite": value}
    ink = None
    for layer in value.get("layers") or []:
        layer = np.asarray(layer)
        if layer.ndim == 3 and layer.shape[2] == 4:
            ink = layer[..., 3] > 0 if ink is None else ink | (layer[..., 3] > 0)
    if (ink is None or not ink.any()) and value.get("composite") is not None:
        image = np.asarray(value["composite"])
        gray = image[..., :3].mean(axis=2) if image.ndim == 3 else image
        ink = gray < 128
        if image.ndim == 3 and image.shape[2] == 4:
            ink &= image[..., 3] > 0
    if ink is None:
        return np.zeros((0, 2), dtype=np.float32)
    rows, cols = np.nonzero(ink)
    keep = np.unique(np.linspace(0, len(rows) - 1, min(len(rows), max_points)).astype(int)) if len(rows) else []
    height, width = ink.shape
    x = (cols[keep] + 0.5) / width * 2 * extent - extent
    y = extent - (rows[keep] + 0.5) / height * 2 * extent
    return np.stack([x, y], axis=1).astype(np.float32)


def drawn_points(target: str, sketch, text: str) -> np.ndarray | None:
    """The drawn target: typed points win over the sketch; None unless the target is the drawn one."""
    if target != DRAWN:
        return None
    points = parse_points(text) if text and text.strip() else points_from_sketch(sketch)
    if len(points) < MIN_DRAWN_POINTS:
        raise RequestError(f"Draw at least {MIN_DRAWN_POINTS} target points (got {len(points)}): paint on the "
                           "sketchpad or type one 'x, y' per line.")
    return points


def metrics_table(metrics: dict[str, float]) -> pd.DataFrame:
    """One row per model: NPE, path energy, straightness, W2 at each step count, training seconds."""
    rows = []
    for row in summary(metrics):
        w2 = {f"W2 @{key.removeprefix('w2_').removesuffix('steps')}": value for key, value in row.items()
              if key.startswith("w2_")}
        rows.append({"model": row["model"], "NPE": row["npe"], "path energy": row["path_energy"],
                     "straightness": row["straightness"], **w2, "train s": row["train_seconds"]})
    return pd.DataFrame(rows).round(4)


def w2_frame(metrics: dict[str, float]) -> pd.DataFrame:
    """Long format for gr.LinePlot: W2 to the target against Euler steps, one line per model."""
    return pd.DataFrame([(int(key.removeprefix("w2_").removesuffix("steps")), value, row["model"])
                         for row in summary(metrics) for key, value in row.items() if key.startswith("w2_")],
                        columns=W2_COLUMNS)


def build_playground(studio: Studio) -> None:
    """Lay out the 2D playground inside the current gr.Blocks and wire its events."""
    gr.Markdown("### 2D playground\nA small MLP velocity field v(x, t) trained by conditional flow matching, with random "
                "pairs (I-CFM) and with minibatch optimal-transport pairs (OT-CFM, POT's exact `ot.emd`), side by side. "
                "NPE: normalized path energy (0 for the optimal transport map). **Reflow** retrains the random-pairing "
                "model on its own pairs (x0, flow(x0)).")
    start = Flow2DRequest()
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Row():
                source = gr.Dropdown(list(SOURCES) + [n for n in DISTRIBUTIONS if n not in SOURCES], value=start.source,
                                     label="Source", elem_id="flow2d-source")
                target = gr.Dropdown(list(TARGETS) + [DRAWN] + [n for n in DISTRIBUTIONS if n not in TARGETS],
                                     value=start.target, label="Target", elem_id="flow2d-target")
            with gr.Group(visible=False) as draw_group:
                sketch = gr.Sketchpad(blank_canvas(SKETCH_CANVAS), type="numpy", canvas_size=(SKETCH_CANVAS, SKETCH_CANVAS),
                                      format="png", height=300,
                                      brush=gr.Brush(colors=["#000000"], default_size=6, color_mode="fixed"),
                                      label=f"Draw the target (the canvas spans [-{EXTENT:g}, {EXTENT:g}] on both axes)",
                                      elem_id="flow2d-sketch")
                typed = gr.Textbox(label="…or type points, one 'x, y' per line; they win over the sketch", lines=3,
                                   elem_id="flow2d-points")
            pairings = gr.CheckboxGroup([(f"{name}: {label}", name) for name, (label, _) in PAIRINGS.items()],
                                        value=list(start.pairings), label="Pairings to train", elem_id="flow2d-pairings")
            with gr.Row():
                train_steps = gr.Slider(100, 5000, value=start.train_steps, step=100, label="Training steps per model",
                                        elem_id="flow2d-train-steps")
                seed = gr.Number(value=start.seed, label="Seed", info="-1 = random")
            with gr.Row():
                eval_steps = gr.Textbox(", ".join(map(str, start.eval_steps)), label="Euler steps for W2",
                                        elem_id="flow2d-eval-steps")
                reg = gr.Number(value=DEFAULT_SINKHORN_REG, label="Sinkhorn regularisation", info="on the cost / its max")
            with gr.Row():
                train_btn = gr.Button("Train", variant="primary", elem_id="flow2d-train")
                reflow_btn = gr.Button("Train + reflow the random model", elem_id="flow2d-reflow")
                stop = gr.Button("Stop", variant="stop", elem_id="flow2d-stop")
        with gr.Column(scale=3):
            view = gr.Image(label="Trajectories (drawn as they are integrated)", type="pil", interactive=False,
                            elem_id="flow2d-trajectories")
            progress = gr.Markdown("", elem_id="flow2d-status")
            # Headers before the first run (an empty table showed "1 2 3"); a run's table brings one W2 column per step count.
            table = gr.Dataframe(headers=["model", "NPE", "path energy", "straightness", "W2 @steps", "train s"],
                                 label="Per model", interactive=False, elem_id="flow2d-table")
            plot = gr.LinePlot(pd.DataFrame(columns=W2_COLUMNS), x="steps", y="W2", color="model", label="W2 to the target "
                               "against Euler steps", x_title="Euler steps", y_title="W2", elem_id="flow2d-plot")

    def run(reflow: bool, source, target, sketch, points, pairings, train_steps, seed, eval_steps, sinkhorn_reg, request):
        frames = {}

        def events():
            # Parsing happens here so bad input reaches the status line through guarded().
            req = Flow2DRequest(source or start.source, target or start.target, drawn_points(target, sketch, points),
                                tuple(start.pairings if pairings is None else pairings),
                                start.eval_steps if eval_steps is None else parse_steps(eval_steps),
                                number_field("train_steps", start.train_steps if train_steps is None else train_steps, 0),
                                seed=number_field("seed", seed if seed is not None else 0, 0),
                                sinkhorn_reg=number_field("sinkhorn_reg", DEFAULT_SINKHORN_REG if sinkhorn_reg is None
                                                          else sinkhorn_reg, 0.0), reflow=reflow)
            yield from flow2d(studio.manager, req)

        def on_event(event) -> dict:
            if isinstance(event, Notice):
                return {progress: status(event.text)}
            if isinstance(event, Step) and event.preview:
                frames[event.phase.removesuffix(f" {TRAJECTORIES}")] = event.preview[0]
                return {view: side_by_side(list(frames.values())), progress: status(f"Integrating {event.phase} …")}
            if isinstance(event, Step):
                return {progress: status(f"Training {event.phase}: step {event.i}/{event.n} · loss "
                                         f"{event.metrics['loss']:.3f} · {event.metrics['it_per_s']:.0f} it/s")}
            assert isinstance(event, Result)
            return {view: event.named["trajectories"], table: metrics_table(event.metrics), plot: w2_frame(event.metrics),
                    progress: status(f"Done in {event.metrics['seconds']:.1f} s (seed {int(event.metrics['seed'])}).", "ok")}

        def on_error(text: str, kind: str) -> dict:
            return {progress: status(text, kind)}

        yield {progress: status("Starting…")}
        yield from guarded(events(), on_event, on_error, request, studio.manager)

    # The API's parameter names are these functions'.
    def train_clicked(source=None, target=None, sketch=None, points=None, pairings=None, train_steps=None, seed=None,
                      eval_steps=None, sinkhorn_reg=None, request: gr.Request = None):
        yield from run(False, source, target, sketch, points, pairings, train_steps, seed, eval_steps, sinkhorn_reg, request)

    def reflow_clicked(source=None, target=None, sketch=None, points=None, pairings=None, train_steps=None, seed=None,
                       eval_steps=None, sinkhorn_reg=None, request: gr.Request = None):
        yield from run(True, source, target, sketch, points, pairings, train_steps, seed, eval_steps, sinkhorn_reg, request)

    inputs = [source, target, sketch, typed, pairings, train_steps, seed, eval_steps, reg]
    outputs = [view, progress, table, plot]
    target.change(lambda name: gr.Group(visible=name == DRAWN), target, draw_group, queue=False)
    train_btn.click(train_clicked, inputs, outputs, concurrency_id=ACCELERATOR, concurrency_limit=1, api_name="flow_2d")
    reflow_btn.click(reflow_clicked, inputs, outputs, concurrency_id=ACCELERATOR, concurrency_limit=1,
                     api_name="flow_2d_reflow")
    wire_stop(stop, studio.manager, progress)


# ================================================================ 2. flow vs diffusion at equal evaluations
COMPARE_HEADERS = ["model", "evaluations", "steps", "adherence", "straightness"]
DEFAULTS = (("shapes-v1", "DPM++ 2M"), ("shapes-v1-flow", "Flow Match Euler"), (REFLOW_MODEL, "Flow Match Euler Uniform"))


def build_comparison(studio: Studio) -> None:
    """Lay out the comparison inside the current gr.Blocks and wire it."""
    models = studio.model_choices()
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", value="a big red star", lines=1, elem_id="flow-prompt")
            pickers = []
            for k, (model, sampler) in enumerate(DEFAULTS):
                with gr.Row():
                    pickers.append(gr.Dropdown(models, value=model if model in models else None, allow_custom_value=True,
                                               label=f"Model {k + 1}" + (" (optional)" if k == 2 else ""),
                                               elem_id=f"flow-model-{k}", scale=2))
                    pickers.append(gr.Dropdown(list(SAMPLERS), value=sampler, label="Sampler", elem_id=f"flow-sampler-{k}",
                                               scale=2))
                    if k == 2:  # the reflow model was distilled from guided samples: it runs without CFG
                        cfg_3 = gr.Number(value=1.0, label="Its CFG", minimum=0, maximum=20, elem_id="flow-cfg-2",
                                          info="1: reflow", scale=1, min_width=90)
            evaluations = gr.CheckboxGroup(list(EVALUATIONS), value=list(EVALUATIONS), label="Model evaluations",
                                           elem_id="flow-evaluations")
            with gr.Row():
                seed = gr.Number(value=0, label="Seed", info="adherence over seed, seed + 1, ...")
                judge_seeds = gr.Slider(1, 8, value=4, step=1, label="Seeds for adherence")
                cfg = gr.Slider(0, 20, value=5.0, step=0.5, label="Guidance scale (CFG), models 1 and 2")
            with gr.Row():
                run_btn = gr.Button("Compare", variant="primary", elem_id="flow-compare")
                stop = gr.Button("Stop", variant="stop")
        with gr.Column(scale=3):
            grid = gr.Image(show_label=False, type="pil", interactive=False, elem_id="flow-grid", elem_classes=["pixelated"])
            progress = gr.Markdown("", elem_id="flow-status")
            plot = gr.LinePlot(x="evaluations", y="adherence", color="model", label="Prompt adherence against model evaluations",
                               x_title="model evaluations", y_title="adherence", y_lim=[0, 1], elem_id="flow-plot")
            table = gr.Dataframe(headers=COMPARE_HEADERS, label="Per model and evaluation count", interactive=False,
                                 elem_id="flow-table")

    # The API's parameter names are this function's.
    def run(prompt: str, model_1: str, sampler_1: str, model_2: str, sampler_2: str, evaluations: list, seed: float,
            judge_seeds: float, guidance_scale: float, model_3: str | None = None, sampler_3: str | None = None,
            guidance_scale_3: float | None = None, request: gr.Request = None):
        shown: dict[tuple[int, int], Image.Image] = {}
        labels = {"rows": [], "cols": [f"{n} evals" for n in sorted(evaluations or [])]}

        def events():
            own = None if guidance_scale_3 is None else number_field("guidance_scale_3", guidance_scale_3, 0.0)
            rows = ((model_1, sampler_1, None), (model_2, sampler_2, None),
                    (model_3, sampler_3 or "Flow Match Euler Uniform", own))
            contenders = tuple(Contender(m, s, guidance_scale=g) for m, s, g in rows if m)
            counts = tuple(sorted(number_field("evaluations", n, 0) for n in evaluations or []))
            req = CompareRequest(prompt or "", contenders, counts, number_field("seed", seed or 0, 0),
                                 number_field("guidance_scale", guidance_scale, 0.0), number_field("judge_seeds", judge_seeds, 0))
            labels["rows"] = [row_label(c, req) for c in contenders]
            yield from compare(studio.manager, req)

        def on_summary(event: SweepSummary) -> dict:
            return {table: compare_table(event), plot: compare_plot(event),
                    progress: status(f"Done: {len(shown)} cells in {event.seconds:.1f} s", "ok")}

        yield from grid_job_updates(events(), shown, labels, grid, progress, on_summary, request, studio.manager)

    run_btn.click(run, [prompt, *pickers[:4], evaluations, seed, judge_seeds, cfg, *pickers[4:], cfg_3], [grid, progress, table, plot],
                  concurrency_id=ACCELERATOR, concurrency_limit=1, api_name="flow_compare")
    wire_stop(stop, studio.manager, progress)


def compare_table(summary: SweepSummary) -> pd.DataFrame:
    def fmt(v, digits=3):
        return "n/a" if v is None else round(v, digits)

    return pd.DataFrame([[c["label"], c["evaluations"], c["steps"], fmt(c["adherence"]), fmt(c["straightness"], 4)]
                         for c in summary.columns], columns=COMPARE_HEADERS)


def compare_plot(summary: SweepSummary) -> pd.DataFrame:
    rows = [{"evaluations": c["evaluations"], "adherence": c["adherence"], "model": c["label"]}
            for c in summary.columns if c["adherence"] is not None]
    return pd.DataFrame(rows, columns=["evaluations", "adherence", "model"])
