#!/usr/bin/env bash
# Official VAR checkpoints scored as the VAR paper scores them (ADM's evaluator), in one device call.
#
#     VAE=vae_ch160v4096z32.pth VAR="var_d16.pth var_d20.pth" REF=VIRTUAL_imagenet256_labeled.npz \
#     INCEPTION=weights-inception-2015-12-05-6726825d.pth bash benchmarks/gpu_var_official.sh
#
# For each VAR checkpoint: `stratagen convert var-official` (VAR's FID settings: cfg 1.5 on the
# `var` ramp, top-k 900, top-p 0.96, more_smooth off), then `stratagen eval --reference REF
# --reference-only` under torchrun on every GPU present: PER_CLASS images per class (default 50,
# i.e. 50,000 for ImageNet's 1000 classes), split over the processes by batch, scored on rank 0 as
# ADM does (fid_adm, sfid_adm, is_adm, precision_adm and recall_adm with k = 3). Prints them beside
# the FIDs that VAR's README publishes; results in $OUT/<checkpoint>/eval.json and $OUT/summary.md.
#
# Nothing can be downloaded on the GPU machine: the four files must be there (carried or mounted),
# and the wheels prepared with `bash benchmarks/gpu_paper_scale.sh --prepare` (carry .whl).
# DEVICE=cpu NPROC=1 PER_CLASS=1 runs the very same steps on the CPU, as
# tests/test_gpu_scripts.py does on the official code's tiny fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${VAE:?VAE=the VQVAE weights (vae_ch160v4096z32.pth)}" "${VAR:?VAR=one or more var_d*.pth}"
: "${REF:?REF=an ADM reference batch (VIRTUAL_imagenet256_labeled.npz)}"
: "${INCEPTION:?INCEPTION=torch-fidelity Inception weights (weights-inception-2015-12-05-6726825d.pth)}"
source benchmarks/gpu_env.sh  # PY; installs the carried wheels where stratagen is missing
export PYTHONUNBUFFERED=1
OUT="${OUT:-gpu_results}/var_official"
DEVICE="${DEVICE:-cuda}"
NPROC="${NPROC:-$("$PY" -c 'import torch; print(max(1, torch.cuda.device_count()))')}"
PER_CLASS="${PER_CLASS:-50}"
BATCH="${BATCH:-250}"
mkdir -p "$OUT"

for checkpoint in $VAR; do
    name=$(basename "$checkpoint" .pth)
    rm -rf "${OUT:?}/$name"  # the converter refuses a folder that holds a run
    "$PY" -m stratagen.cli convert var-official --vae "$VAE" --var "$checkpoint" \
        ${PATCH_NUMS:+--patch-nums "$PATCH_NUMS"} "$OUT/$name"
    start=$(date +%s)
    "$PY" -m torch.distributed.run --standalone --nproc-per-node="$NPROC" -m stratagen.cli eval "$OUT/$name" \
        --reference "$REF" --reference-only --inception-weights "$INCEPTION" --set "run.device=$DEVICE" \
        --set "eval.samples_per_class=$PER_CLASS" --set "eval.batch_size=$BATCH" > "$OUT/$name.log" 2>&1 \
        || { tail -n 20 "$OUT/$name.log"; exit 1; }
    echo "$name: sampled and scored in $(( $(date +%s) - start )) s on $NPROC process(es)"
done

"$PY" - "$OUT" $VAR <<'PYEOF'
import json, pathlib, sys
# FID-50K that VAR's README publishes (ADM evaluator, VIRTUAL_imagenet256_labeled.npz)
PUBLISHED_FID = {"var_d16": 3.55, "var_d20": 2.95, "var_d24": 2.33, "var_d30": 1.97}
out = pathlib.Path(sys.argv[1])
keys = ("fid_adm", "sfid_adm", "is_adm", "precision_adm", "recall_adm")
lines = ["| checkpoint | images | " + " | ".join(keys) + " | published FID | s/image |", "|---" * (len(keys) + 4) + "|"]
for checkpoint in sys.argv[2:]:
    name = pathlib.Path(checkpoint).stem
    s = json.loads((out / name / "eval.json").read_text())["samples"]
    published = PUBLISHED_FID.get(name)
    lines.append(f"| {name} | {s['count']} | " + " | ".join(f"{s[k]:.4g}" if k in s else "-" for k in keys)
                 + f" | {published if published is not None else '-'} | {s['sec_per_image']:.4f} |")
text = "\n".join(lines) + "\n"
(out / "summary.md").write_text(text)
print(text)
PYEOF
