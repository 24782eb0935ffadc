"""The StraIT paper's claims that a compare run can test, with measured evidence and a verdict.

A measurement is a mean, a spread (the standard deviation over seeds; 0 with one seed) and the
number of seeds behind it. Two measurements differ only when their means are further apart than
the sum of their spreads; otherwise the comparison is a **tie**. Verdicts:

* ``reproduced``: the run agrees with the paper beyond the spread;
* ``not reproduced``: the run disagrees beyond the spread;
* ``tie``: the difference is within the spread;
* ``indicative (1 seed): as the paper`` / ``against the paper`` / ``equal``: fewer than
  :data:`MIN_SEEDS` seeds behind a side, so there is no spread to judge the difference by;
* ``not tested``: the run lacks the variants or sweeps the claim needs.

A Table 6 verdict compares separately trained models; with one trained model per variant its
spread covers sampling noise only, and a verdict beyond it says so (:data:`ONE_MODEL`).

Claims (Qian et al. 2023): Table 1 (VQGAN2-R puts the higher perplexity on its top level,
VQGAN2-C on its bottom level), Table 6 (StraIT-R beats the MaskGIT cascade and single-level
MaskGIT; StraIT-C is worse than StraIT-R), Table 7 (for the same total, more top steps beat
more bottom steps), Table 10 (concave mask schedules beat convex ones).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

#: +1 where lower is better, -1 where higher is better
DIRECTIONS = {"fid": 1, "kid": 1, "swd": 1, "sec_per_image": 1, "is": -1, "precision": -1, "recall": -1,
              "class_accuracy": -1}
#: the sample-quality metrics a claim is checked on, when the run reports them
QUALITY_METRICS = ("fid", "swd")
#: Table 10's grouping of the mask schedules (linear is neither)
CONCAVE = ("cosine", "square", "cubic", "exp")
CONVEX = ("log", "sqrt")
#: seeds needed behind both sides of a claim before it gets a verdict rather than ``indicative``
MIN_SEEDS = 2
#: appended to a Table 6 verdict that only sampling seeds stand behind
ONE_MODEL = " (one trained model per variant: sampling noise only)"


@dataclass(frozen=True)
class Measure:
    """A mean, its standard deviation over ``seeds`` seeds."""

    mean: float
    std: float = 0.0
    seeds: int = 1

    def __str__(self) -> str:
        return f"{self.mean:.4g} ± {self.std:.2g}" if self.std else f"{self.mean:.4g}"


def order(a: Measure, b: Measure, direction: int) -> str:
    """``"better"`` / ``"worse"`` (``a`` against ``b``) or ``"tie"`` when ``|a - b| <= spread(a) + spread(b)``."""
    if abs(a.mean - b.mean) <= a.std + b.std:
        return "tie"
    return "better" if direction * (a.mean - b.mean) < 0 else "worse"


@dataclass(frozen=True)
class Claim:
    table: str
    claim: str
    evidence: str
    verdict: str


def verdict(a: Measure, b: Measure, direction: int, expected: str, seed: str = "seed") -> str:
    """The verdict on the paper's claim that ``a`` is ``expected`` (``"better"`` / ``"worse"``) than ``b``;
    ``seed`` names what the seeds behind the spread are (``"training seed"`` for trained tokenizers)."""
    outcome = order(a, b, direction)
    seeds = min(a.seeds, b.seeds)
    if seeds < MIN_SEEDS:
        lean = "equal" if outcome == "tie" else ("as the paper" if outcome == expected else "against the paper")
        return f"indicative ({seeds} {seed}{'' if seeds == 1 else 's'}): {lean}"
    return "tie" if outcome == "tie" else ("reproduced" if outcome == expected else "not reproduced")


def measure(row: dict[str, Any], metric: str) -> Measure:
    """``row[metric]`` with ``row[metric_std]`` over ``row["seeds"]`` seeds (one when absent)."""
    return Measure(float(row[metric]), float(row.get(f"{metric}_std", 0.0) or 0.0), int(row.get("seeds", 1)))


def _find(rows: Sequence[dict[str, Any]], sampler: str, tokenizer: str | None = None) -> dict[str, Any] | None:
    return next((r for r in rows if r.get("sampler") == sampler
                 and (tokenizer is None or r.get("tokenizer") == tokenizer)), None)


def table1(tokenizers: dict[str, dict[str, dict[str, Any]]]) -> list[Claim]:
    """Perplexity per level of every VQGAN2-R / VQGAN2-C tokenizer in the run."""
    claims = []
    for kind, high, low in (("vqgan2-r", "top", "bottom"), ("vqgan2-c", "bottom", "top")):
        text = f"{kind.upper()} has the higher perplexity on its {high} level"
        found = [(variant, report) for variant, per in tokenizers.items() for report in per.values()
                 if report.get("kind") == kind and f"ppl_{high}" in report]
        if not found:
            claims.append(Claim("Table 1", text, f"no {kind} tokenizer in this run", "not tested"))
            continue
        variant, report = found[0]
        a, b = measure(report, f"ppl_{high}"), measure(report, f"ppl_{low}")
        evidence = f"{variant}: perplexity {high} {a}, {low} {b}"
        claims.append(Claim("Table 1", text, evidence, verdict(a, b, -1, "better", seed="training seed")))
    return claims


def table6(best: Sequence[dict[str, Any]], metric: str, per_seed_training: bool) -> list[Claim]:
    """StraIT-R against the cascade and single-level MaskGIT, and StraIT-C against StraIT-R; without
    ``per_seed_training`` a verdict beyond the spread is qualified with :data:`ONE_MODEL`."""
    strait_r, strait_c = _find(best, "stratified", "vqgan2-r"), _find(best, "stratified", "vqgan2-c")
    pairs = [("StraIT-R is better than the MaskGIT cascade", strait_r, _find(best, "cascade"), "better"),
             ("StraIT-R is better than single-level MaskGIT", strait_r, _best_of(best, "maskgit", metric), "better"),
             ("StraIT-C is worse than StraIT-R", strait_c, strait_r, "worse")]
    claims = []
    for text, a, b, expected in pairs:
        if a is None or b is None or metric not in a or metric not in b:
            claims.append(Claim("Table 6", f"{text} ({metric})", "a variant is missing", "not tested"))
            continue
        ma, mb = measure(a, metric), measure(b, metric)
        evidence = f"{metric}: {a['variant']} {ma} vs {b['variant']} {mb}"
        outcome = verdict(ma, mb, DIRECTIONS[metric], expected)
        if not per_seed_training and outcome in ("reproduced", "not reproduced"):
            outcome += ONE_MODEL
        claims.append(Claim("Table 6", f"{text} ({metric})", evidence, outcome))
    return claims


def _best_of(rows: Sequence[dict[str, Any]], sampler: str, metric: str) -> dict[str, Any] | None:
    """The best row of a sampler kind (e.g. the better of MaskGIT-f16 and MaskGIT-f8)."""
    candidates = [r for r in rows if r.get("sampler") == sampler and metric in r]
    return min(candidates, key=lambda r: DIRECTIONS[metric] * float(r[metric])) if candidates else None


def table7(rows: Sequence[dict[str, Any]], metric: str) -> list[Claim]:
    """Among StraIT-R's step allocations with the same total, the most top-heavy against the most bottom-heavy."""
    text = f"more top steps help more than more bottom steps ({metric})"
    points = [r for r in rows if r.get("sampler") == "stratified" and r.get("tokenizer") == "vqgan2-r"
              and r["sweep"] in ("default", "steps") and metric in r]
    by_total: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    for row in points:
        top, bottom = (int(s) for s in str(row["steps"]).split("+"))
        by_total.setdefault(top + bottom, []).append((top, row))
    totals = [t for t, allocations in by_total.items() if len({top for top, _ in allocations}) >= 2]
    if not totals:
        return [Claim("Table 7", text, "no steps sweep with two allocations of the same total", "not tested")]
    allocations = sorted(by_total[max(totals)], key=lambda item: item[0])
    low, high = allocations[0][1], allocations[-1][1]
    ma, mb = measure(high, metric), measure(low, metric)
    evidence = f"{high['variant']}: steps {high['steps']} {ma} vs {low['steps']} {mb}"
    return [Claim("Table 7", text, evidence, verdict(ma, mb, DIRECTIONS[metric], "better"))]


