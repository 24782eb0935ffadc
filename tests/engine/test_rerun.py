"""Re-running finished work: every compare config's variants, trained in order and then run again,
pass the resume check (several configs share one run directory, e.g. a critic variant adds critics
to a run), and a finished compare run twice trains nothing the second time."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import stratagen.engine.training.train as train_module
from stratagen import api
from stratagen import config as cfg
from stratagen.engine.comparison import compare as compare_module
from stratagen.engine.training.resume import check_unchanged
from stratagen.io.run import Run
from tinyconfigs import TINY_TRAIN, tiny_config, write_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
#: the compare configs that train (the others only load runs: they pass no resume check)
COMPARE_CONFIGS = [p for p in sorted(CONFIGS.glob("compare/*.yaml"))
                   if any("config" in v for v in yaml.safe_load(p.read_text())["variants"].values())]
CRITIC = {"name": "token-critic", "depth": 1, "width": 32, "heads": 2, "mlp_dim": 64, "dropout": 0.0}


def components(config) -> list[tuple[str, str]]:
    """(kind, id) of every component with weights of its own (a shared tokenizer has none)."""
    return ([("tokenizer", t) for t, e in config.tokenizers.items() if e.share is None]
            + [("prior", p) for p in config.priors] + [("critic", c) for c in config.critics])


@pytest.mark.parametrize("path", COMPARE_CONFIGS, ids=[p.stem for p in COMPARE_CONFIGS])
def test_every_compare_config_reruns_past_the_resume_check(path, tmp_path):
    """What training records (the run's config, each component's own) as each variant is trained in
    the compare file's order, then the whole compare again: no resume check may refuse."""
    compare = cfg.load_compare_config(str(path))
    runs: dict[str, str] = {}  # each configured run directory -> one under tmp_path (shared stays shared)
    configs = []
    for variant in compare.variants.values():
        if variant.config is None:
            continue
        config = cfg.load_config(variant.config, variant.set)
        config.run.dir = runs.setdefault(config.run.dir, str(tmp_path / f"run{len(runs)}"))
        configs.append(config)
    trained: dict[str, set[tuple[str, str]]] = {}
    for config in configs:  # the first time: components not trained yet are trained (and recorded)
        run, done = Run(config.run.dir), trained.setdefault(config.run.dir, set())
        check_unchanged(run, config, [c for c in components(config) if c in done])
        run.save_config(config)
        for kind, cid in components(config):
            if (kind, cid) not in done:
                run.save_config(config, kind, cid)
                done.add((kind, cid))
    for config in configs:  # the second time: everything is trained
        check_unchanged(Run(config.run.dir), config, components(config))
        Run(config.run.dir).save_config(config)


def test_a_finished_compare_reruns_without_training(tmp_path, monkeypatch):
    """Two variants share one run (the second adds a critic); the second compare trains nothing and
    reports no failure (the shape of `make demo` run twice)."""
    base = tiny_config(tmp_path / "runs/strait", "strait")
    for section in (base["tokenizers"]["vq"], base["priors"]["top"], base["priors"]["bottom"]):
        section["train"]["steps"] = 2
    write_config(tmp_path / "strait.yaml", base)
    write_config(tmp_path / "critic.yaml", {
        "extends": "strait.yaml",
        "critics": {"c": {"prior": "top", "model": dict(CRITIC), "train": dict(TINY_TRAIN, steps=2)}},
        "sampler": {"top": {"order": "critic"}}})
    (tmp_path / "compare.yaml").write_text(yaml.safe_dump({
        "dir": str(tmp_path / "out"), "device": "cpu",
        "variants": {"plain": {"config": "strait.yaml"}, "critic": {"config": "critic.yaml"}},
        "eval": {"samples_per_class": 1, "batch_size": 4,
                 "metrics": [{"name": "in-domain", "classifier_steps": 2, "batch_size": 4, "kid_subset_size": 2}]}}))
    first = compare_module.compare(str(tmp_path / "compare.yaml"))
    assert not first.failures, first.failures

    def must_not_train(*args, **kwargs):
        raise AssertionError("finished work was retrained")

    monkeypatch.setattr(train_module, "fit", must_not_train)
    again = compare_module.compare(str(tmp_path / "compare.yaml"))
    assert not again.failures, again.failures
    assert {r["variant"] for r in again.rows} == {"plain", "critic"}
    # and each training command alone, in either order, resumes the shared run; also a run written
    # before the components' own config records (the run's config.yaml is then kept for them)
    for record in (tmp_path / "runs/strait").glob("*/*/config.yaml"):
        record.unlink()
    for name in ("critic.yaml", "strait.yaml", "critic.yaml"):
        api.train(api.load(str(tmp_path / name)), resume=True)
