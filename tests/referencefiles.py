"""ADM reference batches for tests: a well-formed statistics-only one, and one whose ``mu`` is a pickled
object array that runs code when unpickled."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np

from weightfiles import CarriesCode


def statistics(**override) -> dict[str, np.ndarray]:
    """The four arrays of a reference batch (zero means, identity covariances); ``key=None`` drops one."""
    arrays = {"mu": np.zeros(2048), "sigma": np.eye(2048, dtype=np.float32), "mu_s": np.zeros(2023),
              "sigma_s": np.eye(2023, dtype=np.float32)}
    arrays.update(override)
    return {k: v for k, v in arrays.items() if v is not None}


def write_npz_with_code(path: Path, marker: Path) -> Path:
    """A reference batch at ``path`` whose ``mu`` is an object array; unpickling it creates ``marker``."""
    with zipfile.ZipFile(path, "w") as archive:  # what np.savez writes for an object array, by hand
        for key, value in statistics(mu=None).items():
            with archive.open(f"{key}.npy", "w") as member:
                np.lib.format.write_array(member, value)
        with archive.open("mu.npy", "w") as member:
            np.lib.format.write_array_header_1_0(member, {"descr": "|O", "fortran_order": False, "shape": (1,)})
            member.write(pickle.dumps([CarriesCode(marker)]))
    return path
