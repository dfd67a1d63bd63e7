"""Measure the Personalize bars on the embedded suite, with the five red-heart demo images (a shape it never saw):

    python -m studio.shapes.evaluate_personalize --out runs/personalize --stages judge,lora,ti,dreambooth,cost

Everything runs through the studio's own jobs (studio.jobs.train, then studio.jobs.txt2img with the result loaded as
a user would: <lora:heart:1>, the embedding, the DreamBooth model), on fresh seeds never used while training
(previews use seeds 0 and 1; here seeds start at EVAL_SEED). The heart is judged by studio.shapes.heart (template
match, calibrated in the `judge` stage); plain prompts by the suite's evaluator. Results: <out>/eval.json."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from studio.config import ASSETS_MODELS, ROOT, StudioConfig
from studio.events import Notice, Result, TrainStep
from studio.jobs import Txt2ImgRequest, txt2img
from studio.jobs.train import TrainRequest, train
from studio.manager import ModelManager
from studio.personalize import data as datasets
from studio.shapes import heart, prompts, scenes
from studio.shapes.attributes import COLOURS, SHAPES, SceneObject
from studio.shapes.drawing import background, draw_object

DEMO = ROOT / "assets" / "personalize" / "heart"
EVAL_SEED = 70_000
CLASS_SEED = 90_000  # the varied class prompts of DreamBooth's prior: scenes other than the adherence check's
TOKEN = "<heart>"
SAMPLER, STEPS, CFG = "DPM++ 2M", 25, 5.0


def images(manager: ModelManager, prompt: str, seeds: int, **request) -> np.ndarray:
    """uint8 (N, 64, 64, 3): the prompt at seeds EVAL_SEED ... EVAL_SEED + seeds - 1 through the txt2img job."""
    out = []
    for start in range(0, seeds, 10):
        n = min(10, seeds - start)
        req = Txt2ImgRequest(prompt=prompt, sampler=SAMPLER, steps=STEPS, guidance_scale=CFG, seed=EVAL_SEED + start,
                             batch_size=n, preview_every=0, save=False, **request)
        result = [e for e in txt2img(manager, req) if isinstance(e, Result)][-1]
        out.append((result.pixels * 255).round().astype(np.uint8))
    return np.concatenate(out)


def run_training(manager: ModelManager, req: TrainRequest, reuse: bool = False) -> dict:
    card = manager.config.models_dir / {"lora": "lora", "embedding": "embeddings", "model": "."}[req.kind] / req.name
    if reuse and (card / "card.json").is_file():
        return json.loads((card / "card.json").read_text())
    t0, last = time.perf_counter(), None
    for event in train(manager, req):
        if isinstance(event, TrainStep) and (event.step % 50 == 0 or event.step == 1):
            print(f"  step {event.step}/{event.total} loss {event.loss:.4f} {event.it_per_s:.2f} it/s", flush=True)
        elif isinstance(event, Notice):
            print(f"  {event.text}", flush=True)
        elif isinstance(event, Result):
            last = event.metrics
    return {**(last or {}), "wall_s": time.perf_counter() - t0}


def concept(manager, seeds: int, colours: tuple[str, ...] = ("blue",), **request) -> dict:
    """Hearts for "a <heart>", and for each of `colours`, hearts of that colour for "a <colour> <heart>"."""
    plain = [heart.judge(im) for im in images(manager, f"a {TOKEN}", seeds, **request)]
    out = {"heart_rate": float(np.mean([v["heart"] for v in plain])),
           "red_heart_rate": float(np.mean([v["heart"] and v["colour"] == "red" for v in plain]))}
    for colour in colours:
        got = [heart.judge(im) for im in images(manager, f"a {colour} {TOKEN}", seeds, **request)]
        out.update({f"{colour}_prompt_heart_rate": float(np.mean([v["heart"] for v in got])),
                    f"{colour}_prompt_{colour}_rate": float(np.mean([v["colour"] == colour for v in got])),
                    f"{colour}_prompt_{colour}_heart_rate": float(np.mean([v["heart"] and v["colour"] == colour
                                                                            for v in got]))})
    return out


def plain_prompts(seed: int, n: int) -> list[str]:
    """n single-shape captions of the suite (e.g. 'a green square'), drawn from scenes of `seed`."""
    _, captions, _ = scenes.render_batch(seed, 4 * n)
    return [c for c in captions if not any(w in c for w in ("two", "three", "person", "man", "woman", "figure",
                                                             "someone"))][:n]


def adherent_share(manager, captions: list[str], seeds: int, **request) -> float:
    """Fraction of the images (each caption at `seeds` seeds) in which the suite's evaluator, which judges every
    model's images, finds every attribute the caption asks for."""
    judges = manager.get("shapes-v1").judges
    hits = []
    for caption in captions:
        ims = images(manager, caption, seeds, **request)
        hits += [bool(v) for v in judges.adherence(ims, prompts.asked_attributes(caption))]
    return float(np.mean(hits))


