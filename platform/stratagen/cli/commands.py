"""CLI verbs over :mod:`stratagen.api`: train, tokenize, sample, eval, compare, bench, info."""
from __future__ import annotations

import argparse
from typing import Any, Callable

import torch

from stratagen import api
from stratagen.registry import StratagenError

from .arguments import Parser, class_ids, folder, positive_int
from .verbs import verb


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
    p.add_argument("--batch-size", type=positive_int, default=64)
    add_set(p)

    p = sub.add_parser("sample", help="generate images from a trained run",
                       description="Write one PNG per image and one PNG grid.")
    p.add_argument("source", help="run directory or config")
    p.add_argument("--classes", type=class_ids, default=None, help="comma-separated class ids, or 'all' (default)")
    p.add_argument("--caption", action="append", default=None, metavar="TEXT",
                   help="sample for this caption instead of classes (text-conditioned runs, e.g. STAR; repeatable)")
    p.add_argument("--count", type=positive_int, default=1, help="images per class (or per caption)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=folder, default=None, help="output folder (default: <run>/samples)")
    add_set(p)

    p = sub.add_parser("eval", help="evaluate a trained run: tokenizers (Table 1) and samples",
                       description="Reconstruction PSNR, rFID, per-level perplexity and codebook usage of each "
                                   "tokenizer, and the configured metrics of the sampler's images, written to "
                                   "<run>/eval.json. In-domain metrics are not comparable to Inception FIDs. "
                                   "Under torchrun the sampling is split over the processes (same images as one "
                                   "process) and rank 0 scores and writes.")
    p.add_argument("source", help="run directory or config")
    p.add_argument("--tokenizers-only", action="store_true", help="skip sampling")
    p.add_argument("--reference", default=None, metavar="REF.npz",
                   help="also score the samples as the published tables do (ADM's evaluator): fid_adm, sfid_adm, "
                        "is_adm and, when REF holds images, precision_adm / recall_adm (Inception, k = 3), against "
                        "this ADM reference batch (e.g. VIRTUAL_imagenet256_labeled.npz, or `stratagen data stats`)")
    p.add_argument("--reference-only", action="store_true",
                   help="with --reference: score the samples by that protocol alone (no tokenizer report, no "
                        "configured metric; the run's dataset is not read)")
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth, for --reference (default: the "
                        "weights of the run's 'inception' metric)")
    add_set(p)

    p = sub.add_parser("compare", help="train/load, sample and score several variants side by side",
                       description="Run a compare config: every variant samples the same classes with the same "
                                   "seeds, is scored identically, and lands in results.csv/.md, figures/ and "
                                   "TensorBoard. Re-running skips finished work. The whole comparison is "
                                   "checked before any work (--check: only that).")
    p.add_argument("source", help="compare config")
    p.add_argument("--check", action="store_true",
                   help="check every variant's config or run, sweeps, seeds and metrics, print what would run, "
                        "and exit without training, sampling or writing anything")
    add_set(p)

    p = sub.add_parser("bench", help="measure seconds, FLOPs and MFU of training steps and sampling",
                       description="Time one training step of every component (random tokens stand in for the "
                                   "token cache) and the sampler at several batch sizes with and without "
                                   "guidance, on the config's device; count model FLOPs (FlopCounterMode) and "
                                   "divide the achieved FLOP/s by a dense matmul peak measured in the same run. "
                                   "Sampling runs in run.inference_dtype (--set run.inference_dtype=float32).")
    p.add_argument("source", help="run config or run directory")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed calls per row (at least 0.5 s of them)")
    p.add_argument("--batches", default="1,8,32,128", help="sampling batch sizes, comma-separated")
    p.add_argument("--parts", default="tokenizers,priors,sample",
                   help="rows to measure, comma-separated: tokenizers, priors (train steps), sample")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_set(p)

    p = sub.add_parser("info", help="print each component with its parameter count",
                       description="Build the components of a config or run directory (no training) and "
                                   "print their parameter counts.")
    p.add_argument("source", help="run directory or config")
    add_set(p)

    p = sub.add_parser("convert", help="convert another project's checkpoints into a run directory",
                       description="Run a converter plugin (`stratagen plugins` lists them), e.g. `stratagen convert "
                                   "maskgit-official --tokenizer FILE --transformer FILE OUT_RUN`; the options are "
                                   "the converter's config fields (`--help` after the converter name lists them).")
    p.add_argument("converter", help="converter name")
    p.add_argument("options", nargs=argparse.REMAINDER, help="--FIELD VALUE ... OUT_RUN")

    p = sub.add_parser("data", help="prepare datasets", description="Prepare datasets for training.")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    pack = dsub.add_parser("pack", help="write an image folder as WebDataset tar shards",
                           description="Write the images of FOLDER (one sub-folder per class) as tar shards "
                                       "({jpg|png, cls} per sample) plus index.json under OUT, for the "
                                       "'webdataset' dataset. FOLDER and OUT may be fsspec URLs.")
    pack.add_argument("folder")
    pack.add_argument("out")
    pack.add_argument("--shard-size", type=positive_int, default=1000, help="samples per shard (default 1000)")
    stats = dsub.add_parser("stats", help="write an ADM reference batch (.npz) of an image folder or tar shards",
                            description="Stream the images of SOURCE (an image folder: its images, or one sub-folder per class; or "
                                        "tar shards as `data pack` writes them) once, centre-cropped to "
                                        "--resolution, and write OUT.npz in the format of ADM's evaluator: mu, sigma "
                                        "(Inception pool features), mu_s, sigma_s (spatial features, for sFID) and, "
                                        "with --images N, N evenly spaced images as arr_0 (for precision/recall). "
                                        "`stratagen eval RUN --reference OUT.npz` scores against it.")
    stats.add_argument("source", help="image folder or tar shards (path or fsspec URL)")
    stats.add_argument("out", help="the .npz to write (path or fsspec URL; must not exist)")
    stats.add_argument("--inception-weights", required=True, metavar="PATH",
                       help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth (local file)")
    stats.add_argument("--resolution", type=positive_int, required=True,
                       help="centre-crop size in pixels (the run's data.resolution, e.g. 256)")
    stats.add_argument("--images", type=int, default=0, metavar="N",
                       help="keep N evenly spaced images as arr_0, for precision/recall (ADM's files hold 10000; "
                            "default 0: statistics only)")
    stats.add_argument("--batch-size", type=positive_int, default=64, help="images per Inception forward")
    stats.add_argument("--device", default="auto", help="where Inception runs: auto (CUDA if available), cpu, cuda")


@verb("train")
def _train(args: argparse.Namespace) -> int:

    config = api.load(args.source, args.set)
    run = api.train(config, resume=args.resume).run
    print(f"trained: {run.url}\ntensorboard --logdir {run.path('tb')}")
    return 0


@verb("tokenize")
def _tokenize(args: argparse.Namespace) -> int:
    from stratagen.engine.devices.processes import Processes
    from stratagen.engine.training.tokenize import tokenize

    pipe = api.Pipeline.from_run(args.source, args.set, tokenizers_only=True)  # the priors may be untrained
    dataset = pipe.built.dataset(args.split)
    for tid, tokenizer in pipe.model.tokenizers.items():
        count = tokenize(pipe.run, pipe.config, tid, tokenizer, dataset, args.split, Processes(device=pipe.device),
                         pipe.model.resolution_of(tid), args.batch_size)
        print(f"{tid}: {count} images -> {pipe.run.path('tokens', tid)}")
    return 0


@verb("sample")
def _sample(args: argparse.Namespace) -> int:
    from stratagen.engine.devices.processes import launched_processes, launched_rank
    from stratagen.engine.reporting.images import check_sample_folder, save_images

    if args.caption is not None and args.classes is not None:
        raise StratagenError("sample: give --classes or --caption, not both")
    if launched_processes() > 1:  # one sampler call draws every image: process 0 makes it
        if launched_rank() != 0:
            return 0
        print("sample draws its images in one sampler call, on process 0 (eval and compare split their "
              "batches over the processes)")
    pipe = api.Pipeline.from_run(args.source, args.set)
    out = args.out or pipe.run.local_path("samples")
    check_sample_folder(out)  # before sampling
    if args.caption is None:
        classes = list(range(pipe.model.num_classes)) if args.classes is None else args.classes
        labels = [c for c in classes for _ in range(args.count)]
        output = pipe.sample(labels, seed=args.seed)
        grid = save_images(output.images, labels, out, nrow=args.count if args.count > 1 else len(classes))
    else:
        groups = [i for i in range(len(args.caption)) for _ in range(args.count)]
        # with captions the class is not read: class 0 fills the label of every image
        output = pipe.sample([0] * len(groups), seed=args.seed, captions=[args.caption[i] for i in groups])
        grid = save_images(output.images, groups, out, nrow=args.count if args.count > 1 else len(args.caption),
                           stem="caption")
        for i, caption in enumerate(args.caption):
            print(f"caption{i}: {caption}" if caption.strip() else
                  f"caption{i}: (empty: the null caption, so these images are unconditional)")
    print(f"{len(output.images)} image{'s' if len(output.images) != 1 else ''} in {out}; grid: {grid}")
    return 0


@verb("eval")
def _eval(args: argparse.Namespace) -> int:
    import json

    from stratagen.engine.devices.processes import setup_processes
    from stratagen.engine.evaluation.evaluate import adm_evaluator, evaluate_run
    from stratagen.io import checkpoint

    config = api.load(args.source, args.set)
    reference = _reference(args, config) if args.reference is not None else None
    procs = setup_processes(config.run.device)  # under torchrun: joins the group, picks this process's GPU
    adm = adm_evaluator(*reference, procs.device) if reference is not None else None
    pipe = api.Pipeline.from_config(config)
    report = evaluate_run(pipe, procs, samples=not args.tokenizers_only, adm=adm, reference_only=args.reference_only)
    if procs.is_main:
        checkpoint.write_json(pipe.run.path("eval.json"), report)
        print(json.dumps(report, indent=2))
    return 0


def _reference(args: argparse.Namespace, config: Any) -> tuple[Any, str]:
    """``eval --reference``'s reference batch and Inception weights path, checked before any work."""
    from stratagen.engine.evaluation.evaluate import read_reference

    if args.tokenizers_only:
        raise StratagenError("eval: --reference scores samples; drop --tokenizers-only")
    weights = args.inception_weights or next(
        (m.weights for m in config.eval.metrics if m.name == "inception" and m.weights is not None), None)
    return read_reference(args.reference, weights)


@verb("compare")
def _compare(args: argparse.Namespace) -> int:
    if args.check:
        print(api.check_compare(args.source, args.set).summary(args.source))
        return 0
    result = api.compare(args.source, args.set)
    if not result.written:  # a torchrun process other than rank 0
        return 1 if result.failures else 0
    with open(f"{result.dir}/results.md") as f:
        print(f.read())
    print(f"figures: {result.dir}/figures/")
    print(f"open the dashboard: tensorboard --logdir {result.dir}/tb")
    for name, message in result.failures.items():
        print(f"error: variant {name} failed: {message}")
    return 1 if result.failures else 0


@verb("convert")
def _convert(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from stratagen.io.run import replacing
    from stratagen.registry import ConfigError, get_registry

    registry = get_registry()
    model = registry.get("converter", args.converter).config  # unknown or ambiguous: one line
    fields = {k: f for k, f in model.model_fields.items() if k != "name"}
    parser = Parser(prog=f"stratagen convert {args.converter}")
    for key, field in fields.items():
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, required=field.is_required(),
                            default=field.default, help=field.description)
    parser.add_argument("out", help="run directory to write (path or fsspec URL): new or empty")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace what OUT holds (a run is replaced as a whole once the conversion succeeds)")
    options = vars(parser.parse_args(args.options))
    out, overwrite = options.pop("out"), options.pop("overwrite")
    try:
        config = model(**options)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"convert {args.converter}: --{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    with replacing(out, overwrite):  # refuses a used OUT before anything is read or written
        run = registry.build("converter", config, out=out)
    next_step = (f"sample: stratagen sample {run.url} --classes 0 --count 4" if run.load_config().sampler is not None
                 else f"evaluate the tokenizer: stratagen eval {run.url} --tokenizers-only")
    print(f"converted: {run.url}\n{next_step}")
    return 0


@verb("bench")
def _bench(args: argparse.Namespace) -> int:
    import json

    from stratagen.engine.evaluation.bench import benchmark

    result = benchmark(api.load(args.source, args.set), args.repeats, [int(b) for b in args.batches.split(",")],
                       args.parts.split(","))
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    peaks = ", ".join(f"{d} {p['start'] / 1e9:.0f} / {p['end'] / 1e9:.0f}" for d, p in result["peaks"].items())
    print(f"{result['device']}, torch {result['torch']}, {result['threads']} threads; "
          f"matmul peak GFLOP/s (start / end): {peaks}")
    print(f"{'component':<20} {'what':<22} {'batch':>5} {'dtype':<8} {'s/call':>9} {'s/image':>9} "
          f"{'GFLOP/image':>11} {'GFLOP/s':>8} {'MFU':>6}")
    for r in result["rows"]:
        print(f"{r['component']:<20} {r['what']:<22} {r['batch']:>5} {r['dtype']:<8} {r['seconds']:>9.4f} "
              f"{r['seconds_per_image']:>9.4f} {r['flops_per_image'] / 1e9:>11.3f} {r['achieved_flops'] / 1e9:>8.1f} "
              f"{r['mfu']:>6.1%}")
    return 0


@verb("info")
def _info(args: argparse.Namespace) -> int:
    built = api.build(api.load(args.source, args.set))
    model = built.model
    rows = []
    for tid, tokenizer in model.tokenizers.items():
        levels = ", ".join(f"{s.name} {s.height}x{s.width}/{s.codebook_size}"
                           for s in tokenizer.level_specs(model.resolution_of(tid)))
        owner = model.shared.get(tid)
        plugin = built.config.tokenizers[owner or tid].model.name
        note = tokenizer.describe()
        rows.append(("tokenizer", tid, plugin, 0 if owner else _count(tokenizer),
                     levels + (f" (weights of {owner})" if owner else "") + (f"; {note}" if note else "")))
    for pid, slot in model.priors.items():
        streams = slot.target + (f" | {', '.join(slot.conditions)}" if slot.conditions else "")
        rows.append(("prior", pid, built.config.priors[pid].model.name, _count(slot.prior), streams))
    for cid, slot in model.critics.items():
        rows.append(("critic", cid, built.config.critics[cid].model.name, _count(slot.critic),
                     f"{slot.target} (samples of prior {slot.prior})"))
    print(f"{'KIND':<10} {'ID':<14} {'PLUGIN':<12} {'PARAMETERS':>14}  DETAILS")
    for kind, cid, plugin, count, details in rows:
        print(f"{kind:<10} {cid:<14} {plugin:<12} {count:>14,}  {details}")
    if built.sampler is not None:
        print(f"sampler    {built.config.sampler.name} (compatible; {built.sampler.summary(model)})")
    return 0


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@verb("data")
def _data(args: argparse.Namespace) -> int:
    from fsspec.core import url_to_fs

    from stratagen.data.shards import pack_folder

    if args.data_command == "stats":
        return _data_stats(args)
    for url in (args.folder, args.out):
        try:
            url_to_fs(url)
        except ImportError as exc:  # e.g. "Install s3fs to access S3"
            raise StratagenError(f"{url}: {exc}") from None
    try:
        count, shards, left_out = pack_folder(args.folder, args.out, args.shard_size)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        raise StratagenError(f"{args.folder}: {exc}") from None
    for path in left_out:
        print(f"left out (not an image): {path}")
    print(f"{count} images in {shards} shard(s) under {args.out}")
    return 0



def _data_stats(args: argparse.Namespace) -> int:
    from fsspec.core import url_to_fs

    from stratagen.data import ImageFolder
    from stratagen.data.shards import TarShards
    from stratagen.engine.evaluation.evaluate import load_inception, reference_statistics

    if not args.out.endswith(".npz"):
        raise StratagenError(f"data stats: OUT must end in .npz, got {args.out}")
    if args.images < 0:
        raise StratagenError(f"data stats: --images must be at least 0, got {args.images}")
    try:
        fs, path = url_to_fs(args.out)
        if fs.exists(path):
            raise StratagenError(f"data stats: {args.out} exists; remove it or choose another OUT")
        try:
            dataset = TarShards(args.source, args.resolution)
        except FileNotFoundError:  # no tar shards: an image folder
            dataset = ImageFolder(args.source, args.resolution, unlabelled_ok=True)
    except ImportError as exc:  # e.g. "Install s3fs to access S3"
        raise StratagenError(f"{exc}") from None
    except (FileNotFoundError, ValueError) as exc:
        raise StratagenError(f"data stats: {exc} (or tar shards)") from None
    inception = load_inception(args.inception_weights, "data stats", args.device, args.batch_size)
    count, kept, left_out = reference_statistics(dataset, args.out, inception, args.images)
    for item in left_out:
        print(f"left out (not an image): {item}")
    print(f"{args.out}: statistics of {count} images" + (f", {kept} images as arr_0" if kept else ""))
    return 0
