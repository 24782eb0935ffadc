#!/usr/bin/env bash
# Paper-scale speed on one GPU, in one device call; JSON results under $OUT (or ./gpu_results).
#
#   - top- and bottom-prior training steps, StraIT-R (configs/strait_r.yaml: 48 x 768 top prior,
#     16 x 768 bottom prior), bf16 autocast, one process (DDP/FSDP add communication on top);
#   - full StraIT 18+6 sampling at batch 32, 64, 128, without and with guidance (scale 0.2);
#   - MaskGIT-f16 12-step sampling (configs/maskgit_f16.yaml with 12 steps) at the same batches;
#   - the prior training steps again with compiled blocks and with activation checkpointing;
#   - a short demo StraIT-R run under torchrun with FSDP2 priors (nccl), sampled afterwards.
# Every row: seconds per call and per image, model FLOPs (FlopCounterMode), and MFU against a
# bf16 matmul peak measured in the same run (see README "Speed").
#
# The GPU image has torch but neither stratagen nor pydantic. Prepare the wheels here, once:
#     bash benchmarks/gpu_paper_scale.sh --prepare        # writes .whl/ (ignored by git)
# then run it there, carrying .whl:
#     device run --carry .whl -- bash benchmarks/gpu_paper_scale.sh
# SCALE=demo runs the same commands on the demo configs (a CPU check of the plumbing).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
    rm -rf .whl && mkdir -p .whl
    .venv/bin/python -m pip wheel --quiet --no-deps --no-build-isolation -w .whl .
    .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        pydantic==2.14.3 "pydantic-core==$(.venv/bin/python -c 'import pydantic_core; print(pydantic_core.__version__)')" \
        "annotated-types==$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("annotated-types"))')" \
        "typing-inspection==$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("typing-inspection"))')" \
        braceexpand==0.1.7 webdataset==1.0.2
    ls -la .whl
    exit 0
fi

OUT="${OUT:-gpu_results}"
mkdir -p "$OUT"
source benchmarks/gpu_env.sh  # PY; installs the carried wheels where stratagen is missing
export PYTHONUNBUFFERED=1
BENCH=("$PY" -m stratagen.cli bench --json --repeats 3)  # python -m: torchrun's way too

if [[ "${SCALE:-paper}" == demo ]]; then
    STRAIT=configs/demo/strait_r.yaml MASKGIT=configs/demo/maskgit_f16.yaml BATCHES=1,8 TRAIN_BATCH=8
    DEVICE=(--set run.device=cpu)
else
    STRAIT=configs/strait_r.yaml MASKGIT=configs/maskgit_f16.yaml BATCHES=32,64,128 TRAIN_BATCH=64
    DEVICE=(--set run.device=cuda)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

# prior training steps (bf16 autocast on CUDA); batch per GPU TRAIN_BATCH, the paper's 256 via
# gradient accumulation or more GPUs
"${BENCH[@]}" "$STRAIT" "${DEVICE[@]}" --parts priors \
    --set priors.top.train.batch_size=$TRAIN_BATCH --set priors.bottom.train.batch_size=$TRAIN_BATCH \
    > "$OUT/strait_priors_train.json"
# the same steps with each transformer block compiled (train.compile), and recomputing activations
"${BENCH[@]}" "$STRAIT" "${DEVICE[@]}" --parts priors \
    --set priors.top.train.batch_size=$TRAIN_BATCH --set priors.bottom.train.batch_size=$TRAIN_BATCH \
    --set priors.top.train.compile=true --set priors.bottom.train.compile=true \
    > "$OUT/strait_priors_train_compiled.json"
"${BENCH[@]}" "$STRAIT" "${DEVICE[@]}" --parts priors \
    --set priors.top.train.batch_size=$TRAIN_BATCH --set priors.bottom.train.batch_size=$TRAIN_BATCH \
    --set priors.top.train.checkpoint_activations=true --set priors.bottom.train.checkpoint_activations=true \
    > "$OUT/strait_priors_train_checkpointed.json"
# full StraIT 18+6 sampling, without and with guidance
"${BENCH[@]}" "$STRAIT" "${DEVICE[@]}" --parts sample --batches $BATCHES > "$OUT/strait_sample.json"
# MaskGIT-f16, 12 steps
"${BENCH[@]}" "$MASKGIT" "${DEVICE[@]}" --parts sample --batches $BATCHES \
    --set sampler.stage.steps=12 > "$OUT/maskgit_f16_sample.json"

# the process-group paths (nccl on CUDA, gloo on the CPU) end to end: the demo StraIT-R run trained
# under torchrun with its priors sharded by FSDP2 (bf16 parameters, fp32 reduction on CUDA) and
# accumulating 2 micro-batches, then sampled; its log shows the losses
rm -rf /tmp/stratagen_fsdp
"$PY" -m torch.distributed.run --standalone --nproc-per-node=1 -m stratagen.cli train configs/demo/strait_r.yaml \
    "${DEVICE[@]}" --set run.dir=/tmp/stratagen_fsdp --set tokenizers.vq.train.steps=100 \
    --set priors.top.train.steps=100 --set priors.bottom.train.steps=100 \
    --set priors.top.train.parallel=fsdp --set priors.bottom.train.parallel=fsdp \
    --set priors.top.train.accumulate=2 --set priors.bottom.train.accumulate=2 2>&1 | tail -n 20 | tee "$OUT/fsdp_train.txt"
"$PY" -m stratagen.cli sample /tmp/stratagen_fsdp --count 8 --seed 0 2>&1 | tail -n 3 | tee -a "$OUT/fsdp_train.txt"

"$PY" - "$OUT" <<'PYEOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for f in sorted(out.glob("*.json")):
    result = json.loads(f.read_text())
    print(f"{f.name}: {result['device']}, peaks", {d: round(max(p.values()) / 1e12, 1) for d, p in result["peaks"].items()},
          "TFLOP/s")
    for r in result["rows"]:
        print(f"  {r['component']:<18} {r['what']:<34} b{r['batch']:<4} {r['dtype']:<8} "
              f"{r['seconds_per_image']:.4f} s/image  {r['achieved_flops'] / 1e12:7.1f} TFLOP/s  MFU {r['mfu']:.1%}")
PYEOF
