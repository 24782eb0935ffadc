"""Side-by-side comparison runs: every variant trained (or loaded), sampled and scored alike.

Every variant samples the same labels with the same seeds and batch size, and is scored
against the same reference set by the same metrics. Sweeps vary one sampler setting at a
time around each variant's own sampler: temperature (the paper reports the best FID over
temperatures), steps per level (Table 7), the mask schedule (Table 10) and the
classifier-free guidance scale (Table 3).

With ``seeds: [s1, s2, ...]`` every sweep point is sampled and scored once per seed (and with
``train_per_seed: true`` every variant is also trained once per seed, into ``<run dir>-seed<s>``);
the tables show the mean and standard deviation over seeds, and differences within the spread
are marked as ties (see :mod:`.aggregate`). results.md ends with the paper's claims that the
run can test, each with its evidence and verdict (see :mod:`.claims`).

Output, under the compare directory::

    results.csv, results.md      one row per variant and sweep point, mean and std over seeds (Table 6
                                 shape), then the claims section (which seeds the spread covers, verdicts)
    claims.csv                   the paper's claims: table, claim, evidence, verdict
    results_per_seed.csv         one row per variant, sweep point and seed
    tokenizers.md                reconstruction PSNR, rFID, perplexity and usage (Table 1 shape)
    figures/side_by_side.png     rows = variants, columns = classes (same seeds)
    figures/<metric>_vs_<sweep>.png   mean with std error bars
    figures/<variant>_level_swap_<tokenizer>.png   a two-level tokenizer's level swaps (first seed)
    tb/<variant>/                TensorBoard: metrics, sweeps, sample grid, hyper-parameters,
                                 tokenizer numbers (``tokenizer/<id>/...``) and level swaps;
                                 a custom-scalars layout overlays the variants per metric
    tb/claims/                   TensorBoard text: the claims section
    cache/<variant>/seed<s>/     finished sweep points (re-running skips them); metric caches in cache/
    .comparing                   while a comparison runs here: its process id, host and start (the hold)
    jobs/<variant>[-seed<s>].log with ``train_jobs: N``: the config (.yaml) and output of each run trained in a
                                 process of its own, N at once (:mod:`.jobs`)

The whole comparison is checked before any work (:mod:`.plan`, ``stratagen compare --check``).
Re-running skips finished work; a variant that fails while running is reported and the others finish.
One process runs a compare directory at a time (``.comparing`` holds it; a second comparison of it is
refused, naming the first, rather than overwrite its results with a partial table).

Under torchrun every process trains the variants together (DDP, as ``stratagen train``), and each
sweep point's samples are split over the processes by batch and gathered on rank 0
(:func:`stratagen.engine.evaluation.evaluate.generate`), the same images as one process samples;
rank 0 alone scores them, evaluates the tokenizers and writes every file above
(:func:`stratagen.engine.devices.gather.on_main`).
"""
from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import shutil
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from pydantic import BaseModel

from stratagen import config as cfg
from stratagen.eval import from_uint8
from stratagen.io import checkpoint
from stratagen.io.run import held_by_this_process
from stratagen.registry import Registry, StratagenError, get_registry

from ..devices.gather import on_main
from ..devices.processes import Processes, setup_processes
from ..evaluation import evaluate
from ..pipeline import Pipeline, load_config, train
from ..reporting import figures
from .claims import Claim, check_claims, claims_markdown, spread_text
from .jobs import jobs_to_train, train_in_processes
from .plan import (ComparePlan, VariantPlan, plan_comparison, resolve_variants, sampling_seeds, sweep_points,
                   variant_configs, variant_sweeps)

log = logging.getLogger("stratagen")

#: the hold of the comparison running in a compare directory (see :func:`stratagen.io.run.held_by_this_process`)
COMPARING = ".comparing"

TABLE_METRICS = ("fid", "swd", "is", "kid", "precision", "recall", "class_accuracy")


