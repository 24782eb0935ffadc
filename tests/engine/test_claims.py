"""Verdicts on the paper's claims and ties over seeds, on hand-made rows."""
import pytest

from stratagen.engine.comparison.aggregate import aggregate, mark_ties
from stratagen.engine.comparison.claims import (Measure, check_claims, claims_markdown, order, spread_text, table1,
                                                table6, table7, table10)


def row(variant, sampler, tokenizer, fid, fid_std=0.0, sweep="default", value="-", steps="9+3", seeds=3):
    return {"variant": variant, "sampler": sampler, "tokenizer": tokenizer, "sweep": sweep, "value": value,
            "steps": steps, "fid": fid, "fid_std": fid_std, "seeds": seeds}


def variants(r_fid, c_fid=9.0, cascade_fid=8.0, f16_fid=8.5, f8_fid=12.0, std=0.1):
    return [row("StraIT-R", "stratified", "vqgan2-r", r_fid, std),
            row("StraIT-C", "stratified", "vqgan2-c", c_fid, std),
            row("MaskGIT-cascade", "cascade", "vqgan", cascade_fid, std),
            row("MaskGIT-f16", "maskgit", "vqgan", f16_fid, std), row("MaskGIT-f8", "maskgit", "vqgan", f8_fid, std)]


def verdicts(claims):
    return [c.verdict for c in claims]


def test_order_is_a_tie_within_the_summed_spreads():
    assert order(Measure(1.0, 0.2), Measure(1.5, 0.2), direction=1) == "better"
    assert order(Measure(1.0, 0.3), Measure(1.5, 0.2), direction=1) == "tie"  # 0.5 <= 0.3 + 0.2
    assert order(Measure(1.0, 0.0), Measure(1.5, 0.0), direction=-1) == "worse"  # higher is better


def test_table6_reproduced_not_reproduced_and_tie():
    claims = table6(variants(r_fid=5.0), "fid", per_seed_training=True)
    assert verdicts(claims) == ["reproduced", "reproduced", "reproduced"]
    # StraIT-R worse than the cascade, single-level MaskGIT's best (f16, 8.5) within the spread, StraIT-C better
    claims = table6(variants(r_fid=8.45, c_fid=6.0, cascade_fid=7.0, std=0.05), "fid", per_seed_training=True)
    assert verdicts(claims) == ["not reproduced", "tie", "not reproduced"]
    assert "StraIT-R 8.45 ± 0.05 vs MaskGIT-cascade 7 ± 0.05" in claims[0].evidence
    assert "MaskGIT-f16" in claims[1].evidence  # the better single-level baseline is the one compared


def test_table6_not_tested_without_the_variants():
    rows = [r for r in variants(r_fid=5.0) if r["sampler"] != "cascade"]
    assert verdicts(table6(rows, "fid", per_seed_training=True)) == ["not tested", "reproduced", "reproduced"]


def test_table7_compares_top_heavy_with_bottom_heavy_allocations_of_equal_total():
    rows = [row("StraIT-R", "stratified", "vqgan2-r", 5.0, 0.1),
            row("StraIT-R", "stratified", "vqgan2-r", 6.0, 0.1, sweep="steps", value="3+9", steps="3+9"),
            row("StraIT-R", "stratified", "vqgan2-r", 4.0, 0.1, sweep="steps", value="2+1", steps="2+1")]
    (claim,) = table7(rows, "fid")
    assert claim.verdict == "reproduced" and "steps 9+3 5 ± 0.1 vs 3+9 6 ± 0.1" in claim.evidence
    rows[1]["fid"] = 4.0
    assert verdicts(table7(rows, "fid")) == ["not reproduced"]
    assert verdicts(table7(rows[:1], "fid")) == ["not tested"]


def test_table10_concave_against_convex_schedules():
    rows = [row("StraIT-R", "stratified", "vqgan2-r", 5.0, 0.2),  # default: cosine
            row("StraIT-R", "stratified", "vqgan2-r", 5.4, 0.2, sweep="schedule", value="square"),
            row("StraIT-R", "stratified", "vqgan2-r", 7.0, 0.2, sweep="schedule", value="sqrt"),
            row("StraIT-R", "stratified", "vqgan2-r", 6.0, 0.2, sweep="schedule", value="linear")]
    (claim,) = table10(rows, "fid")
    assert claim.verdict == "reproduced" and "concave mean 5.2 ± 0.2 vs convex mean 7 ± 0.2" in claim.evidence
    rows[2]["fid"] = 5.5  # 0.3 apart, spreads sum to 0.4
    assert verdicts(table10(rows, "fid")) == ["tie"]
    assert verdicts(table10(rows[:2], "fid")) == ["not tested"]


