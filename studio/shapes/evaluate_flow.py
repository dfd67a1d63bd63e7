"""Measure the flow suite against the diffusion suite: prompt adherence at 25 steps and at few model evaluations,
and the straightness of the flow model's trajectories, through the studio's own jobs (the page's code path).

    python -m studio.shapes.evaluate_flow --prompts 240 [--write]     (--write: eval_flow.json in the flow folder)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from studio.config import ASSETS_MODELS, DEFAULT_MODEL, StudioConfig
from studio.events import Result
from studio.jobs import Txt2ImgRequest, txt2img
from studio.jobs.flow_compare import REFLOW_MODEL, steps_for, straightness
from studio.manager import ModelManager
from studio.shapes import evaluate
from studio.shapes import evaluator as ev

FLOW_MODEL = "shapes-v1-flow"
# (model, sampler, model evaluations): the comparisons.
RUNS = [
    (DEFAULT_MODEL, "DPM++ 2M", 25), (FLOW_MODEL, "Flow Match Euler", 25),
    (DEFAULT_MODEL, "DDIM", 4), (DEFAULT_MODEL, "DPM++ 2M", 4), (DEFAULT_MODEL, "UniPC", 4),
    (FLOW_MODEL, "Flow Match Euler", 4), (FLOW_MODEL, "Flow Match Euler", 8),
    (FLOW_MODEL, "Flow Match Euler", 2), (FLOW_MODEL, "Flow Match Euler", 1),
    (FLOW_MODEL, "Flow Match Euler Uniform", 25),
    (FLOW_MODEL, "Flow Match Euler Uniform", 8), (FLOW_MODEL, "Flow Match Euler Uniform", 4),
    (FLOW_MODEL, "Flow Match Euler Uniform", 2),
    # The reflow round, without CFG (its pairs were made with it): few evaluations are what it is for.
    (REFLOW_MODEL, "Flow Match Euler Uniform", 1), (REFLOW_MODEL, "Flow Match Euler Uniform", 2),
    (REFLOW_MODEL, "Flow Match Euler Uniform", 4), (REFLOW_MODEL, "Flow Match Euler Uniform", 8),
    (FLOW_MODEL, "Flow Match Euler Uniform", 1),
]
REFLOW_CFG = 1.0


def images_for(manager: ModelManager, model: str, sampler: str, steps: int, prompts: list[str], cfg: float,
               seed: int = 1, shift: float = 0.0) -> np.ndarray:
    """uint8 images, prompt k with seed + k, through txt2img (one job per prompt)."""
    out = []
    for k, prompt in enumerate(prompts):
        req = Txt2ImgRequest(prompt=prompt, model=model, sampler=sampler, steps=steps, guidance_scale=cfg, seed=seed + k,
                             preview_every=0, save=False, shift=shift)
        result = [e for e in txt2img(manager, req) if isinstance(e, Result)][-1]
        out.append(np.asarray(result.images[0].convert("RGB")))
    return np.stack(out)


def run(n_prompts: int, cfg: float = evaluate.DEFAULT_CFG, runs=RUNS, n_straight: int = 16, engine: str = "eager",
        shift: float = 0.0, flow_model: str = FLOW_MODEL, prompt_seed: int = evaluate.EVAL_SEED,
        reflow_model: str = REFLOW_MODEL) -> dict:
    """`flow_model`, `reflow_model`: the models measured in FLOW_MODEL's and REFLOW_MODEL's runs (e.g. candidates in
    the models folder). The reflow model runs at CFG 1 (REFLOW_CFG), the others at `cfg`."""
    renamed = {FLOW_MODEL: flow_model, REFLOW_MODEL: reflow_model}
    runs = [(renamed.get(model, model), sampler, n) for model, sampler, n in runs]
    manager = ModelManager(StudioConfig(engine=engine))
    judge = ev.load(ASSETS_MODELS / DEFAULT_MODEL / "evaluator")
    prompts, wanted = evaluate.prompt_set(n_prompts, prompt_seed)
    report = {"prompts": n_prompts, "cfg": cfg, "runs": [], **({"prompt_seed": prompt_seed} if prompt_seed != evaluate.EVAL_SEED else {})}
    for model, sampler, evaluations in runs:
        steps = steps_for(sampler, evaluations)
        t0 = time.time()
        flow_shift = shift if model == flow_model else 0.0
        run_cfg = REFLOW_CFG if model == reflow_model else cfg
        images = images_for(manager, model, sampler, steps, prompts, run_cfg, shift=flow_shift)
        entry = {"model": model, "sampler": sampler, "evaluations": evaluations, "steps": steps,
                 **({"cfg": run_cfg} if run_cfg != cfg else {}),
                 "adherence": evaluate.adherence_report(ev.predict(judge, images), wanted),
                 "seconds": round(time.time() - t0, 1), **({"shift": flow_shift} if flow_shift else {})}
        if model in (flow_model, reflow_model):
            loaded = manager.get(model)
            entry["straightness"] = round(float(np.mean([
                straightness(manager, loaded, Txt2ImgRequest(prompt=p, model=model, sampler=sampler, steps=steps,
                                                             guidance_scale=run_cfg, seed=1 + k, shift=flow_shift))
                for k, p in enumerate(prompts[:n_straight])])), 5)
        print(json.dumps(entry), flush=True)
        report["runs"].append(entry)
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=240)
    p.add_argument("--cfg", type=float, default=evaluate.DEFAULT_CFG)
    p.add_argument("--models", default="", help="only the runs of these models (comma-separated); default: all")
    p.add_argument("--write", action="store_true", help="write (or update) eval_flow.json in the flow suite's folder")
    p.add_argument("--runs", default="", help="only these runs, as sampler:evaluations (comma-separated)")
    p.add_argument("--engine", default="eager", help="CPU engine for the UNet and decoder (studio.engines); "
                                                     "outputs within 1e-3 of eager")
    p.add_argument("--shift", type=float, default=0.0, help="the flow model's timestep shift (0: its own)")
    p.add_argument("--prompt-seed", type=int, default=evaluate.EVAL_SEED,
                   help="another set of fresh prompts (e.g. to confirm a choice made on the default set)")
    p.add_argument("--flow-model", default=FLOW_MODEL, help="the flow model to measure (a name or folder; --write: the "
                                                            "embedded one only)")
    p.add_argument("--reflow-model", default=REFLOW_MODEL, help="the reflow model to measure (as --flow-model)")
    args = p.parse_args(argv)
    wanted = {m for m in args.models.split(",") if m}
    only = {r for r in args.runs.split(",") if r}
    chosen = [r for r in RUNS if (not wanted or r[0] in wanted) and (not only or f"{r[1]}:{r[2]}" in only)]
    if args.write and (args.flow_model != FLOW_MODEL or args.reflow_model != REFLOW_MODEL
                       or args.prompt_seed != evaluate.EVAL_SEED):
        raise SystemExit("--write records the embedded flow suite's numbers on the default prompts; measure without it")
    report = run(args.prompts, args.cfg, chosen, engine=args.engine, shift=args.shift, flow_model=args.flow_model,
                 prompt_seed=args.prompt_seed, reflow_model=args.reflow_model)
    if args.write:
        path = Path(ASSETS_MODELS / FLOW_MODEL / "eval_flow.json")
        if path.is_file():  # runs measured earlier (same prompts and CFG) stay unless measured again
            earlier = json.loads(path.read_text())
            key = lambda r: (r["model"], r["sampler"], r["evaluations"])  # noqa: E731
            fresh = {key(r) for r in report["runs"]}
            if (earlier["prompts"], earlier["cfg"]) == (report["prompts"], report["cfg"]):
                report["runs"] = [r for r in earlier["runs"] if key(r) not in fresh] + report["runs"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
