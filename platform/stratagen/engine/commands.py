"""CLI verbs over :mod:`stratagen.api`: train, tokenize, sample, info."""
from __future__ import annotations

import argparse
from typing import Callable

import torch

HANDLERS: dict[str, Callable[[argparse.Namespace], int | None]] = {}


def handler(name: str):
    def wrap(fn):
        HANDLERS[name] = fn
        return fn
    return wrap


def add_parsers(sub: argparse._SubParsersAction, add_set: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("train", help="train every stage a config declares",
                       description="Train the tokenizer(s), cache their tokens, then train each prior. "
                                   "Finished components are loaded, not retrained.")
    p.add_argument("source", help="run config (or, with --resume, a run directory)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoints of the run directory")
    add_set(p)

    p = sub.add_parser("tokenize", help="encode a dataset once into a token cache",
                       description="Encode the run's dataset with its trained tokenizer(s) and write the token "
                                   "grids as safetensors shards under <run>/tokens/.")
    p.add_argument("source", help="run directory or config")
    p.add_argument("--split", choices=["train", "eval"], default="train")
    p.add_argument("--batch-size", type=int, default=64)
    add_set(p)

    p = sub.add_parser("sample", help="generate images from a trained run",
                       description="Write one PNG per image and one PNG grid.")
    p.add_argument("source", help="run directory or config")
    p.add_argument("--classes", default="all", help="comma-separated class ids, or 'all' (default)")
    p.add_argument("--count", type=int, default=1, help="images per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default: <run>/samples)")
    add_set(p)

    p = sub.add_parser("info", help="print each component with its parameter count",
                       description="Build the components of a config or run directory (no training) and "
                                   "print their parameter counts.")
    p.add_argument("source", help="run directory or config")
    add_set(p)


@handler("train")
def _train(args: argparse.Namespace) -> int:
    from stratagen import api

    config = api.load(args.source, args.set)
    run = api.train(config, resume=args.resume)
    print(f"trained: {run.url}\ntensorboard --logdir {run.path('tb')}")
    return 0


@handler("tokenize")
def _tokenize(args: argparse.Namespace) -> int:
    from stratagen import api
    from stratagen.engine import build
    from stratagen.engine.train import tokenize

    pipe = api.Pipeline.from_run(args.source, args.set)
    dataset = build.dataset(pipe.config, args.split)
    for tid, tokenizer in pipe.model.tokenizers.items():
        count = tokenize(pipe.run, tid, tokenizer, dataset, args.split, pipe.device, args.batch_size)
        print(f"{tid}: {count} images -> {pipe.run.path('tokens', tid)}")
    return 0


@handler("sample")
def _sample(args: argparse.Namespace) -> int:
    from stratagen import api
    from stratagen.engine.images import save_images

    pipe = api.Pipeline.from_run(args.source, args.set)
    classes = (list(range(pipe.model.num_classes)) if args.classes == "all"
               else [int(c) for c in args.classes.split(",") if c.strip()])
    labels = [c for c in classes for _ in range(args.count)]
    output = pipe.sample(labels, seed=args.seed)
    out = args.out or pipe.run.local_path("samples")
    grid = save_images(output.images, labels, out, nrow=args.count if args.count > 1 else len(classes))
    print(f"{len(labels)} images in {out}; grid: {grid}")
    return 0


@handler("info")
def _info(args: argparse.Namespace) -> int:
    from stratagen import api
    from stratagen.engine import build

    config = api.load(args.source, args.set)
    model = build.build_model(config)
    rows = []
    for tid, tokenizer in model.tokenizers.items():
        levels = ", ".join(f"{s.name} {s.height}x{s.width}/{s.codebook_size}"
                           for s in tokenizer.level_specs(model.resolution))
        rows.append(("tokenizer", tid, config.tokenizers[tid].model.name, _count(tokenizer), levels))
    for pid, slot in model.priors.items():
        streams = slot.target + (f" | {', '.join(slot.conditions)}" if slot.conditions else "")
        rows.append(("prior", pid, config.priors[pid].model.name, _count(slot.prior), streams))
    print(f"{'KIND':<10} {'ID':<10} {'PLUGIN':<12} {'PARAMETERS':>14}  DETAILS")
    for kind, cid, plugin, count, details in rows:
        print(f"{kind:<10} {cid:<10} {plugin:<12} {count:>14,}  {details}")
    if config.sampler is not None:
        build.build_sampler(config, model)
        print(f"sampler    {config.sampler.name} (compatible)")
    return 0


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
