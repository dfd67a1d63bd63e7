"""Measure the guidance bars on the embedded suite: classifier guidance toward a class, and adherence against CFG scale.

    python -m studio.shapes.guidance_eval [--per-class 8] [--prompts 100] [--scales 0,1,2,4,8] [--cfg 1,2,3,5,7]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from studio.config import ASSETS_MODELS, DEFAULT_MODEL, StudioConfig
from studio.events import Result
from studio.jobs import Txt2ImgRequest, txt2img
from studio.manager import ModelManager
from studio.shapes import attributes, evaluate
from studio.shapes import evaluator as ev

SUITE = ASSETS_MODELS / DEFAULT_MODEL
DEFAULT_CLASSIFIER_SCALE = 8.0


def classifier_guidance_rates(manager: ModelManager, scales: list[float], per_class: int, steps: int = 25) -> dict:
    """Empty prompt, no CFG; for each shape and each colour, the evaluator's rate for the target, per scale."""
    judge = ev.load(SUITE / "evaluator", manager.config.device)
    report: dict[str, dict[str, float]] = {}
    targets = [("shape", i, name) for i, name in enumerate(attributes.SHAPES)] + \
              [("colour", i, name) for i, name in enumerate(attributes.COLOURS)]
    for scale in scales:
        hits = {"shape": [], "colour": []}
        for head, cls, name in targets:
            req = Txt2ImgRequest(model=str(SUITE), prompt="", guidance_scale=1.0, classifier_scale=scale,
                                 classifier_target=name, steps=steps, seed=500, batch_size=per_class, preview_every=0,
                                 save=False, sampler=evaluate.DEFAULT_SAMPLER)
            result = [e for e in txt2img(manager, req) if isinstance(e, Result)][0]
            pred = ev.predict(judge, np.stack([np.asarray(im) for im in result.images]))
            hits[head].append(float((pred[head] == cls).mean()))
        report[f"{scale:g}"] = {f"{h}_rate": round(float(np.mean(v)), 3) for h, v in hits.items()}
        print(json.dumps({"classifier_scale": scale, **report[f"{scale:g}"]}), flush=True)
    report["chance"] = {"shape_rate": round(1 / len(attributes.SHAPES), 3),
                        "colour_rate": round(1 / len(attributes.COLOURS), 3)}
    return report


def cfg_adherence(cfgs: list[float], n_prompts: int, steps: int = 25) -> dict:
    """Adherence (every attribute the prompt names) and diversity per CFG scale, same prompts and seeds."""
    pipe = evaluate.load_pipeline(SUITE)
    judge = ev.load(SUITE / "evaluator")
    prompts, wanted = evaluate.prompt_set(n_prompts, seed=evaluate.EVAL_SEED + 5)
    report = {}
    for cfg in cfgs:
        images = evaluate.generate(pipe, prompts, seed=7, steps=steps, cfg=cfg)
        rep = evaluate.adherence_report(ev.predict(judge, images), wanted)
        report[f"{cfg:g}"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in rep.items()}
        print(json.dumps({"cfg": cfg, **report[f"{cfg:g}"]}), flush=True)
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-class", type=int, default=8)
    p.add_argument("--scales", default="0,1,2,4,8")
    p.add_argument("--prompts", type=int, default=100)
    p.add_argument("--cfg", default="1,2,3,5,7")
    p.add_argument("--skip", default="", help="'classifier' or 'cfg' to skip a part")
    args = p.parse_args(argv)
    t0 = time.time()
    out = {}
    if args.skip != "classifier":
        manager = ModelManager(StudioConfig())
        out["classifier_guidance"] = classifier_guidance_rates(manager, [float(s) for s in args.scales.split(",")], args.per_class)
    if args.skip != "cfg":
        out["cfg_adherence"] = cfg_adherence([float(c) for c in args.cfg.split(",")], args.prompts)
    out["minutes"] = round((time.time() - t0) / 60, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
