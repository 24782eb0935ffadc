"""Shared fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest

from tinyconfigs import SHARD_SIZE, tiny_config, write_config


@pytest.fixture
def tiny(tmp_path):
    """Factory: ``tiny(variant)`` -> path of a written tiny config (see tinyconfigs.tiny_config)."""
    def make(variant: str = "maskgit", name: str = "config.yaml") -> Path:
        return write_config(tmp_path / name, tiny_config(tmp_path / f"run-{variant}", variant))
    return make


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A tiny maskgit run trained once per session (2 steps each); copy it before changing it."""
    from stratagen import api

    root = tmp_path_factory.mktemp("trained")
    config = tiny_config(root / "run")
    config["tokenizers"]["vq"]["train"]["steps"] = 2
    config["priors"]["main"]["train"]["steps"] = 2
    api.train(api.load(str(write_config(root / "c.yaml", config))))
    return root / "run"


@pytest.fixture(scope="session")
def sharded_run(tmp_path_factory) -> Path:
    """A tiny maskgit run trained without interruption, its token cache in 4 shards; copy it before
    changing it."""
    import stratagen.engine.training.tokenize as tokenize_module
    from stratagen import api

    root = tmp_path_factory.mktemp("sharded")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tokenize_module, "SHARD_SIZE", SHARD_SIZE)
        api.train(api.load(str(write_config(root / "c.yaml", tiny_config(root / "run")))))
    return root / "run"
