"""Checkpoint IO: safetensors plus JSON metadata, through fsspec, written atomically.

Nothing here unpickles: tensors come from safetensors, everything else from JSON.
"""
from __future__ import annotations

import contextlib
import json
import re
import uuid
from typing import Any, Iterator, Mapping, Sequence

import fsspec
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from stratagen.registry import StratagenError

TEMPORARY = ".tmp-"  # infix of the temporary files of atomic writes


def _fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(url)


def exists(url: str) -> bool:
    fs, path = _fs(url)
    return fs.exists(path)


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` atomically (:func:`atomic_open`)."""
    with atomic_open(url) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_open(url: str) -> Iterator[Any]:
    """A binary file to write, a temporary sibling of ``url`` moved over it when the block ends: a
    crash never leaves a torn file.

    An interrupted write removes its temporary file; those a killed process leaves behind are
    removed by :meth:`stratagen.io.run.Run.prepare` when training starts.
    """
    fs, path = _fs(url)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    temporary = f"{path}{TEMPORARY}{uuid.uuid4().hex[:8]}"
    try:
        with fs.open(temporary, "wb") as f:
            yield f
        fs.mv(temporary, path)
    except BaseException as exc:
        if fs.exists(temporary):
            fs.rm(temporary)
        if isinstance(exc, OSError) and exc.filename is None:  # e.g. ENOSPC from write(): name the file
            raise OSError(exc.errno, exc.strerror or str(exc), url) from None
        raise


def read_bytes(url: str) -> bytes:
    fs, path = _fs(url)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise StratagenError(f"{url}: file not found") from None


def save_tensors(url: str, tensors: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None) -> None:
    """Save tensors (made contiguous, on CPU) with JSON-serialisable metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"json": json.dumps(metadata or {})}
    write_bytes_atomic(url, save_safetensors(tensors, metadata=meta))


def load_tensors(url: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Inverse of :func:`save_tensors`."""
    read_header(url)  # the header checked against the file's size before the file is read
    data = read_bytes(url)
    try:
        tensors = load_safetensors(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8: 8 + header_len])
    except Exception as exc:
        raise StratagenError(f"{url}: not a readable safetensors file ({exc})") from None
    return tensors, json.loads(header.get("__metadata__", {}).get("json", "{}"))


def load_torch_file(url: str, allowed: Sequence[type] = ()) -> Any:
    """The object saved in the PyTorch file at ``url`` (path or fsspec URL), on the CPU, without
    running any code it may carry.

    ``torch.load(weights_only=True)`` rebuilds tensors, containers and numbers only; the types in
    ``allowed`` (e.g. LlamaGen's ``argparse.Namespace`` of training arguments) are allowlisted for
    this one call. StratagenError (one line) for a file holding any other global (a class, a
    function, a payload whose ``__reduce__`` would run code) and for a file that is not a PyTorch file.
    """
    accepted = ", ".join(f"{t.__module__}.{t.__qualname__}" for t in allowed)
    try:
        # streamed from the (seekable) file: a multi-GB checkpoint is not held twice in memory
        with fsspec.open(url, "rb") as file, torch.serialization.safe_globals(list(allowed)):
            return torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StratagenError(f"{url}: file not found") from None
    except Exception as exc:  # a pickle that carries code, a truncated or foreign file
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", str(exc))
        if found is None:
            raise StratagenError(f"{url}: not a PyTorch checkpoint ({_torch_reason(exc)})") from None
        raise StratagenError(f"{url}: refused, it holds {found.group(1)}, which is not a tensor"
                             f"{', container or ' + accepted if accepted else ' or container'}; "
                             "stratagen never unpickles other objects") from None


def _torch_reason(exc: Exception) -> str:
    """The reason in torch's message, without its advice to load with ``weights_only=False``."""
    text = str(exc).strip()
    reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if reason:
        return reason.group(1).strip()
    if isinstance(exc, KeyError) or not text or text.startswith("Weights only load failed"):
        return f"{type(exc).__name__}: unreadable"
    return text.splitlines()[0]


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A user's weights file as a state dict, without running any code it may carry:
    ``.safetensors``, or a PyTorch file read by :func:`load_torch_file`."""
    if path.endswith(".safetensors"):
        try:
            state = load_safetensors(read_bytes(path))
        except StratagenError:
            raise
        except Exception as exc:
            raise StratagenError(f"{path}: not a readable safetensors file ({type(exc).__name__})") from None
    else:
        state = load_torch_file(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise StratagenError(f"{path}: not a state dict (a mapping of names to tensors)")
    return state


def mismatches(expected: Mapping[str, Sequence[int]], found: Mapping[str, Sequence[int]]
               ) -> tuple[list[str], list[str], list[str]]:
    """How the tensors ``found`` in a file (name -> shape) differ from the ``expected`` ones: the
    names missing, the unexpected names, and ``"name [found shape] vs [expected shape]"`` for the
    names in both with other shapes (each list empty when they agree)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    reshaped = [f"{k} {list(found[k])} vs {list(shape)}" for k, shape in expected.items()
                if k in found and list(found[k]) != list(shape)]
    return missing, unexpected, reshaped


def read_header(url: str) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and where its data section starts, reading only the
    header; StratagenError unless the header fits the file and its tensors end exactly where the file
    does (a garbage header, or a truncated or padded file)."""
    fs, path = _fs(url)
    try:
        size = fs.size(path)
        with fs.open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if size < 8 or header_len > size - 8:
                raise ValueError(f"its header claims {header_len} bytes, the file has {size}")
            header = json.loads(f.read(header_len))
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
        end = max([entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"],
                  default=0)
    except FileNotFoundError:
        raise StratagenError(f"{url}: file not found") from None
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError) as exc:
        raise StratagenError(f"{url}: not a readable safetensors file ({exc})") from None
    if 8 + header_len + end != size:
        raise StratagenError(f"{url}: not a readable safetensors file (its tensors need {8 + header_len + end} "
                             f"bytes, the file has {size}: truncated?)")
    return header, 8 + header_len


def read_metadata(url: str) -> dict[str, Any]:
    """The JSON metadata of a :func:`save_tensors` file, reading only its header (checked against
    the file's size)."""
    header, _ = read_header(url)
    try:
        return json.loads(header.get("__metadata__", {}).get("json", "{}"))
    except (ValueError, AttributeError) as exc:
        raise StratagenError(f"{url}: not a readable safetensors file (metadata: {exc})") from None


def write_json(url: str, value: Any) -> None:
    write_bytes_atomic(url, json.dumps(value, indent=2).encode())


def read_json(url: str) -> Any:
    return json.loads(read_bytes(url))


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state dict split into tensors and JSON (for safetensors)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                         meta: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