def table10(rows: Sequence[dict[str, Any]], metric: str, default_schedule: str = "cosine") -> list[Claim]:
    """StraIT-R's concave schedules (mean over those swept) against its convex ones."""
    text = f"concave mask schedules beat convex ones ({metric})"
    schedules: dict[str, Measure] = {}
    variant = None
    for row in rows:
        if row.get("sampler") != "stratified" or row.get("tokenizer") != "vqgan2-r" or metric not in row:
            continue
        if row["sweep"] == "schedule":
            schedules[str(row["value"])] = measure(row, metric)
        elif row["sweep"] == "default":
            schedules.setdefault(default_schedule, measure(row, metric))
        variant = row["variant"]
    concave = [schedules[s] for s in CONCAVE if s in schedules]
    convex = [schedules[s] for s in CONVEX if s in schedules]
    if not concave or not convex:
        return [Claim("Table 10", text, "no schedule sweep over both concave and convex schedules", "not tested")]
    a, b = _average(concave), _average(convex)
    listed = ", ".join(f"{s} {schedules[s]}" for s in (*CONCAVE, *CONVEX) if s in schedules)
    evidence = f"{variant}: concave mean {a} vs convex mean {b} ({listed})"
    return [Claim("Table 10", text, evidence, verdict(a, b, DIRECTIONS[metric], "better"))]


