"""A weights file that carries code, for the tests that check no user file is ever unpickled."""
from __future__ import annotations

from pathlib import Path

import torch


class CarriesCode:
    """Unpickling this object creates the file ``path``."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def write_pickle_with_code(path: Path, marker: Path) -> Path:
    """A PyTorch weights file at ``path`` whose unpickling creates ``marker``."""
    torch.save({"features.0.weight": torch.zeros(1), "payload": CarriesCode(marker)}, path)
    return path
