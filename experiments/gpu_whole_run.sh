#!/usr/bin/env bash
# One device call of the whole `hwnas run` on the GPU host: runs (or resumes) the run in runs/whole for at most
# LIMIT seconds, then packs what it has (no weights) into $OUT/whole.tgz. Call it again at once, on the same warm
# machine, until the log says the report is written: every stage resumes (the 1 GB checkpoint cannot leave the
# machine, so all calls must find it there). Carry .data and .whl.
#   LIMIT=570 bash experiments/gpu_whole_run.sh experiments/configs/cifar_pool_gpu.yaml --set train.time_budget_min=8.3
# (8.3 minutes: the training stage and its start fit one 10-minute call)
set -uo pipefail
config=${1:-experiments/configs/cifar_pool_gpu.yaml}; shift || true
. experiments/device_env.sh
run=runs/whole
mkdir -p $run
[ -f $run/card.txt ] || { nvidia-smi --query-gpu=name,driver_version --format=csv > $run/card.txt 2>/dev/null; nproc >> $run/card.txt; }
timeout --signal=INT ${LIMIT:-570} python3 -m hwnas run --config "$config" --out $run "$@" 2>&1 | tr '\r' '\n' | grep -v 'it/s\]$' >> $run/whole.log
echo "hwnas run exit: ${PIPESTATUS[0]} (124: stopped at LIMIT; invocations.json says 'interrupted in STAGE'; call again)" | tee -a $run/whole.log
tail -5 $run/whole.log
[ -n "${OUT:-}" ] && tar czf $OUT/whole.tgz --exclude='*.pt' --exclude='*.journal' --exclude='*.onnx' -C runs whole
exit 0
