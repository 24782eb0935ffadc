"""What makes VQGAN2-R's top level the image's stem: level-swap numbers along training, per option.

    nice -n 10 .venv/bin/python benchmarks/level_study.py --work /tmp/level_study \
        --out benchmarks/results/level_study.md

StraIT's tokenizer claim (§3.1) is that VQGAN2-R's top level carries the image's stem (layout,
coarse shapes) and the bottom level the detail. The level-swap test of ``stratagen eval``
(``swap_keep_top_psnr``: decode(top A, bottom B) against A; ``swap_keep_bottom_psnr``:
decode(top B, bottom A) against A; ``swap_other_psnr``: B itself against A; ``top_only_psnr``: the
top level decoded alone) measures which level carries it. This study trains the demo VQGAN2-R
(``configs/demo/strait_r.yaml``, tokenizer only) at 64 px (top 8x8, bottom 16x16) on synthetic data
whose layout varies per image (position jitter +-0.25, size +-0.35), and evaluates it at several
training lengths, for the paper's recipe and for options that are not the paper's but are the
usual ways to make a coarse level carry the image:

- ``paper``: the recipe as configured (shared codebook, plain residual fusion);
- ``paper, template data``: the same on the demo's data (jitter +-0.06 / +-0.15), for contrast;
- ``zero-init fusion``: the residual fusion starts at zero (the decoder first decodes the top alone);
- ``bottom dropout 0.5``: each image's bottom residual dropped with probability 0.5 in training;
- ``top-only term 1.0``: plus MSE(decode(top alone), image) in the loss;
- ``small bottom codebook``: a separate bottom codebook of 64 codes (Table 8's separate codebooks,
  smaller than the shared 256).

Training lengths: the run is trained to the first length, evaluated, then extended (``train --resume``
with ``steps`` raised continues from the final checkpoint with its optimizer state; README "Training
longer"); with the constant learning rate of the demo recipe that is the same training as one longer
run. Finished runs and evaluations under ``--work`` are reused, so an interrupted study continues.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


CONFIG = "configs/demo/strait_r.yaml"
BASE = ["priors.top=null", "priors.bottom=null", "sampler=null", "data.resolution=64",
        "data.train_size=4000", "data.eval_size=500", "tokenizers.vq.train.checkpoint_every=100000",
        "tokenizers.vq.train.image_every=100000"]
LAYOUT = ["data.position_jitter=0.25", "data.size_jitter=0.35"]
OPTIONS: dict[str, list[str]] = {
    "paper": LAYOUT,
    "paper, template data": [],
    "zero-init fusion": LAYOUT + ["tokenizers.vq.model.zero_init_fusion=true"],
    "bottom dropout 0.5": LAYOUT + ["tokenizers.vq.model.bottom_dropout=0.5"],
    "top-only term 1.0": LAYOUT + ["tokenizers.vq.model.top_only_weight=1.0"],
    "small bottom codebook": LAYOUT + ["tokenizers.vq.model.bottom_codebook_size=64"],
}
COLUMNS = ("psnr", "swap_keep_top_psnr", "swap_keep_bottom_psnr", "swap_other_psnr", "top_only_psnr",
           "ppl_dataset_top", "ppl_dataset_bottom")


def stratagen(*args: str) -> None:
    subprocess.run([str(Path(sys.executable).with_name("stratagen")), *args], check=True)


def measure(name: str, overrides: list[str], steps: list[int], work: Path) -> dict[int, dict[str, float]]:
    """Train one option to each length in turn and evaluate it there: ``{steps: eval.json tokenizer entry}``."""
    run_dir = work / name.replace(",", "").replace(" ", "_").replace(".", "")
    results = {}
    for length in steps:
        report = run_dir / f"eval-{length}.json"
        if not report.exists():
            sets = [f"run.dir={run_dir}", *BASE, *overrides, f"tokenizers.vq.train.steps={length}"]
            start = time.perf_counter()
            stratagen("train", CONFIG, *[a for s in sets for a in ("--set", s)],
                      *(["--resume"] if run_dir.exists() else []))
            print(f"{name}: trained to {length} steps ({time.perf_counter() - start:.0f} s)", flush=True)
            stratagen("eval", str(run_dir), "--tokenizers-only")
            shutil.copy(run_dir / "eval.json", report)
        results[length] = json.loads(report.read_text())["tokenizers"]["vq"]
    return results


def table(rows: dict[str, dict[int, dict[str, float]]]) -> str:
    def cell(r: dict[str, float], key: str) -> str:
        if key not in r:
            return "-"
        spread = r.get(f"{key}_image_std")
        return f"{r[key]:.2f}" + (f" ± {spread:.2f}" if spread is not None else "")

    lines = ["| option | steps | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for name, by_steps in rows.items():
        for length, r in by_steps.items():
            lines.append(f"| {name} | {length} | " + " | ".join(cell(r, k) for k in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/level_study")
    parser.add_argument("--steps", type=int, nargs="+", default=[250, 500, 1000])
    parser.add_argument("--only", nargs="*", choices=list(OPTIONS), help="these options only")
    parser.add_argument("--out", help="also write the table (markdown) here")
    args = parser.parse_args()
    rows = {name: measure(name, OPTIONS[name], sorted(args.steps), Path(args.work))
            for name in (args.only or OPTIONS)}
    text = table(rows)
    print(text)
    if args.out:
        command = " ".join(["python", "benchmarks/level_study.py", *sys.argv[1:]])
        Path(args.out).write_text(
            "# What makes VQGAN2-R's top level the image's stem (level-swap numbers along training)\n\n"
            f"Made by `{command}` (see the script's docstring for the options and the data). PSNR in dB to "
            "image A over the 500 eval images (± std over images); `swap_keep_top_psnr`: decode(top A, "
            "bottom B); `swap_keep_bottom_psnr`: decode(top B, bottom A); `swap_other_psnr`: B itself; "
            "`top_only_psnr`: the top level alone; `ppl_dataset_*`: codebook perplexity per level over the "
            "eval set.\n\n" + text)


if __name__ == "__main__":
    main()
