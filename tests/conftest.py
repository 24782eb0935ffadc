"""Shared fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest

from tinyconfigs import tiny_config, write_config


@pytest.fixture
def tiny(tmp_path):
    """Factory: ``tiny(variant)`` -> path of a written tiny config (see tinyconfigs.tiny_config)."""
    def make(variant: str = "maskgit", name: str = "config.yaml") -> Path:
        return write_config(tmp_path / name, tiny_config(tmp_path / f"run-{variant}", variant))
    return make
