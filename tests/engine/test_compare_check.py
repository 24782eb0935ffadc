"""A comparison is checked as a whole before any work: ``stratagen compare --check``, ``stratagen config
show`` on compare configs, and the refusals a real ``compare`` makes before it trains anything."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import yaml

from stratagen import api, cli
from stratagen import config as cfg
from stratagen.engine import build as build_module
from stratagen.engine.comparison import compare as compare_module
from stratagen.engine.comparison import plan as compare_plan
from stratagen.io.run import Run

REPO = Path(__file__).resolve().parents[2]
COMPARE_CONFIGS = sorted((REPO / "configs/compare").glob("*.yaml"))
DEMO = REPO / "configs/demo"


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def make_run(run_dir: Path, config_file: Path, weights: bool = True) -> None:
    """A run directory of ``config_file`` with (random) weights for every component, as training leaves it."""
    config = api.load(str(config_file), [f"run.dir={run_dir}"])
    Run(str(run_dir)).save_config(config)
    if weights:
        built = build_module.build(config)
        model = built.model
        for kind, modules in (("tokenizer", {t: m for t, m in model.tokenizers.items() if model.owns_weights(t)}),
                              ("prior", {p: s.prior for p, s in model.priors.items()}),
                              ("critic", {c: s.critic for c, s in model.critics.items()})):
            for cid, module in modules.items():
                section = {"tokenizer": config.tokenizers, "prior": config.priors, "critic": config.critics}[kind]
                Run(str(run_dir)).save_weights(kind, cid, module, section[cid].model.name, step=1)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A working directory holding what the shipped compare configs expect beside them: the demo
    StraIT-R run that `make demo` trains (read by `run:` variants) and the Inception weights file the
    paper-scale comparison names (the check only needs it to exist); and a run that was never trained."""
    root = tmp_path_factory.mktemp("check")
    make_run(root / "runs/demo/strait_r", DEMO / "strait_r.yaml")
    make_run(root / "runs/untrained", DEMO / "strait_r.yaml", weights=False)  # a run that was never trained
    (root / "weights").mkdir()
    (root / "weights/weights-inception-2015-12-05-6726825d.pth").write_bytes(b"placeholder")
    return root


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def no_training(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("compare started work before its checks")
    monkeypatch.setattr(compare_module, "train", refuse)
    monkeypatch.setattr(compare_module, "setup_processes", refuse)


@pytest.mark.parametrize("path", COMPARE_CONFIGS, ids=[p.stem for p in COMPARE_CONFIGS])
def test_every_shipped_compare_config_shows_and_checks_writing_nothing(workspace, monkeypatch, capsys, path):
    monkeypatch.chdir(workspace)
    no_training(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the paper-scale one asks for a GPU
    before = snapshot(workspace)
    code, out, err = run_cli(["config", "show", str(path)], capsys)
    assert code == 0, err
    documents = list(yaml.safe_load_all(out))
    variants = documents[0]["variants"]
    # the compare config, then one resolved run config per variant (and training seed, with train_per_seed)
    per_variant = len(documents[0]["seeds"]) if documents[0].get("train_per_seed") else 1
    assert len(documents) == 1 + per_variant * len(variants)
    for document in documents[1:]:
        assert {"run", "data", "tokenizers", "priors", "sampler", "eval"} <= set(document)
        assert document["sampler"] is not None
    code, out, err = run_cli(["compare", "--check", str(path)], capsys)
    assert code == 0, err
    assert "the comparison is valid" in out and all(f"  {name} " in out for name in variants)
    assert snapshot(workspace) == before  # nothing written, nothing trained


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_the_paper_scale_comparison_needs_a_gpu_here(workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    code, _, err = run_cli(["compare", "--check", str(REPO / "configs/compare/strait_vs_maskgit_cascade_paper.yaml")],
                           capsys)
    assert code == 2 and err == "error: metric device 'cuda': CUDA is not available here; use device: cpu\n"


def test_config_show_resolves_each_variant_beneath_the_compare_config(workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    code, out, _ = run_cli(["config", "show", str(REPO / "configs/compare/strait_vs_maskgit_cascade.yaml"),
                            "--set", "seeds=[0, 1, 2]"], capsys)
    documents = dict(zip(["compare"] + [line.split(":")[0].removeprefix("# variant ")
                                        for line in out.splitlines() if line.startswith("# variant ")],
                         yaml.safe_load_all(out)))
    assert code == 0 and documents["compare"]["seeds"] == [0, 1, 2]
    f16 = documents["MaskGIT-f16"]  # a run the cascade variant trains: its config with the variant's overrides
    assert f16["run"]["dir"] == "runs/demo/maskgit_cascade"
    assert (f16["sampler"]["name"], f16["sampler"]["stream"], f16["sampler"]["stage"]["steps"]) == (
        "maskgit", "f16.tokens", 12)
    assert "(trained by variant MaskGIT-cascade)" in out
    assert documents["StraIT-R"]["sampler"]["top"]["steps"] == 9  # defaults and extends applied


def test_check_says_what_the_comparison_will_do(workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    code, out, _ = run_cli(["compare", "--check", str(REPO / "configs/compare/strait_vs_maskgit_cascade.yaml"),
                            "--set", "seeds=[0, 1, 2]"], capsys)
    assert code == 0
    assert "sampling seeds: [0, 1, 2]; trained models: one model per variant" in out
    assert "MaskGIT-f8       run runs/demo/maskgit_cascade (trained by MaskGIT-cascade); sampler maskgit, " \
           "3 sweep points x 3 seeds x 200 images" in out
    assert "images to sample and score: 12,600" in out  # 7 variants x 3 points x 3 seeds x 200


def test_per_seed_training_reaches_the_run_variants_an_earlier_variant_trains(workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    config = cfg.load_compare_config(str(REPO / "configs/compare/strait_vs_maskgit_cascade.yaml"),
                                     ["train_per_seed=true", "seeds=[1, 2]"])
    f16 = compare_plan.resolve_variants(config)["MaskGIT-f16"]
    assert f16.trained_by == "MaskGIT-cascade"
    assert {s: (c.run.seed, c.run.dir, c.sampler.stream) for s, c in f16.run_configs.items()} == {
        1: (1, "runs/demo/maskgit_cascade-seed1", "f16.tokens"),
        2: (2, "runs/demo/maskgit_cascade-seed2", "f16.tokens")}
    code, out, _ = run_cli(["compare", "--check", str(REPO / "configs/compare/strait_vs_maskgit_cascade.yaml"),
                            "--set", "train_per_seed=true"], capsys)
    assert code == 0 and "trained models: one model per variant and seed (train_per_seed)" in out
    assert "StraIT-C         config " + str(DEMO / "strait_c.yaml") + " (trains what is missing in " \
           "runs/demo/strait_c-seed0, runs/demo/strait_c-seed1, runs/demo/strait_c-seed2)" in out
    assert "MaskGIT-f8       run runs/demo/maskgit_cascade (trained by MaskGIT-cascade: reads " \
           "runs/demo/maskgit_cascade-seed0, runs/demo/maskgit_cascade-seed1, runs/demo/maskgit_cascade-seed2)" in out


def write_compare(root: Path, name: str, variants: dict, **extra) -> Path:
    path = root / f"{name}.yaml"
    spec = {"dir": str(root / "out" / name), "variants": variants,
            "eval": {"samples_per_class": 2, "metrics": [{"name": "in-domain", "classifier_steps": 5}]}, **extra}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


STRAIT = {"config": str(DEMO / "strait_r.yaml")}
BROKEN = [
    # issue 25, item 9
    ("missing-run", {"a": STRAIT, "b": {"run": "runs/nowhere"}}, {},
     "variant b: run runs/nowhere does not exist (no config.yaml) and no variant before it trains it"),
    ("critic-sweep-without-critic", {"a": STRAIT}, {"sweeps": {"order": ["critic"]}},
     "variant a: sweeps.order = critic: the critic decode order needs a critic of stream 'vq.top'"),
    ("train-per-seed-with-runs", {"a": {"config": str(DEMO / "strait_c.yaml")}, "b": {"run": "runs/demo/strait_r"}},
     {"seeds": [0, 1], "train_per_seed": True},
     "variant b: train_per_seed trains every variant once per seed, but no variant before it trains run "
     "runs/demo/strait_r"),
    ("repeated-seed", {"a": STRAIT}, {"seeds": [0, 0]}, "seeds: seed 0 appears more than once"),
    # what else each variant needs
    ("run-before-its-trainer", {"b": {"run": "runs/demo/strait_c"}, "a": {"config": str(DEMO / "strait_c.yaml")}},
     {}, "variant b: run runs/demo/strait_c does not exist (no config.yaml) and no variant before it trains it"),
    ("untrained-run", {"a": {"run": "runs/untrained"}}, {},
     "variant a: run runs/untrained has no trained tokenizer 'vq' (runs/untrained/tokenizers/vq/model.safetensors)"),
    ("bad-variant-key", {"a": {"config": str(DEMO / "strait_r.yaml"), "set": ["sampler.top.stepz=3"]}}, {},
     f"variant a: {DEMO / 'strait_r.yaml'}: sampler.top.stepz: unknown key 'stepz'; accepted: steps, "),
    ("class-out-of-range", {"a": STRAIT}, {"eval": {"classes": [3, 12], "metrics": []}},
     "eval.classes: [3, 12] do not all exist in variant a, whose data has 10 classes"),
    ("missing-metric-weights", {"a": STRAIT}, {"eval": {"metrics": [{"name": "inception", "weights": "nope.pth"}]}},
     "metric 'inception': weights nope.pth does not exist"),
    # a run: variant's set may change sampling, not what its trained weights were trained with
    ("run-with-other-prior-width", {"a": {"run": "runs/demo/strait_r", "set": ["priors.top.model.width=64"]}}, {},
     "runs/demo/strait_r: variant a reads this run with a changed config: priors.top.model.width was 128, now 64"),
    ("run-with-swapped-tokenizer", {"a": {"run": "runs/demo/strait_r", "set": ["tokenizers.vq.model.name=vqgan2-c"]}},
     {}, "variant a: runs/demo/strait_r/config.yaml: tokenizers.vq.model: vqgan2-c takes fusion 'concat' or 'concat-stem', not 'residual'"),
]


#: what `config show` also refuses: it resolves configs (weights, components and metrics are compare's checks)
RESOLVED = {"missing-run", "train-per-seed-with-runs", "repeated-seed", "run-before-its-trainer", "bad-variant-key"}
CASES = [(how, *row) for row in BROKEN for how in (["compare", "--check"], ["compare"], ["config", "show"])
         if how[0] == "compare" or row[0] in RESOLVED]


@pytest.mark.parametrize("how, name, variants, extra, fragment", CASES,
                         ids=[f"{' '.join(case[0])}-{case[1]}" for case in CASES])
def test_a_broken_comparison_is_one_line_before_any_work(workspace, tmp_path, monkeypatch, capsys, how, name,
                                                          variants, extra, fragment):
    monkeypatch.chdir(workspace)
    no_training(monkeypatch)
    path = write_compare(tmp_path, name, variants, **extra)
    before = snapshot(workspace), snapshot(tmp_path)
    code, out, err = run_cli([*how, str(path)], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in err and len(errors) == 1, err
    assert fragment in errors[0], errors[0]
    assert (snapshot(workspace), snapshot(tmp_path)) == before and not (tmp_path / "out").exists()