def _average(measures: Sequence[Measure]) -> Measure:
    """Mean of the means and of the spreads, over the fewest seeds among them."""
    return Measure(sum(m.mean for m in measures) / len(measures), sum(m.std for m in measures) / len(measures),
                   min(m.seeds for m in measures))


def check_claims(rows: Sequence[dict[str, Any]], best: Sequence[dict[str, Any]],
                 tokenizers: dict[str, dict[str, dict[str, Any]]], per_seed_training: bool) -> list[Claim]:
    """Every claim, on every quality metric the run reports.

    Args:
        rows: one row per variant and sweep point (means, ``<metric>_std``, ``sampler``, ``tokenizer``).
        best: one row per variant (its best temperature), as in the results table.
        tokenizers: ``{variant: {tokenizer id: report}}`` with ``kind`` and ``ppl_<level>`` per report.
        per_seed_training: whether every variant was trained once per seed (``train_per_seed``).
    """
    metrics = [m for m in QUALITY_METRICS if any(m in r for r in rows)]
    return (table1(tokenizers) + [c for m in metrics for c in table6(best, m, per_seed_training)]
            + [c for m in metrics for c in table7(rows, m)] + [c for m in metrics for c in table10(rows, m)])


def claims_markdown(claims: Sequence[Claim], spread: str) -> str:
    """The claims section of results.md; ``spread`` says which seeds the spread covers (:func:`spread_text`)."""
    out = ["## The paper's claims, checked by this run", "",
           f"{spread} A difference counts only when the means are further apart than the sum of their spreads; "
           f"otherwise it is a tie. With fewer than {MIN_SEEDS} seeds behind a side there is no spread, and the "
           "verdict is only indicative.", "",
           "| table | claim | measured | verdict |", "|---|---|---|---|"]
    out += [f"| {c.table} | {c.claim} | {c.evidence} | {c.verdict} |" for c in claims]
    return "\n".join(out) + "\n"


def spread_text(sampling_seeds: Sequence[int], training_seeds: dict[str, Sequence[int]],
                per_seed_training: bool) -> str:
    """Which seeds a compare run's spread covers: sampling seeds, and the training seeds of its models.

    Args:
        sampling_seeds: the seeds every sweep point was sampled and scored with.
        training_seeds: per variant, the ``run.seed`` of each model trained for it.
        per_seed_training: whether every variant was trained once per seed (``train_per_seed``).
    """
    if per_seed_training:
        return (f"The spread is the std over seeds {list(sampling_seeds)}, each a model trained with that seed "
                "and sampled with it: it covers training and sampling noise.")
    used = sorted({s for seeds in training_seeds.values() for s in seeds})
    trained = (f"training seed {used[0]}" if len(used) == 1 else "training seeds " + ", ".join(
        f"{v} {s[0]}" for v, s in training_seeds.items()))
    return (f"The spread is the std over sampling seeds {list(sampling_seeds)} of one trained model per variant "
            f"({trained}): it covers sampling noise, not training noise (`train_per_seed: true` adds it).")
