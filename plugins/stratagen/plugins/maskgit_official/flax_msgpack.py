"""Read flax checkpoints (``flax.serialization.to_bytes``) with ``msgpack`` alone: no flax, jax or pickle.

flax writes a nested dict of msgpack maps; arrays are msgpack extension type 1 whose payload is
itself msgpack ``[shape, dtype name, raw little-endian bytes]`` (type 3: a numpy scalar, the same
payload). Nothing else is accepted.
"""
from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import torch

from stratagen.registry import StratagenError

_NDARRAY, _NPSCALAR = 1, 3


def _ext_hook(code: int, data: bytes) -> Any:
    if code not in (_NDARRAY, _NPSCALAR):
        raise ValueError(f"unsupported flax msgpack extension type {code}")
    shape, dtype, buffer = msgpack.unpackb(data, raw=False)
    return np.frombuffer(buffer, dtype=np.dtype(dtype)).reshape(shape)


def read_flax_checkpoint(data: bytes, source: str) -> dict[str, Any]:
    """The ``params`` tree of a flax checkpoint: nested dicts whose leaves are float32 tensors.

    Accepts ``{"params": ...}`` (flax variables, what official MaskGIT's checkpoints hold), a train
    state holding ``params``, or a bare parameter tree.
    """
    try:
        tree = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise StratagenError(f"{source}: not a flax msgpack checkpoint ({exc})") from None
    if not isinstance(tree, dict):
        raise StratagenError(f"{source}: not a flax msgpack checkpoint (top level is {type(tree).__name__})")
    while isinstance(tree.get("params"), dict):
        tree = tree["params"]
    return _to_tensors(tree)


def _to_tensors(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {str(k): _to_tensors(v) for k, v in tree.items()}
    if isinstance(tree, np.ndarray):
        return torch.from_numpy(tree.astype(np.float32, copy=True))
    return tree
