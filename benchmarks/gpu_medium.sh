#!/usr/bin/env bash
# The medium comparison at its GPU size, in one device call (issue 23, item 5):
#
#     bash benchmarks/gpu_paper_scale.sh --prepare       # here, once: the wheels, into .whl/
#     device run --carry .whl -- bash benchmarks/gpu_medium.sh
#
# runs `stratagen compare configs/compare/strait_vs_maskgit_medium_128.yaml` (StraIT-R, StraIT-C, the
# MaskGIT cascade, MaskGIT-f16 and -f8 on the photographs at 128 px with wider priors, three training
# seeds, the choice-temperature sweep) and writes to $OUT/medium the files the CPU medium comparison
# commits under benchmarks/results/ (results.md/.csv, claims.csv, tokenizers.md, figures/) and
# stages.txt, every stage's time (of every call: compare.log is appended to). Cut off by the call's
# time limit, the same command on a still-warm machine continues where it stopped and then writes them. CONFIG=another compare config runs that one instead
# (tests/test_gpu_scripts.py runs a tiny one on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh  # PY; installs the carried wheels where stratagen is missing
export PYTHONUNBUFFERED=1
CONFIG="${CONFIG:-configs/compare/strait_vs_maskgit_medium_128.yaml}"
OUT="${OUT:-gpu_results}/medium"
mkdir -p "$OUT"
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
start=$(date +%s)
status=0
echo "== compare started $(date -u +%FT%TZ)" >> "$OUT/compare.log"  # a continued call appends
"$PY" -m stratagen.cli compare "$CONFIG" >> "$OUT/compare.log" 2>&1 || status=$?
"$PY" benchmarks/collect_results.py "$CONFIG" "$OUT" --log "$OUT/compare.log"
echo "compare exit $status after $(( $(date +%s) - start )) s" | tee -a "$OUT/stages.txt"
[[ $status == 0 ]] || tail -n 20 "$OUT/compare.log"
cat "$OUT/stages.txt" "$OUT/results.md" 2>/dev/null || true
exit $status
