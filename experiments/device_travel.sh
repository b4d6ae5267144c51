#!/usr/bin/env bash
# The device tool sends the working tree (tracked + untracked-not-ignored + carried paths) up to 64 MiB.
# JPEG-CIFAR-10 (.data/cifar10_jpeg.npz, 56 MB) plus the tracked tree (~16 MB, most of it
# experiments/results) is over that, so before a GPU call that carries the data:
#   experiments/device_travel.sh slim      # experiments/results/ stops travelling (index only, files untouched)
#   ... device calls with carry [".data", ...] ...
#   experiments/device_travel.sh restore   # back to normal; run it before committing
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  slim)
    git rm -r -q --cached experiments/results
    grep -qx "/experiments/results/" .git/info/exclude || echo "/experiments/results/" >> .git/info/exclude
    echo "experiments/results/ no longer travels; tracked tree: $(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1) bytes" ;;
  restore)
    sed -i '/^\/experiments\/results\/$/d' .git/info/exclude
    git reset -q experiments/results
    echo "experiments/results/ tracked again" ;;
  *) echo "usage: experiments/device_travel.sh slim|restore" >&2; exit 2 ;;
esac
