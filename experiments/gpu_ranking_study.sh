#!/usr/bin/env bash
# One device call of the ranking study (experiments/ranking_study.py): train cifar_pool's supernet with the GPU
# config's recipe (8.3-minute budget) and one student rule, then score the stand-alone set's archs on it.
# Carry .data, .whl and runs/rank_in (holding standalone.json); results come back as $OUT/rank_<rule>_r<N>.tgz.
#   [BUDGET=MINUTES] bash experiments/gpu_ranking_study.sh RULE [NUM_RANDOM]   (BUDGET: training minutes, default 8.3)
set -euo pipefail
rule=$1; nr=${2:-2}; budget=${BUDGET:-8.3}; tag=${rule}_r${nr}${BUDGET:+_b$BUDGET}
. experiments/device_env.sh
run=runs/rank_$tag
mkdir -p $run
nvidia-smi --query-gpu=name,driver_version --format=csv > $run/card.txt
python3 -m hwnas run --config experiments/configs/cifar_pool_gpu.yaml --set train.time_budget_min=$budget \
    --set train.students=$rule --set train.num_random=$nr --out $run --until train > $run/train.log 2>&1 \
    || { tail -30 $run/train.log; exit 1; }
tail -4 $run/train.log
python3 experiments/ranking_study.py score --checkpoint $run/supernet/supernet.pt --label "$rule, num_random $nr" \
    --truth runs/rank_in/standalone.json --out $run/ranking
tar czf $OUT/rank_$tag.tgz --exclude='*.pt' --exclude='*.journal' -C runs rank_$tag