def test_table1_perplexity_per_level():
    reports = {"StraIT-R": {"vq": {"kind": "vqgan2-r", "ppl_top": 90.0, "ppl_bottom": 40.0, "seeds": 2}},
               "StraIT-C": {"vq": {"kind": "vqgan2-c", "ppl_top": 60.0, "ppl_bottom": 30.0, "seeds": 2}}}
    assert verdicts(table1(reports)) == ["reproduced", "not reproduced"]
    assert verdicts(table1({})) == ["not tested", "not tested"]
    for per in reports.values():  # one trained tokenizer each: no spread over training
        per["vq"]["seeds"] = 1
    assert verdicts(table1(reports)) == ["indicative (1 training seed): as the paper", "indicative (1 training seed): against the paper"]


def test_one_seed_gives_indicative_verdicts_never_bare_ones():
    one = [{**r, "seeds": 1, "fid_std": 0.0} for r in variants(r_fid=8.45, c_fid=6.0, cascade_fid=7.0)]
    assert verdicts(table6(one, "fid", per_seed_training=True)) == ["indicative (1 seed): against the paper",
                                            "indicative (1 seed): as the paper",
                                            "indicative (1 seed): against the paper"]
    # one side with one seed is enough to make the claim indicative; equal means with one seed: "equal"
    mixed = variants(r_fid=7.0, cascade_fid=7.0)
    mixed[2] = {**mixed[2], "seeds": 1, "fid_std": 0.0}
    assert verdicts(table6(mixed, "fid", per_seed_training=True))[0] == "indicative (1 seed): equal"
    rows = [row("StraIT-R", "stratified", "vqgan2-r", 5.0, seeds=1),
            row("StraIT-R", "stratified", "vqgan2-r", 6.0, sweep="steps", value="3+9", steps="3+9", seeds=1),
            row("StraIT-R", "stratified", "vqgan2-r", 7.0, sweep="schedule", value="sqrt", seeds=1)]
    text = claims_markdown(check_claims(rows, rows, {}, per_seed_training=False), spread="The spread is nothing.")
    assert "| reproduced |" not in text and "| not reproduced |" not in text and "| tie |" not in text
    assert text.count("| indicative (1 seed): as the paper |") == 2  # Table 7 and Table 10
    assert "The spread is nothing. A difference counts only" in text


def test_spread_text_names_the_sampling_and_training_seeds():
    assert spread_text([0, 1, 2], {"a": [0], "b": [0]}, False) == (
        "The spread is the std over sampling seeds [0, 1, 2] of one trained model per variant (training seed 0): "
        "it covers sampling noise, not training noise (`train_per_seed: true` adds it).")
    assert "(training seeds a 0, b 7)" in spread_text([0], {"a": [0], "b": [7]}, False)
    assert spread_text([3, 4], {"a": [3, 4]}, True).startswith(
        "The spread is the std over seeds [3, 4], each a model trained with that seed and sampled with it")


def test_check_claims_covers_every_table_and_renders():
    rows = variants(r_fid=5.0)
    claims = check_claims(rows, rows, {}, per_seed_training=True)
    assert [c.table for c in claims] == ["Table 1"] * 2 + ["Table 6"] * 3 + ["Table 7", "Table 10"]
    text = claims_markdown(claims, spread="")
    assert text.count("| not tested |") == 4 and text.count("| reproduced |") == 3


def test_a_table6_verdict_on_one_trained_model_per_variant_says_its_spread_is_sampling_noise_only():
    one_model = table6(variants(r_fid=8.45, c_fid=6.0, cascade_fid=7.0, std=0.05), "fid", per_seed_training=False)
    assert verdicts(one_model) == ["not reproduced (one trained model per variant: sampling noise only)", "tie",
                                   "not reproduced (one trained model per variant: sampling noise only)"]


def test_aggregate_mean_and_std_over_seeds_and_ties():
    per_seed = [{"variant": v, "sweep": "default", "value": "-", "seed": s, "steps": "9+3", "fid": f}
                for v, fids in (("a", (1.0, 3.0)), ("b", (2.5, 3.5)), ("c", (9.0, 9.2))) for s, f in zip((0, 1), fids)]
    rows = aggregate(per_seed)
    assert [(r["variant"], r["fid"], r["fid_std"], r["seeds"]) for r in rows] == [
        ("a", 2.0, 1.4142, 2), ("b", 3.0, 0.7071, 2), ("c", 9.1, 0.1414, 2)]  # sample std: |a - b| / sqrt(2)
    assert "seed" not in rows[0] and rows[0]["steps"] == "9+3"
    assert mark_ties(rows, "fid") == ["2 ± 1.4 (best)", "3 ± 0.71 (tie)", "9.1 ± 0.14"]