@dataclass
class CompareResult:
    dir: str
    rows: list[dict[str, Any]] = field(default_factory=list)  # mean and std over seeds
    seed_rows: list[dict[str, Any]] = field(default_factory=list)
    tokenizers: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    grids: dict[str, torch.Tensor] = field(default_factory=dict)
    #: per variant, {tokenizer id: PNG of its level swaps} (two-level tokenizers)
    swap_figures: dict[str, dict[str, str]] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    #: which seeds the spread covers (sampling, and training), as the results say it (:func:`.claims.spread_text`)
    spread: str = ""
    claims: list[Claim] = field(default_factory=list)
    #: whether this process wrote the outputs (rank 0 under torchrun; the other ranks hold no grids)
    written: bool = True


# ----------------------------------------------------------------------------- runner
class CompareRunner:
    """Runs a validated compare config (see :func:`stratagen.config.load_compare_config`)."""

    def __init__(self, config: BaseModel, registry: Registry | None = None):
        self.config = config
        self.registry = registry or get_registry()
        self.dir = config.dir
        self.procs = Processes()

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    @property
    def seeds(self) -> list[int]:
        return sampling_seeds(self.config)

    def run(self) -> CompareResult:
        plan = plan_comparison(self.config, self.registry)  # every check before any work
        self.procs = setup_processes(self.config.device)  # after the checks: a config error stops no group
        with contextlib.ExitStack() as hold:  # one comparison per directory: a second would overwrite its files
            on_main(self.procs, lambda: hold.enter_context(held_by_this_process(
                self.path(COMPARING), self.dir, "running this comparison", "comparison",
                "the comparison writes its results there")))
            return self._run(plan)

    def _run(self, plan: ComparePlan) -> CompareResult:
        from .aggregate import aggregate

        result = CompareResult(self.dir, written=self.procs.is_main)
        training = {name: sorted({c.run.seed for c in v.run_configs.values()}) for name, v in plan.variants.items()}
        result.spread = spread_text(self.seeds, training, self.config.train_per_seed)
        untrained = {}  # variant -> why its run failed to train in a process of its own
        if self.config.train_jobs > 1:  # plan_comparison refused it under torchrun
            untrained = train_in_processes(jobs_to_train(plan, self.registry), self.config.train_jobs,
                                           self.path("jobs"))
        for name, variant in plan.variants.items():
            trainer = variant.trained_by
            if trainer in untrained:
                untrained[name] = f"variant {trainer} trains its run: {untrained[trainer]}"
            if name in untrained:
                result.failures[name] = untrained[name]
                if self.procs.is_main:
                    log.error("variant %s failed: %s", name, untrained[name])
                continue
            try:
                self._run_variant(variant, plan.metrics, result)
            except Exception as exc:  # a crashed variant is reported; the others still run
                message = str(exc) if isinstance(exc, StratagenError) else f"{type(exc).__name__}: {exc}"
                result.failures[name] = message
                if self.procs.is_main:
                    log.error("variant %s failed: %s", name, message)
                    log.debug("%s", traceback.format_exc())
        result.rows = aggregate(result.seed_rows)
        result.claims = check_claims(result.rows, best_rows(result.rows), result.tokenizers,
                                     self.config.train_per_seed)
        if self.procs.is_main:
            self._write_outputs(result)
        return result

    def _run_variant(self, plan: VariantPlan, metrics: list, result: CompareResult) -> None:
        name, variant = plan.name, self.config.variants[plan.name]
        per_seed_training = self.config.train_per_seed
        reports = []
        for seed in self.seeds:
            if per_seed_training or not reports:  # one trained model, or one per seed
                run_config = plan.run_configs[seed if per_seed_training else None]
                if variant.config is not None:
                    pipe = train(run_config, resume=True, registry=self.registry,
                                 label=f"{name} seed {seed}" if per_seed_training else name)
                else:
                    if plan.trained_by is not None:  # an earlier variant trained it: read what it saved
                        run_config = variant_configs(self.config, name, variant, self.registry,
                                                     source=(run_config.run.dir, variant.set))[None]
                    pipe = Pipeline.from_config(run_config, registry=self.registry)
                reference = evaluate.reference_set(pipe.built, self.path("cache", "reference"))
                result.class_names = list(getattr(reference.dataset, "class_names", []))
                where = f"{name}/seed{seed}" if per_seed_training else name
                reports.append(self._cached(f"{where}/tokenizers.json",
                                            lambda _: evaluate.tokenizer_report(pipe, reference, metrics)))
                if len(reports) == 1 and self.procs.is_main:
                    result.swap_figures[name] = evaluate.level_swap_figures(pipe, reference, self.path("figures"),
                                                                            variant=name)
            self._sample_seed(name, seed, pipe, run_config, reference, metrics, result)
        kinds = {tid: _tokenizer_kind(run_config, tid) for tid in reports[0]}
        result.tokenizers[name] = {tid: {"kind": kinds[tid], "seeds": len(reports), **values}
                                   for tid, values in _mean_reports(reports).items()}
        if self.procs.is_main:
            first = self.path("cache", name, f"seed{self.seeds[0]}", "grid.safetensors")
            result.grids[name] = checkpoint.load_tensors(first)[0]["images"]

    def _sample_seed(self, name: str, seed: int, pipe: Any, run_config: BaseModel, reference: Any, metrics: list,
                     result: CompareResult) -> None:
        """Every sweep point of one variant, sampled and scored with ``seed`` (cached per seed)."""
        labels = evaluate.sample_labels(pipe.model.num_classes, self.config.eval)
        sweeps = variant_sweeps(self.config, self.config.variants[name])
        for sweep, value, sampler_config in sweep_points(run_config.sampler, sweeps):
            sampler = pipe.sampler(sampler_config)

            def generate() -> evaluate.Generated | None:
                return evaluate.generate(pipe, labels, seed, self.config.eval.batch_size, sampler,
                                         desc=f"{name} {sweep}={value} seed {seed}", procs=self.procs)

            def compute(generated: evaluate.Generated) -> dict[str, Any]:
                if sweep == "default":
                    firsts = from_uint8(generated.images[:: self.config.eval.samples_per_class])
                    checkpoint.save_tensors(self.path("cache", name, f"seed{seed}", "grid.safetensors"),
                                            {"images": firsts})
                output = sampler.output_tokenizer(pipe.model)
                row = {"variant": name, "sweep": sweep, "value": value, "seed": seed, "sampler": sampler_config.name,
                       "tokenizer": _tokenizer_kind(run_config, output), **sampler.describe(pipe.model),
                       "sec_per_image": round(generated.seconds_per_image, 4)}
                row.update({k: round(v, 4) for k, v in evaluate.score(generated, metrics, reference).items()})
                return row

            result.seed_rows.append(self._cached(f"{name}/seed{seed}/{sweep}-{value}.json", compute, generate))

    def _cached(self, relative: str, compute: Callable[[Any], Any], generate: Callable[[], Any] = lambda: None) -> Any:
        """The JSON value cached at ``cache/<relative>``, else ``compute(generate())``, cached.

        ``generate`` runs on every process (sampling is split over them under torchrun); rank 0 alone
        reads the cache, computes (given what ``generate`` returned on it) and writes; every process
        returns rank 0's value.
        """
        path = self.path("cache", relative)
        cached = on_main(self.procs, lambda: checkpoint.read_json(path) if os.path.exists(path) else None)
        if cached is not None:
            return cached
        made = generate()

        def compute_and_write() -> Any:
            value = compute(made)
            checkpoint.write_json(path, value)
            return value

        return on_main(self.procs, compute_and_write)

    # ------------------------------------------------------------------------- outputs
    def _write_outputs(self, result: CompareResult) -> None:
        os.makedirs(self.dir, exist_ok=True)
        for filename, rows in (("results.csv", result.rows), ("results_per_seed.csv", result.seed_rows)):
            with open(self.path(filename), "w", newline="") as f:
                writer = csv.DictWriter(f, _columns(rows))
                writer.writeheader()
                writer.writerows(rows)
        with open(self.path("claims.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, ["table", "claim", "evidence", "verdict"])
            writer.writeheader()
            writer.writerows(asdict(c) for c in result.claims)
        with open(self.path("results.md"), "w") as f:
            f.write(results_markdown(result))
        with open(self.path("tokenizers.md"), "w") as f:
            f.write(tokenizers_markdown(result.tokenizers))
        os.makedirs(self.path("figures"), exist_ok=True)
        if result.grids:
            figures.side_by_side(result.grids, result.class_names, self.path("figures", "side_by_side.png"))
        for sweep in dict.fromkeys(r["sweep"] for r in result.rows if r["sweep"] != "default"):
            for metric in [m for m in TABLE_METRICS if any(m in r for r in result.rows)]:
                series = {v: [(r["value"], r[metric], r.get(f"{metric}_std", 0.0)) for r in result.rows
                              if r["variant"] == v and r["sweep"] == sweep]
                          for v in dict.fromkeys(r["variant"] for r in result.rows)}
                series = {k: p for k, p in series.items() if p}
                if series:
                    figures.sweep_plot(series, sweep, metric, self.path("figures", f"{metric}_vs_{sweep}.png"))
        self._write_tensorboard(result)

    def _write_tensorboard(self, result: CompareResult) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        from ..reporting.logger import add_png, image_grid

        shutil.rmtree(self.path("tb"), ignore_errors=True)  # a re-run rewrites the dashboard, not a second copy
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
                for tid, values in result.tokenizers.get(name, {}).items():
                    for metric, value in values.items():
                        if isinstance(value, (int, float)):
                            writer.add_scalar(f"tokenizer/{tid}/{metric}", value, 0)
                for tid, path in result.swap_figures.get(name, {}).items():
                    add_png(writer, f"tokenizer/{tid}/level_swaps", path)
                default = next(r for r in rows if r["sweep"] == "default")
                exp, ssi, sei = hparams({k: str(default[k]) for k in ("tokens", "steps", "order")} | {
                    "params": default["params"], "variant": name}, {f"hparam/{m}": default[m] for m in metrics})
                for summary in (exp, ssi, sei):
                    writer.file_writer.add_summary(summary)
                for metric in metrics:
                    writer.add_scalar(f"hparam/{metric}", default[metric], 0)
        with SummaryWriter(self.path("tb", "claims")) as writer:  # the Text tab, beside the variants
            writer.add_text("claims", claims_markdown(result.claims, result.spread), 0)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r))


