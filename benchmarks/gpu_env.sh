# Sourced by the GPU scripts: PY is the Python to run; on the GPU image, which has torch but not
# stratagen, the wheels carried in .whl/ (`bash benchmarks/gpu_paper_scale.sh --prepare`) are installed.
PY="${PYTHON:-python3}"
if ! "$PY" -c "import stratagen.cli" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
