"""How close are converted official VAR and LlamaGen checkpoints to the official code? The largest
errors against the fixtures the official code produced (../shared/fixtures/var-llamagen-official).

    .venv/bin/python benchmarks/official_parity.py [--fixtures DIR]

Converts both fixtures into a temporary folder with the ``var-official`` and ``llamagen-vq``
converters, then prints, per family: token ids equal (every scale), the largest absolute logit
error (teacher forcing), decoded-image error, and, for VAR, whether the sampled tokens of the
fixture's seed are identical and the sampled image's error. The tests
(tests/plugins/test_var_llamagen_official.py) hold these to 1e-4.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from stratagen import api
from stratagen.plugins.ldm import convert_llamagen_vq, convert_var_official


def grids(io: dict[str, np.ndarray], prefix: str) -> list[torch.Tensor]:
    """The fixture's ids ``[B, p^2]`` of every scale as grids ``[B, p, p]``."""
    ids = [torch.from_numpy(io[f"{prefix}_s{k}"]) for k in range(sum(key.startswith(f"{prefix}_s") for key in io))]
    return [t.view(t.shape[0], round(t.shape[1] ** 0.5), -1) for t in ids]


def largest(a: torch.Tensor, b: np.ndarray) -> float:
    return float((a - torch.from_numpy(b)).abs().max())


@torch.no_grad()
def var_parity(folder: Path, work: Path) -> dict[str, object]:
    fixture, io = json.loads((folder / "config.json").read_text()), dict(np.load(folder / "io.npz"))
    convert_var_official(vae=str(folder / "vae.pth"), var=str(folder / "var.pth"),
                         patch_nums=",".join(map(str, fixture["patch_nums"])), data_root="unused",
                         guidance_scale=fixture["cfg"], top_k=fixture["top_k"], top_p=fixture["top_p"],
                         out=str(work / "var"))
    pipe = api.Pipeline.from_run(str(work / "var"))
    tokenizer, prior = pipe.model.tokenizers["vq"], pipe.model.priors["main"].prior
    official = grids(io, "idx")
    encoded = tokenizer.encode(torch.from_numpy(io["images"]))
    sampled = pipe.sampler().sample(pipe.model, torch.from_numpy(io["sample_labels"]),
                                    torch.Generator().manual_seed(fixture["g_seed"]))
    return {
        "ids_equal_every_scale": all(torch.equal(encoded[n], g) for n, g in zip(tokenizer.level_names, official)),
        "logits": largest(prior.logits(prior.teacher_inputs(official), torch.from_numpy(io["labels"])), io["logits"]),
        "decoded": largest(tokenizer.decode(dict(zip(tokenizer.level_names, official))).clamp(-1, 1), io["decoded"]),
        "sampled_tokens_equal": all(torch.equal(t, g) for t, g in zip(sampled.tokens.values(), grids(io, "sample_idx"))),
        "sampled_image": largest((sampled.images.clamp(-1, 1) + 1) / 2, io["sample_image"]),
    }


@torch.no_grad()
def llamagen_parity(folder: Path, work: Path) -> dict[str, object]:
    fixture, io = json.loads((folder / "config.json").read_text()), dict(np.load(folder / "io.npz"))
    convert_llamagen_vq(checkpoint=str(folder / "vq.pt"), resolution=fixture["image_size"], data_root="unused",
                        num_classes=1, config=None, out=str(work / "llamagen"))
    tokenizer = api.Pipeline.from_run(str(work / "llamagen")).model.tokenizers["vq"]
    indices = torch.from_numpy(io["indices"])
    return {"ids_equal": torch.equal(tokenizer.encode(torch.from_numpy(io["images"]))["tokens"], indices),
            "decoded": largest(tokenizer.decode({"tokens": indices}), io["decoded"])}


def main() -> None:
    default = next((p / "shared/fixtures/var-llamagen-official" for p in Path(__file__).resolve().parents
                    if (p / "shared/fixtures/var-llamagen-official").is_dir()), None)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, default=default, required=default is None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        print(json.dumps({"var": var_parity(args.fixtures / "var", Path(work)),
                          "llamagen": llamagen_parity(args.fixtures / "llamagen", Path(work))}, indent=1))


if __name__ == "__main__":
    main()