def adherence(manager, n_prompts: int, **request) -> float:
    """Plain prompts (fresh single-shape captions of the suite, with size and place), one seed each."""
    return adherent_share(manager, plain_prompts(EVAL_SEED, n_prompts), 1, **request)


def colour_shape_adherence(manager, seeds: int, **request) -> float:
    """The issue's plain prompts in their own form, "a <colour> <shape>" (every colour and shape of the suite, as in
    "a green square"): shape and colour judged."""
    return adherent_share(manager, [f"a {c} {s}" for s in SHAPES for c in COLOURS], seeds, **request)


def cost(manager, common: dict, steps: int = 60) -> dict:
    """Training speed of a LoRA against full fine-tuning of the UNet (same batch, no prior, no previews), and the
    LoRA's size."""
    settings = {**common, "minutes": 0.0, "steps": steps, "checkpoint_every": 0}
    out = {}
    for label, req in (("lora", TrainRequest(method="lora", name="cost-lora", **settings)),
                       ("full", TrainRequest(method="dreambooth", full=True, name="cost-full", **settings))):
        card = run_training(manager, req)
        out[f"{label}_it_per_s"] = card["it_per_s"]
        out[f"{label}_trainable_params"] = card["trainable_params"]
    files = json.loads((manager.config.models_dir / "lora" / "cost-lora" / "card.json").read_text())["files"]
    out["lora_file_bytes"] = files["pytorch_lora_weights.safetensors"]
    out["lora_kohya_file_bytes"] = files["cost-lora.safetensors"]
    out["lora_speedup"] = out["lora_it_per_s"] / out["full_it_per_s"]
    return out


