"""A run directory (local path or fsspec URL) and what it holds.

::

    <run>/config.yaml                        the resolved config
    <run>/tokenizers/<id>/model.safetensors  weights (+ plugin name/version, step)
    <run>/tokenizers/<id>/checkpoint.safetensors  weights + optimizer state, for --resume
    <run>/priors/<id>/...                    the same for priors
    <run>/tokens/<tokenizer id>/<split>/     token cache (:mod:`stratagen.io.tokens`)
    <run>/tb/                                TensorBoard logs (local runs)
    <run>/samples/                           PNG files and grids
"""
from __future__ import annotations

from typing import Any

from torch import nn

from stratagen import config as cfg
from stratagen.registry import Registry, StratagenError, get_registry

from stratagen.io import checkpoint

WEIGHTS = "model.safetensors"
TRAIN_STATE = "checkpoint.safetensors"


class Run:
    """Paths and component IO of one run directory."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def path(self, *parts: str) -> str:
        return "/".join((self.url,) + parts)

    @property
    def is_local(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")

    def local_path(self, *parts: str) -> str:
        """A local filesystem path under the run (TensorBoard and PNG writers need one)."""
        if not self.is_local:
            raise StratagenError(f"{self.url}: this needs a local run directory")
        return self.path(*parts).removeprefix("file://")

    def exists(self) -> bool:
        """Whether this is a run directory (it holds a config.yaml)."""
        return checkpoint.exists(self.path("config.yaml"))

    # ---------------------------------------------------------------- config
    def save_config(self, config: Any) -> None:
        checkpoint.write_bytes_atomic(self.path("config.yaml"), cfg.dump_config(config).encode())

    def load_config(self, overrides: list[str] | None = None, registry: Registry | None = None) -> Any:
        url = self.path("config.yaml")
        if not checkpoint.exists(url):
            raise StratagenError(f"{self.url}: not a run directory (no config.yaml)")
        return cfg.load_config(url, overrides, registry)

    # ---------------------------------------------------------------- components
    def component_url(self, kind: str, cid: str, filename: str = WEIGHTS) -> str:
        return self.path(f"{kind}s", cid, filename)

    def save_weights(self, kind: str, cid: str, module: nn.Module, plugin: str, step: int,
                     registry: Registry | None = None) -> None:
        provider = (registry or get_registry()).get(kind, plugin).provider
        meta = {"kind": kind, "plugin": plugin, "distribution": provider.distribution,
                "version": provider.version, "step": step}
        checkpoint.save_tensors(self.component_url(kind, cid), module.state_dict(), meta)

    def load_weights(self, kind: str, cid: str, module: nn.Module, registry: Registry | None = None) -> dict:
        """Load trained weights into ``module``; says which plugin to install if it is missing."""
        url = self.component_url(kind, cid)
        if not checkpoint.exists(url):
            raise StratagenError(f"{url}: {kind} {cid!r} has not been trained (run `stratagen train`)")
        tensors, meta = checkpoint.load_tensors(url)
        registry = registry or get_registry()
        if meta.get("plugin") not in registry.names(kind):
            raise StratagenError(
                f"{url} was written by {kind} plugin {meta.get('plugin')!r} from "
                f"{meta.get('distribution')} {meta.get('version')}, which is not installed; install that distribution")
        missing, unexpected = module.load_state_dict(tensors, strict=False)
        if missing or unexpected:
            raise StratagenError(f"{url}: weights do not fit the configured {kind} {cid!r} "
                                 f"(missing {missing[:3]}, unexpected {unexpected[:3]}); was the config changed?")
        return meta

    def trained_step(self, kind: str, cid: str) -> int | None:
        url = self.component_url(kind, cid)
        if not checkpoint.exists(url):
            return None
        return checkpoint.load_tensors(url)[1].get("step")
