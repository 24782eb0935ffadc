"""The example third-party plugin (examples/stratagen-example-plugin), installed as a real distribution."""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "stratagen-example-plugin"
DEMO_CONFIG = ROOT / "configs" / "demo" / "maskgit_f16.yaml"
STRATAGEN = str(Path(sys.executable).with_name("stratagen"))
ENV = {k: v for k, v in os.environ.items() if not k.startswith("STRATAGEN_")}


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, timeout=300,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([STRATAGEN, *args], env=ENV, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def example():
    """Install the example into this venv for the module; the process-wide registry is reloaded."""
    from stratagen.registry import manager

    if importlib.util.find_spec("hatchling") is None:
        pip("install", "-q", "hatchling==1.33.0")
    pip("install", "--no-deps", "--no-build-isolation", "-q", str(EXAMPLE))
    importlib.invalidate_caches()
    patch = pytest.MonkeyPatch()
    patch.setattr(manager, "_default", None)  # it may have been loaded before the install
    try:
        yield importlib.import_module("stratagen_example")
    finally:
        patch.undo()
        sys.modules.pop("stratagen_example", None)
        pip("uninstall", "-y", "-q", "stratagen-example")
        importlib.invalidate_caches()


@pytest.fixture(scope="module")
def clis(example, tmp_path_factory):
    """``stratagen train`` of a tiny demo run (quartic schedule, dependency-order sampler), run
    alongside ``stratagen plugins --json`` and ``stratagen config show`` to save time."""
    where = tmp_path_factory.mktemp("example_run")
    config = {
        "extends": str(DEMO_CONFIG),
        "run": {"dir": str(where / "run"), "device": "cpu"},
        "data": {"train_size": 64, "eval_size": 16},
        "tokenizers": {"vq": {"train": {"steps": 3, "batch_size": 8}}},
        "priors": {"main": {"mask_schedule": "quartic",
                            "model": {"width": 32, "depth": 1, "heads": 2, "mlp_dim": 64},
                            "train": {"steps": 3, "batch_size": 8}}},
        "sampler": {"name": "dependency-order", "stage": {"steps": 4}},
    }
    path = where / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    commands = {"train": ["train", str(path)], "plugins": ["plugins", "--json"], "show": ["config", "show", str(path)]}
    procs = {key: subprocess.Popen([STRATAGEN, *args], env=ENV, cwd=where, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for key, args in commands.items()}
    results = {}
    for key, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[key] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    results["run"] = where / "run"
    return results


@pytest.fixture(scope="module")
def run_dir(clis):
    assert clis["train"].returncode == 0, clis["train"].stderr
    return clis["run"]


# ----------------------------------------------------------------------------- discovery
def test_cli_lists_the_example_components(clis):
    done = clis["plugins"]
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    found = {(r["kind"], r["name"]): (r["distribution"], r["version"], r["plugin"]) for r in listing["components"]}
    assert found[("schedule", "quartic")] == ("stratagen-example", "0.1.0", "example")
    assert found[("sampler", "dependency-order")] == ("stratagen-example", "0.1.0", "example")
    assert [f for f in listing["failures"] if f["distribution"] == "stratagen-example"] == []


def test_quartic_schedule(example):
    from stratagen.registry import MaskSchedule, get_registry

    schedule = get_registry().build("schedule", "quartic")
    assert isinstance(schedule, MaskSchedule) and schedule.name == "quartic"
    values = schedule(torch.tensor([0.0, 0.5, 1.0]), 64)
    assert values.tolist() == [1.0, 0.9375, 0.0]
    assert schedule(torch.tensor([-0.5, 1.5]), 64).tolist() == [1.0, 0.0]  # clamped


# ----------------------------------------------------------------------------- end to end
def test_config_show_names_the_sampler(clis):
    done = clis["show"]
    assert done.returncode == 0, done.stderr
    shown = yaml.safe_load(done.stdout)
    assert shown["sampler"]["name"] == "dependency-order"
    assert shown["sampler"]["stage"]["steps"] == 4
    assert shown["priors"]["main"]["mask_schedule"] == "quartic"


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """What ``save_image`` writes for images in [-1, 1]: ``[B, H, W, 3]`` uint8."""
    scaled = (images.float().clamp(-1, 1) * 0.5 + 0.5).mul(255).add(0.5).clamp(0, 255)
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_train_and_sample_cli_and_api(run_dir, example):
    from stratagen.api import Pipeline
    from stratagen.plugins.maskgit import MaskGITSampler

    run = run_dir
    out = run / "samples"
    done = cli("sample", str(run), "--classes", "0,1", "--seed", "3")
    assert done.returncode == 0, done.stderr
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["class0_0000.png", "class1_0001.png", "grid.png"]

    pipe = Pipeline.from_run(str(run))
    sampler = pipe.sampler()
    assert isinstance(sampler, example.DependencyOrderSampler)
    first = pipe.sample([0, 1], seed=3)
    again = pipe.sample([0, 1], seed=3)
    other = pipe.sample([0, 1], seed=4)
    assert first.images.shape == (2, 3, 32, 32)
    assert first.steps == 4 and list(first.tokens) == ["vq.tokens"]
    assert torch.equal(first.images, again.images) and torch.equal(first.tokens["vq.tokens"], again.tokens["vq.tokens"])
    assert not torch.equal(first.tokens["vq.tokens"], other.tokens["vq.tokens"])
    assert not torch.equal(first.images, other.images)

    # the CLI wrote the same images as the API for the same seed
    written = np.stack([np.asarray(Image.open(out / name).convert("RGB")) for name in pngs[:2]])
    assert np.abs(written.astype(int) - to_uint8(first.images).astype(int)).max() <= 1

    # on a one-level model it is the maskgit sampler: same stream, same settings, same images
    maskgit = MaskGITSampler(stage=sampler.stage)
    assert torch.equal(pipe.sample([0, 1], seed=3, sampler=maskgit).images, first.images)


# ----------------------------------------------------------------------------- multi-level models
class TwoLevelTokenizer:
    """Stands in for a two-level tokenizer (``top``, ``bottom``) that needs both levels to decode."""

    level_names = ("top", "bottom")

    def can_decode(self, levels: set[str]) -> bool:
        return levels == set(self.level_names)


def slots(*streams: tuple[str, str, tuple[str, ...]]):
    from stratagen.registry import PriorSlot

    return {pid: PriorSlot(prior=None, target=target, conditions=conditions) for pid, target, conditions in streams}


def model_of(tokenizers, priors):
    from stratagen.registry import GenerativeModel

    return GenerativeModel(tokenizers=tokenizers, priors=priors, resolution=32, num_classes=10)


def test_order_follows_dependencies_not_config_order(example):
    sampler = example.DependencyOrderSampler()
    model = model_of({"t": TwoLevelTokenizer()}, slots(
        ("bottom", "t.bottom", ("t.top",)),
        ("top", "t.top", ()),
    ))
    sampler.check(model)
    assert [s.stream for s in sampler.stages(model)] == ["t.top", "t.bottom"]
    assert all(s.settings is sampler.stage for s in sampler.stages(model))
    assert sampler.output_tokenizer(model) == "t"

    cascade = model_of({"f16": TwoLevelTokenizer(), "f8": TwoLevelTokenizer()}, slots(
        ("up", "f8.bottom", ("f8.top", "f16.bottom")),
        ("f8top", "f8.top", ("f16.bottom",)),
        ("f16b", "f16.bottom", ("f16.top",)),
        ("f16t", "f16.top", ()),
    ))
    assert sampler.order(cascade) == ["f16.top", "f16.bottom", "f8.top", "f8.bottom"]
    sampler.check(cascade)


def test_check_refuses_cycles_missing_conditions_and_undecodable_levels(example):
    from stratagen.registry import IncompatibleComponentsError

    sampler = example.DependencyOrderSampler()
    two = {"t": TwoLevelTokenizer()}
    with pytest.raises(IncompatibleComponentsError, match=r"form a cycle.*: a -> b -> a$"):
        sampler.check(model_of(two, slots(("a", "t.top", ("t.bottom",)), ("b", "t.bottom", ("t.top",)))))
    with pytest.raises(IncompatibleComponentsError, match=r"prior 'b' is conditioned on \['t.top'\], which no prior"):
        sampler.check(model_of(two, slots(("b", "t.bottom", ("t.top",)))))
    with pytest.raises(IncompatibleComponentsError, match=r"cannot decode the generated levels \['top'\]"):
        sampler.check(model_of(two, slots(("a", "t.top", ()))))
    with pytest.raises(IncompatibleComponentsError, match="needs at least one prior"):
        sampler.check(model_of(two, {}))


def test_samples_a_two_stage_cascade(example):
    """Two real tokenizers and priors: the second prior attends to the first stream."""
    from stratagen.registry import StageSettings
    from stratagen.plugins.maskgit.prior import MaskedTokenTransformer
    from stratagen.plugins.vqgan import VQGANConfig
    from stratagen.registry import PriorSlot, get_registry

    torch.manual_seed(0)
    registry = get_registry()
    tokenizers = {
        tid: registry.build("tokenizer", VQGANConfig(factor=factor, channels=8, channel_mult=(1,) * (levels + 1),
                                                     num_res_blocks=1, codebook_size=16, embedding_dim=4,
                                                     loss={"gan_weight": 0.0}), resolution=16).eval()
        for tid, factor, levels in (("coarse", 8, 3), ("fine", 4, 2))
    }
    coarse = tokenizers["coarse"].level_specs(16)[0]
    fine = tokenizers["fine"].level_specs(16)[0]
    size = dict(depth=1, width=16, heads=2, mlp_dim=32, dropout=0.0, num_classes=3)
    model = model_of(tokenizers, {
        "f": PriorSlot(MaskedTokenTransformer(target=fine, conditions=[coarse], **size).eval(),
                       "fine.tokens", ("coarse.tokens",)),
        "c": PriorSlot(MaskedTokenTransformer(target=coarse, **size).eval(), "coarse.tokens", ()),
    })
    model.resolution = 16
    sampler = example.DependencyOrderSampler(stage=StageSettings(steps=3, schedule="quartic"))
    labels = torch.tensor([0, 2])
    out = sampler.sample(model, labels, torch.Generator().manual_seed(0))
    assert list(out.tokens) == ["coarse.tokens", "fine.tokens"]
    assert out.tokens["coarse.tokens"].shape == (2, 2, 2) and out.tokens["fine.tokens"].shape == (2, 4, 4)
    assert out.steps == 6
    assert out.images.shape == (2, 3, 16, 16)
    assert torch.equal(out.images, tokenizers["fine"].decode({"tokens": out.tokens["fine.tokens"]}))

    # a known coarse stream (canvas) is kept, and only the fine stream is decoded
    known = {"coarse.tokens": out.tokens["coarse.tokens"]}
    partial = sampler.sample(model, labels, torch.Generator().manual_seed(1), canvas=known)
    assert torch.equal(partial.tokens["coarse.tokens"], known["coarse.tokens"])
    assert partial.steps == 3
