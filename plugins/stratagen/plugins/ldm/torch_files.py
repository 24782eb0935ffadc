"""Read PyTorch checkpoint files a user hands in without running their pickled code.

``torch.load(weights_only=True)`` rebuilds tensors, containers and numbers only; the types
named in ``allowed`` (e.g. LlamaGen's ``argparse.Namespace`` of training arguments) are
allowlisted for this one call, and anything else (a class, a function, a payload whose
``__reduce__`` would run code) refuses the whole file with one line.
"""
from __future__ import annotations

import pickle
import re
from typing import Any, Sequence

import fsspec
import torch

from stratagen.registry import StratagenError


def load_torch_file(url: str, allowed: Sequence[type] = ()) -> Any:
    """The object saved in the PyTorch file at ``url`` (path or fsspec URL), on the CPU.

    Raises StratagenError (one line) for a file that holds any global beyond tensors, plain
    containers and ``allowed``, or that is not a PyTorch file.
    """
    accepted = ", ".join(f"{t.__module__}.{t.__qualname__}" for t in allowed)
    try:
        # streamed from the (seekable) file: a multi-GB checkpoint is not held twice in memory
        with fsspec.open(url, "rb") as file, torch.serialization.safe_globals(list(allowed)):
            return torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StratagenError(f"{url}: file not found") from None
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:
            raise StratagenError(f"{url}: not a PyTorch checkpoint ({_first_line(exc)})") from None
        raise StratagenError(f"{url}: refused, it holds {found.group(1)}, which is not a tensor"
                             f"{', container or ' + accepted if accepted else ' or container'}; "
                             "stratagen never unpickles other objects") from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise StratagenError(f"{url}: not a PyTorch checkpoint ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    """The reason in torch's message (its advice to load with ``weights_only=False`` left out)."""
    text = str(exc).strip()
    reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if reason:
        return reason.group(1).strip()
    return type(exc).__name__ if not text or text.startswith("Weights only load failed") else text.splitlines()[0]
