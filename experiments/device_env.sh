# Sourced by the device-call scripts (gpu_*.sh): Optuna and its needs from the carried wheels (.whl, fetched by
# experiments/device_wheels.sh) where the GPU host lacks them, the repository on PYTHONPATH, unbuffered output.
export PYTHONUNBUFFERED=1
if python3 -c "import optuna" 2>/dev/null; then
  export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
else
  [ -d /tmp/site/optuna ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
  export PYTHONPATH=.:/tmp/site
fi
