"""Tokenizer recipe options at demo scale: reconstruction PSNR, per-level perplexity and codebook usage.

    nice -n 10 .venv/bin/python benchmarks/tokenizer_options.py --work /tmp/tokenizer_options

Trains the demo VQGAN2-R tokenizer (``configs/demo/strait_r.yaml``, its priors and sampler removed)
once per option on the same data for the same steps, evaluates it on the eval split with
``stratagen eval --tokenizers-only`` and prints one markdown row per option. The options are the
paper-fidelity readings of the README ("Paper fidelity"), each added to the one before:

- ``sgd``: Table 11 read literally, plain SGD at 1e-4, Euclidean codes (the paper configs before);
- ``adam``: official MaskGIT's optimizer, Adam with betas (0, 0.99) at 1e-4;
- ``adam+l2``: l2-normalized codes (ViT-VQGAN), as the paper configs now set;
- ``adam+l2+entropy``: plus MaskGIT's codebook entropy loss (weight 0.1);

and the demo's own recipe (Adam 2e-3, betas (0.5, 0.9)) with Euclidean codes, l2 codes and l2 codes
with the entropy loss. No option trains the GAN: at 32 px StyleGAN's filter table is 512 channels
in every stage (21,523,457 parameters, 16x the convolution FLOPs of the 128-channel layout's
1,350,401), and a discriminator step with R1 then costs tens of seconds on this 2-core CPU, so the
discriminator's size is not measured at demo scale. Runs already finished under ``--work`` are
reused.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CONFIG = "configs/demo/strait_r.yaml"
TOKENIZER_ONLY = ["priors.top=null", "priors.bottom=null", "sampler=null"]
PAPER_RECIPE = ["tokenizers.vq.train.lr=1e-4"]
ADAM = ["tokenizers.vq.train.optimizer=adam", "tokenizers.vq.train.betas=[0.0,0.99]"]
L2 = ["tokenizers.vq.model.l2_normalized_codes=true"]
ENTROPY = ["tokenizers.vq.model.entropy_loss_weight=0.1"]
OPTIONS: dict[str, list[str]] = {
    "sgd": PAPER_RECIPE + ["tokenizers.vq.train.optimizer=sgd"],
    "adam": PAPER_RECIPE + ADAM,
    "adam+l2": PAPER_RECIPE + ADAM + L2,
    "adam+l2+entropy": PAPER_RECIPE + ADAM + L2 + ENTROPY,
    "demo recipe": [],
    "demo recipe+l2": L2,
    "demo recipe+l2+entropy": L2 + ENTROPY,
}
LEVELS = ("top", "bottom")


def stratagen(*args: str) -> None:
    subprocess.run([str(Path(sys.executable).with_name("stratagen")), *args], check=True)


def measure(name: str, overrides: list[str], work: Path) -> dict[str, float]:
    """Train (unless finished) and evaluate one option; its ``eval.json`` tokenizer entry."""
    run_dir = work / name.replace("+", "_").replace(" ", "_")
    sets = [f"run.dir={run_dir}", *TOKENIZER_ONLY, *overrides]
    if not (run_dir / "eval.json").exists():
        stratagen("train", CONFIG, *[a for s in sets for a in ("--set", s)],
                  *(["--resume"] if run_dir.exists() else []))
        stratagen("eval", str(run_dir), "--tokenizers-only")
    return json.loads((run_dir / "eval.json").read_text())["tokenizers"]["vq"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/tokenizer_options")
    parser.add_argument("--only", nargs="*", choices=list(OPTIONS), help="measure these options only")
    args = parser.parse_args()
    work = Path(args.work)
    rows = {name: measure(name, OPTIONS[name], work) for name in (args.only or OPTIONS)}
    header = "| option | PSNR (dB) | rFID (in-domain) | " + " | ".join(f"ppl {lv} | usage {lv}" for lv in LEVELS) + " |"
    print(header)
    print("|" + "---|" * (3 + 2 * len(LEVELS)))
    for name, r in rows.items():
        cells = [f"{r[f'ppl_{lv}']:.1f} | {r[f'usage_{lv}']:.2f}" for lv in LEVELS]
        print(f"| {name} | {r['psnr']:.2f} | {r['rfid']:.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
