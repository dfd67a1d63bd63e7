"""`python -m studio train`: the Personalize tab's training job from the command line, also under
`accelerate launch` on several GPUs or nodes (each process runs this; accelerate makes the process group)."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from studio.config import add_model_flags
from studio.errors import RequestError
from studio.events import Notice, Result, Samples, TrainStep
from studio.jobs.train import DEFAULTS, METHODS, PRIOR_TARGETS, TrainRequest, train


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="personalize a model: LoRA, DreamBooth or textual inversion from a folder of images",
                       epilog="e.g. --method lora --images assets/personalize/heart --token '<heart>' --class-word diamond")
    t.add_argument("--method", choices=METHODS, default="lora")
    t.add_argument("--images", type=Path, required=True, help="folder of 3-20 images (name.txt beside an image: its caption)")
    t.add_argument("--token", required=True, help="the new word for the concept, e.g. '<heart>'")
    t.add_argument("--class-word", default="", help="what the concept is (initialises the token; DreamBooth's class)")
    t.add_argument("--caption", default=None, help="caption of images without one; <tok> and <class> are filled in")
    t.add_argument("--prior", action="store_true", help="prior preservation: class images drawn by the base model")
    t.add_argument("--prior-weight", type=float, default=1.0)
    t.add_argument("--prior-target", choices=PRIOR_TARGETS, default=TrainRequest.prior_target,
                   help="what the class images' loss pulls toward: the base model's own prediction (a distillation "
                        "loss; keeps plain prompts best) or the noise added (DreamBooth's paper)")
    t.add_argument("--class-images", type=int, default=50)
    t.add_argument("--ema-decay", type=float, default=0.0,
                   help="save a moving average of the trained weights with this decay, e.g. 0.99 (0: the last step's)")
    t.add_argument("--class-prompt", action="append", default=None,
                   help="prior preservation's prompt (<class>: the class word; default 'a <class>'); give it several "
                        "times and the class images cycle through them")
    t.add_argument("--full", action="store_true", help="DreamBooth: fine-tune the whole UNet (a new model folder)")
    t.add_argument("--steps", type=int, default=0, help=f"default {DEFAULTS['lora']['steps']}")
    t.add_argument("--batch", type=int, default=4, help="global batch (split over the processes)")
    t.add_argument("--lr", type=float, default=0.0, help="0: the method's default")
    t.add_argument("--token-lr", type=float, default=0.0, help="0: the method's default")
    t.add_argument("--rank", type=int, default=4)
    t.add_argument("--alpha", type=float, default=0.0, help="0: the rank")
    t.add_argument("--text-encoder-lora", action="store_true")
    t.add_argument("--no-conv-lora", action="store_true", help="LoRA on the attention projections only (default: the "
                                                               "ResNet convolutions and attention in/out projections too)")
    t.add_argument("--word-dropout", type=float, default=TrainRequest.word_dropout,
                   help="probability of leaving out each caption word but the token")
    t.add_argument("--vectors", type=int, default=1, help="embedding vectors of the token")
    t.add_argument("--no-flip", action="store_true", help="no mirror-image augmentation")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--minutes", type=float, default=0.0, help="wall-time budget (0: none)")
    t.add_argument("--checkpoint-every", type=int, default=50)
    t.add_argument("--sample-every", type=int, default=0, help="preview images every N steps (0: four times)")
    t.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    t.add_argument("--name", default="", help="the result's name (default: the token's letters)")
    t.add_argument("--model", default="shapes-v1")
    t.add_argument("--out", type=Path, default=None, help="result folder (default: models/lora/<name>, "
                                                           "models/embeddings/<name>, models/<name>)")
    t.add_argument("--losses", type=Path, default=None, help="also write the loss of every step to this file")
    add_model_flags(t)


def request_from_args(args: argparse.Namespace) -> TrainRequest:
    extra = {"template": args.caption} if args.caption else {}
    if args.class_prompt:
        extra["class_prompt"] = "\n".join(args.class_prompt)
    return TrainRequest(
        method=args.method, images_dir=args.images, token=args.token, class_word=args.class_word, prior=args.prior,
        prior_weight=args.prior_weight, prior_target=args.prior_target, class_images=args.class_images, full=args.full,
        steps=args.steps, batch=args.batch,
        lr=args.lr, token_lr=args.token_lr, rank=args.rank, alpha=args.alpha, text_encoder_lora=args.text_encoder_lora,
        conv_lora=not args.no_conv_lora, word_dropout=args.word_dropout, vectors=args.vectors, flip=not args.no_flip,
        seed=args.seed, minutes=args.minutes, ema_decay=args.ema_decay,
        checkpoint_every=args.checkpoint_every, sample_every=args.sample_every, resume=args.resume, name=args.name,
        model=args.model, out=args.out, command="python -m studio " + shlex.join(sys.argv[1:]), **extra)


def cmd_train(args: argparse.Namespace, config) -> int:
    """Run the job; under `accelerate launch` every process runs it and only the main one reports and saves."""
    from accelerate import PartialState

    from studio.manager import ModelManager

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by accelerate launch (or torchrun)
        config.device = str(PartialState(cpu=args.device == "cpu").device)
    main = int(os.environ.get("RANK", "0")) == 0
    req = request_from_args(args)
    if not args.images.is_dir():
        raise RequestError(f"--images {args.images}: no such folder.")
    losses = []
    for event in train(ModelManager(config), req):
        if isinstance(event, TrainStep):
            losses.append(event.loss)
            if main and (event.step % 10 == 0 or event.step == event.total):
                print(f"step {event.step}/{event.total}  loss {event.loss:.4f}  lr {event.lr:.2e}  {event.it_per_s:.2f} it/s"
                      f"  ETA {event.eta_s:.0f} s", file=sys.stderr, flush=True)
        elif isinstance(event, Notice) and main:
            print(f"note: {event.text}", file=sys.stderr, flush=True)
        elif isinstance(event, Samples) and main:
            print(f"samples at step {event.step}: {len(event.images)} images", file=sys.stderr, flush=True)
        elif isinstance(event, Result):
            for path in event.paths:
                print(f"saved {path}", flush=True)
            print("  ".join(f"{k} {v:.4g}" for k, v in event.metrics.items()), flush=True)
    if args.losses is not None and main:
        args.losses.write_text("\n".join(f"{x:.8f}" for x in losses) + "\n")
    return 0
