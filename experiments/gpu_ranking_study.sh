#!/usr/bin/env bash
# One device call of the ranking study (experiments/ranking_study.py): train cifar_pool's supernet with the GPU
# config's recipe (8.3-minute budget) and one student rule, then score the stand-alone set's archs on it, and,
# with FT, also after a short training from their inherited weights (ranking_study.py score --finetune).
# Carry .data, .whl and runs/rank_in (holding standalone.json); results come back as $OUT/rank_<rule>_r<N>.tgz.
# Every step resumes: call it again at once on the warm machine (the checkpoint stays there) to finish
# what LIMIT (seconds, default 570) cut off.
#   [BUDGET=MINUTES] [FT="2:0.04 2:0.2"] [LIMIT=570] bash experiments/gpu_ranking_study.sh RULE [NUM_RANDOM]
set -uo pipefail
rule=$1; nr=${2:-2}; budget=${BUDGET:-8.3}; tag=${rule}_r${nr}${BUDGET:+_b$BUDGET}
end=$((SECONDS + ${LIMIT:-570}))
. experiments/device_env.sh
run=runs/rank_$tag
mkdir -p $run
nvidia-smi --query-gpu=name,driver_version --format=csv > $run/card.txt
left() { echo $((end - SECONDS)); }
timeout --signal=INT $(left) python3 -m hwnas run --config experiments/configs/cifar_pool_gpu.yaml \
    --set train.time_budget_min=$budget --set train.students=$rule --set train.num_random=$nr --out $run \
    --until train >> $run/train.log 2>&1 || tail -30 $run/train.log
tail -4 $run/train.log
ft=(); for f in ${FT:-}; do ft+=(--finetune "$f"); done
[ -f $run/supernet/supernet.pt ] && timeout --signal=INT $(left) python3 experiments/ranking_study.py score \
    --checkpoint $run/supernet/supernet.pt --label "$rule, num_random $nr" --truth runs/rank_in/standalone.json \
    --data .data/cifar10_jpeg.npz --out $run/ranking "${ft[@]}" 2>&1 | grep -v '^final: training' | tee -a $run/score.log
[ -n "${OUT:-}" ] && tar czf $OUT/rank_$tag.tgz --exclude='*.pt' --exclude='*.journal' -C runs rank_$tag
exit 0