def _markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    out = io.StringIO()
    out.write("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n")
    for row in rows:
        cells = [f"{row[c]:,}" if c == "params" and c in row else str(row.get(c, "")) for c in columns]
        out.write("| " + " | ".join(cells) + " |\n")
    return out.getvalue()


def best_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant, its default or temperature-sweep row with the best mean FID (the paper reports the
    best FID over temperatures), with ``temperature`` saying which."""
    best = []
    for name in dict.fromkeys(r["variant"] for r in rows):
        candidates = [r for r in rows if r["variant"] == name and r["sweep"] in ("default", "temperature")]
        key = "fid" if all("fid" in r for r in candidates) else None
        chosen = min(candidates, key=lambda r: r[key]) if key else candidates[0]
        best.append({**chosen, "temperature": chosen["value"] if chosen["sweep"] == "temperature" else "config"})
    return best


def _table(rows: list[dict[str, Any]], head: list[str]) -> str:
    """``head`` columns, then every metric as ``mean ± std`` with the best and its ties marked."""
    from .aggregate import mark_ties

    metrics = [m for m in TABLE_METRICS if any(m in r for r in rows)]
    cells = {m: mark_ties(rows, m) for m in metrics}
    shown = [{**{c: r.get(c, "") for c in head}, **{m: cells[m][i] for m in metrics}} for i, r in enumerate(rows)]
    return _markdown(shown, head + metrics)


def results_markdown(result: CompareResult) -> str:
    """The Table 6-shaped summary (best FID over the temperature sweep), every sweep point, the claims."""
    best = best_rows(result.rows)
    swept = any(r["sweep"] == "temperature" for r in result.rows)
    heading = "best FID over the temperature sweep" if swept else "each variant's configured sampler"
    text = (f"## Results ({heading}; mean ± std over seeds)\n\n"
            f"{result.spread} (best) marks the best value of a column, (tie) a value within the spread of it "
            "(|difference| <= sum of the two stds).\n\n")
    text += _table(best, ["variant", "tokens", "steps", "order", "params", "sec_per_image",
                          *(["temperature"] if swept else []), "seeds"])
    text += "\n## Every sweep point\n\n"
    for sweep in dict.fromkeys(r["sweep"] for r in result.rows):
        text += f"### {sweep}\n\n" + _table([r for r in result.rows if r["sweep"] == sweep],
                                               ["variant", "value", "tokens", "steps", "order", "seeds"]) + "\n"
    if result.failures:
        text += "## Failed variants\n\n" + "".join(f"- {k}: {v}\n" for k, v in result.failures.items()) + "\n"
    return text + claims_markdown(result.claims, result.spread)


def tokenizers_markdown(reports: dict[str, dict[str, dict[str, Any]]]) -> str:
    rows = [{"variant": v, "tokenizer": t, **{k: round(x, 3) if isinstance(x, float) else x for k, x in m.items()}}
            for v, per in reports.items() for t, m in per.items()]
    return "## Tokenizers (reconstruction on the eval split)\n\n" + _markdown(rows, _columns(rows))


def _tokenizer_kind(run_config: BaseModel, tokenizer_id: str) -> str:
    """The registered name of a tokenizer (following ``share``), e.g. ``vqgan2-r``."""
    entry = run_config.tokenizers[tokenizer_id]
    return entry.model.name if entry.model is not None else _tokenizer_kind(run_config, entry.share)


def _mean_reports(reports: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Tokenizer reports of several seeds -> their mean, with ``<key>_std`` (the spread over seeds)
    when there are several; a spread within one report (``<key>_image_std``) is averaged only."""
    from .aggregate import mean_and_spread

    out: dict[str, dict[str, float]] = {}
    for tid in reports[0]:
        for key in reports[0][tid]:
            mean, spread = mean_and_spread([r[tid][key] for r in reports])
            out.setdefault(tid, {})[key] = mean
            if len(reports) > 1 and not key.endswith("_std"):
                out[tid][f"{key}_std"] = spread
    return out


def compare(source: str, overrides: list[str] | None = None, registry: Registry | None = None) -> CompareResult:
    """Load a compare config and run it."""
    return CompareRunner(cfg.load_compare_config(source, overrides, registry), registry).run()


def check_compare(source: str, overrides: list[str] | None = None, registry: Registry | None = None) -> ComparePlan:
    """Load a compare config and check the whole comparison (:func:`.plan.plan_comparison`);
    nothing is trained, sampled or written."""
    return plan_comparison(cfg.load_compare_config(source, overrides, registry), registry)


def show_compare(source: str, overrides: list[str] | None = None, registry: Registry | None = None) -> str:
    """The resolved compare config, then every variant's resolved run config beneath it (YAML documents)."""
    config = cfg.load_compare_config(source, overrides, registry)
    documents = [f"# compare config {source}, resolved\n{cfg.dump_config(config)}"]
    for plan in resolve_variants(config, registry).values():
        for seed, run_config in plan.run_configs.items():
            how = (f" (trained by variant {plan.trained_by})" if plan.trained_by else "") + (
                f", training seed {seed}" if seed is not None else "")
            documents.append(f"# variant {plan.name}: {plan.source}{how}, resolved\n{cfg.dump_config(run_config)}")
    return "---\n".join(documents)
