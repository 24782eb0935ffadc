"""Side-by-side comparison runs: every variant trained (or loaded), sampled and scored alike.

Every variant samples the same labels with the same seeds and batch size, and is scored
against the same reference set by the same metrics. Sweeps vary one sampler setting at a
time around each variant's own sampler: temperature (the paper reports the best FID over
temperatures), steps per level (Table 7), the mask schedule (Table 10) and the
classifier-free guidance scale (Table 3).

Output, under the compare directory::

    results.csv, results.md      one row per variant and sweep point (Table 6 shape)
    tokenizers.md                reconstruction PSNR, rFID, perplexity and usage (Table 1 shape)
    figures/side_by_side.png     rows = variants, columns = classes (same seeds)
    figures/<metric>_vs_<sweep>.png
    tb/<variant>/                TensorBoard: metrics, sweeps, sample grid, hyper-parameters;
                                 a custom-scalars layout overlays the variants per metric
    cache/                       finished sweep points (re-running skips them), metric caches

Re-running skips finished work; a variant that fails is reported and the others finish.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel

from stratagen import config as cfg
from stratagen.io import checkpoint
from stratagen.io.run import Run
from stratagen.registry import ConfigError, Registry, SamplerConfig, StratagenError, get_registry

from . import evaluate, figures
from .build import build_metrics
from .pipeline import Pipeline, load_config, train

log = logging.getLogger("stratagen")

TABLE_METRICS = ("fid", "is", "kid", "precision", "recall", "class_accuracy")


@dataclass
class CompareResult:
    dir: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    tokenizers: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    grids: dict[str, torch.Tensor] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- sweeps
def sweep_points(sampler: BaseModel, sweeps: dict[str, list[Any]]) -> list[tuple[str, str, BaseModel]]:
    """``(sweep, value label, sampler config)``: the default point, then one setting at a time.

    Sweeps are stage settings (:class:`stratagen.registry.StageSettings`) the sampler declares
    sweepable; a value applies to every stage, a list gives one value per stage (``steps:
    [[18, 6]]``). ConfigError if the sampler cannot take a value.
    """
    points = [("default", "-", sampler)]
    for setting, values in sweeps.items():
        if not isinstance(sampler, SamplerConfig):
            raise ConfigError(f"sweeps: sampler {sampler.name!r} has no stage settings to sweep")
        for value in values:
            label = "+".join(map(str, value)) if isinstance(value, list) else f"{value:g}" if isinstance(
                value, float) else str(value)
            points.append((setting, label, sampler.with_setting(setting, value)))
    return points


# ----------------------------------------------------------------------------- runner
class CompareRunner:
    """Runs a validated compare config (see :func:`stratagen.config.load_compare_config`)."""

    def __init__(self, config: BaseModel, registry: Registry | None = None):
        self.config = config
        self.registry = registry or get_registry()
        self.dir = config.dir
        os.makedirs(self.dir, exist_ok=True)

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    def run(self) -> CompareResult:
        result = CompareResult(self.dir)
        run_configs = self._check_variants()
        metrics = build_metrics(self.config.eval, self.registry)
        for name, variant in self.config.variants.items():
            try:
                self._run_variant(name, variant, run_configs[name], metrics, result)
            except Exception as exc:  # a crashed variant is reported; the others still run
                message = str(exc) if isinstance(exc, StratagenError) else f"{type(exc).__name__}: {exc}"
                result.failures[name] = message
                log.error("variant %s failed: %s", name, message)
                log.debug("%s", traceback.format_exc())
        self._write_outputs(result)
        return result

    def _check_variants(self) -> dict[str, BaseModel | None]:
        """Every variant's run config with its sampler and every sweep point checked, before any
        work starts (ConfigError naming the variant). A ``run:`` variant whose run an earlier
        variant trains (None here) is checked when it is reached."""
        configs: dict[str, BaseModel | None] = {}
        for name, variant in self.config.variants.items():
            if variant.run is not None and not Run(variant.run).exists():
                configs[name] = None
                continue
            configs[name] = self._variant_config(name, variant)
        return configs

    def _variant_config(self, name: str, variant: Any) -> BaseModel:
        try:
            run_config = load_config(variant.config or variant.run, variant.set, self.registry)
            if run_config.sampler is None:
                raise ConfigError("its run config names no sampler")
            sweep_points(run_config.sampler, self.config.sweeps)
        except StratagenError as exc:
            raise ConfigError(f"variant {name}: {exc}") from None
        if self.config.device != "auto":
            run_config = run_config.model_copy(update={"run": run_config.run.model_copy(
                update={"device": self.config.device})})
        return run_config

    def _run_variant(self, name: str, variant: Any, run_config: BaseModel | None, metrics: list,
                     result: CompareResult) -> None:
        run_config = run_config or self._variant_config(name, variant)
        if variant.config is not None:
            pipe = train(run_config, resume=True, registry=self.registry)
        else:
            pipe = Pipeline.from_config(run_config, registry=self.registry)
        reference = evaluate.reference_set(pipe.built, self.path("cache", "reference"))
        result.class_names = list(getattr(reference.dataset, "class_names", []))
        result.tokenizers[name] = self._cached(f"{name}/tokenizers.json",
                                               lambda: evaluate.tokenizer_report(pipe, reference, metrics))
        labels = evaluate.sample_labels(pipe.model.num_classes, self.config.eval)
        for sweep, value, sampler_config in sweep_points(run_config.sampler, self.config.sweeps):
            sampler = pipe.sampler(sampler_config)

            def compute() -> dict[str, Any]:
                generated = evaluate.generate(pipe, labels, self.config.eval.seed, self.config.eval.batch_size,
                                              sampler, desc=f"{name} {sweep}={value}")
                if sweep == "default":
                    firsts = generated.images[:: self.config.eval.samples_per_class]
                    checkpoint.save_tensors(self.path("cache", name, "grid.safetensors"), {"images": firsts})
                row = {"variant": name, "sweep": sweep, "value": value, **sampler.describe(pipe.model),
                       "sec_per_image": round(generated.seconds_per_image, 4)}
                row.update({k: round(v, 4) for k, v in evaluate.score(generated, metrics, reference).items()})
                return row

            result.rows.append(self._cached(f"{name}/{sweep}-{value}.json", compute))
        result.grids[name] = checkpoint.load_tensors(self.path("cache", name, "grid.safetensors"))[0]["images"]

    def _cached(self, relative: str, compute) -> Any:
        path = self.path("cache", relative)
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        value = compute()
        checkpoint.write_json(path, value)
        return value

    # ------------------------------------------------------------------------- outputs
    def _write_outputs(self, result: CompareResult) -> None:
        columns = _columns(result.rows)
        with open(self.path("results.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(result.rows)
        with open(self.path("results.md"), "w") as f:
            f.write(results_markdown(result))
        with open(self.path("tokenizers.md"), "w") as f:
            f.write(tokenizers_markdown(result.tokenizers))
        os.makedirs(self.path("figures"), exist_ok=True)
        if result.grids:
            figures.side_by_side(result.grids, result.class_names, self.path("figures", "side_by_side.png"))
        for sweep in dict.fromkeys(r["sweep"] for r in result.rows if r["sweep"] != "default"):
            for metric in [m for m in TABLE_METRICS if any(m in r for r in result.rows)]:
                series = {v: [(r["value"], r[metric]) for r in result.rows if r["variant"] == v and r["sweep"] == sweep]
                          for v in dict.fromkeys(r["variant"] for r in result.rows)}
                series = {k: p for k, p in series.items() if p}
                if series:
                    figures.sweep_plot(series, sweep, metric, self.path("figures", f"{metric}_vs_{sweep}.png"))
        self._write_tensorboard(result)

    def _write_tensorboard(self, result: CompareResult) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        from .logger import image_grid

        metrics = [m for m in TABLE_METRICS if any(m in r for r in result.rows)]
        sweeps = list(dict.fromkeys(r["sweep"] for r in result.rows))
        layout = {f"compare: {sweep}": {m: ["Multiline", [f"{sweep}/{m}$"]] for m in metrics} for sweep in sweeps}
        for name in dict.fromkeys(r["variant"] for r in result.rows):
            rows = [r for r in result.rows if r["variant"] == name]
            with SummaryWriter(self.path("tb", name)) as writer:
                writer.add_custom_scalars(layout)
                for sweep in sweeps:
                    for index, row in enumerate(r for r in rows if r["sweep"] == sweep):
                        for metric in metrics:
                            if metric in row:
                                writer.add_scalar(f"{sweep}/{metric}", row[metric], index)
                        writer.add_text(f"{sweep}/points", f"{index}: {sweep} = {row['value']}", index)
                if name in result.grids:
                    writer.add_image("samples (same classes and seeds)", image_grid(result.grids[name], nrow=len(
                        result.grids[name])), 0)
                default = next(r for r in rows if r["sweep"] == "default")
                exp, ssi, sei = hparams({k: str(default[k]) for k in ("tokens", "steps", "order")} | {
                    "params": default["params"], "variant": name}, {f"hparam/{m}": default[m] for m in metrics})
                for summary in (exp, ssi, sei):
                    writer.file_writer.add_summary(summary)
                for metric in metrics:
                    writer.add_scalar(f"hparam/{metric}", default[metric], 0)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r))


def _markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    out = io.StringIO()
    out.write("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n")
    for row in rows:
        cells = [f"{row[c]:,}" if c == "params" and c in row else str(row.get(c, "")) for c in columns]
        out.write("| " + " | ".join(cells) + " |\n")
    return out.getvalue()


def results_markdown(result: CompareResult) -> str:
    """The Table 6-shaped summary (best FID over the temperature sweep), then every sweep point."""
    best = []
    for name in dict.fromkeys(r["variant"] for r in result.rows):
        candidates = [r for r in result.rows if r["variant"] == name and r["sweep"] in ("default", "temperature")]
        key = "fid" if all("fid" in r for r in candidates) else None
        chosen = min(candidates, key=lambda r: r[key]) if key else candidates[0]
        best.append({**chosen, "temperature": chosen["value"] if chosen["sweep"] == "temperature" else "config"})
    head = ["variant", "tokens", "steps", "order", "params", "sec_per_image", "temperature"]
    summary_columns = head + [m for m in TABLE_METRICS if any(m in r for r in best)]
    text = "## Results (best FID over the temperature sweep)\n\n" + _markdown(best, summary_columns)
    text += "\n## Every sweep point\n\n" + _markdown(result.rows, _columns(result.rows))
    if result.failures:
        text += "\n## Failed variants\n\n" + "".join(f"- {k}: {v}\n" for k, v in result.failures.items())
    return text


def tokenizers_markdown(reports: dict[str, dict[str, dict[str, float]]]) -> str:
    rows = [{"variant": v, "tokenizer": t, **{k: round(x, 3) for k, x in m.items()}}
            for v, per in reports.items() for t, m in per.items()]
    return "## Tokenizers (reconstruction on the eval split)\n\n" + _markdown(rows, _columns(rows))


def compare(source: str, overrides: list[str] | None = None, registry: Registry | None = None) -> CompareResult:
    """Load a compare config and run it."""
    return CompareRunner(cfg.load_compare_config(source, overrides, registry), registry).run()