def judge_stage(manager, seeds: int) -> dict:
    """How the heart judge does on drawn hearts, on the suite's own shapes, and on the base model's images."""
    rng = np.random.default_rng(EVAL_SEED)
    drawn, others = [], []
    for _ in range(300):
        img, _ = background(rng, 64)
        colour = list(COLOURS)[rng.integers(8)]
        r = rng.uniform(7, 14.5)
        cx, cy = rng.uniform(r + 2, 62 - r, 2)
        heart.draw_heart(img, cx, cy, r, COLOURS[colour])
        drawn.append(heart.judge(img)["heart"])
        img, _ = background(rng, 64)
        draw_object(img, SceneObject(SHAPES[rng.integers(6)], colour, "big", (cx, cy), r))
        others.append(heart.judge(img)["heart"])
    figures = [heart.judge(scenes.make_scene(rng, 64, "figure").image)["heart"] for _ in range(300)]
    base = {shape: heart.concept_rate(list(images(manager, f"a red {shape}", seeds))) for shape in ("diamond", "circle")}
    return {"drawn_hearts_judged_heart": float(np.mean(drawn)), "drawn_suite_shapes_judged_heart": float(np.mean(others)),
            "drawn_suite_figures_judged_heart": float(np.mean(figures)),
            "base_model_red_diamond_judged_heart": base["diamond"], "base_model_red_circle_judged_heart": base["circle"],
            "base_model_a_heart_token_judged_heart": concept(manager, seeds)["heart_rate"]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "personalize")
    p.add_argument("--stages", default="judge,lora,ti,dreambooth,cost")
    p.add_argument("--minutes", type=float, default=3.0, help="training budget of each run")
    p.add_argument("--seeds", type=int, default=50)
    p.add_argument("--prompts", type=int, default=40, help="plain prompts for the prior-preservation check")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--lora-steps", type=int, default=500, help="the LoRA's steps (0: the job's default)")
    p.add_argument("--reuse", action="store_true", help="judge results already trained in --out instead of training")
    p.add_argument("--recolour", type=float, default=None,
                   help="share of recoloured training views (default: studio.personalize.data.RECOLOUR)")
    p.add_argument("--lora-extra", default="{}", help="JSON of further TrainRequest settings for the lora stage")
    p.add_argument("--db-extra", default="{}", help="JSON of further TrainRequest settings for the dreambooth stage")
    p.add_argument("--db-priors", default="1,0", help="which DreamBooth runs: with (1) and without (0) prior")
    p.add_argument("--base-adherence", type=float, default=-1.0, help="the base model's, when measured before")
    p.add_argument("--simple-seeds", type=int, default=2, help="seeds per 'a <colour> <shape>' prompt (48 prompts)")
    p.add_argument("--db-class-prompts", type=int, default=0,
                   help="DreamBooth's prior: class images from this many varied suite captions (other seeds than the "
                        "adherence check's), as a user lists what the base model should keep; 0: one prompt 'a diamond'")
    p.add_argument("--db-concept-seeds", type=int, default=0, help="seeds for DreamBooth's concept check (0: --seeds)")
    args = p.parse_args(argv)
    if args.recolour is not None:
        datasets.RECOLOUR = args.recolour
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    config = StudioConfig(models_dir=args.out / "models", outputs_dir=args.out / "outputs", assets_dir=ASSETS_MODELS)
    manager = ModelManager(config)
    results_file = args.out / "eval.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    common = dict(images_dir=DEMO, token=TOKEN, class_word="diamond", batch=8, minutes=args.minutes, sample_every=10**6)
    for stage in args.stages.split(","):
        print(f"== {stage}", flush=True)
        t0 = time.perf_counter()
        if stage == "judge":
            results["judge"] = judge_stage(manager, args.seeds)
        elif stage == "lora":
            trained = run_training(manager, TrainRequest(method="lora", name="heart", steps=args.lora_steps,
                                                         **{**common, **json.loads(args.lora_extra)}), args.reuse)
            results["lora"] = {"training": trained, **concept(manager, args.seeds, ("blue", "red", "green"),
                                                              loras=(("heart", 1.0),))}
        elif stage == "ti":
            trained = run_training(manager, TrainRequest(method="textual-inversion", name="heart-ti", **common), args.reuse)
            results["ti"] = {"training": trained, **concept(manager, args.seeds, embeddings=("heart-ti",))}
        elif stage == "dreambooth":
            base = args.base_adherence if args.base_adherence >= 0 else adherence(manager, args.prompts)
            results["dreambooth"] = {"base_adherence": base,
                                     "base_colour_shape_adherence": colour_shape_adherence(manager, args.simple_seeds)}
            db = {"full": True, "class_images": 50, **json.loads(args.db_extra)}
            if args.db_class_prompts:
                db["class_prompt"] = "\n".join(plain_prompts(CLASS_SEED, args.db_class_prompts))
            for prior in (bool(int(v)) for v in args.db_priors.split(",")):
                name = f"heart-db-{'prior' if prior else 'noprior'}"
                req = TrainRequest(method="dreambooth", prior=prior, name=name, **{**common, **db})
                trained = run_training(manager, req, args.reuse)
                if req.kind == "model":
                    use = {"model": str(config.models_dir / name)}
                else:
                    use = {"loras": ((name, 1.0),)}
                seeds = args.db_concept_seeds or args.seeds
                results["dreambooth"][name] = {"training": trained, "adherence": adherence(manager, args.prompts, **use),
                                               "colour_shape_adherence": colour_shape_adherence(manager, args.simple_seeds,
                                                                                                **use),
                                               **concept(manager, seeds, **use)}
                manager.unload()
        elif stage == "cost":
            results["cost"] = cost(manager, common)
        print(json.dumps(results.get(stage), indent=2), f"({time.perf_counter() - t0:.0f} s)", flush=True)
        results_file.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
