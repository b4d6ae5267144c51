#!/usr/bin/env bash
# Wheels for the GPU host, which has torch, timm, onnxruntime and scikit-learn but no Optuna and no
# internet: `hwnas run`'s search stage needs Optuna there. Run here (in the repository root); each
# device call that runs a search then carries `.whl` (ignored via .git/info/exclude) and sources
# experiments/device_env.sh, which installs them where Optuna is missing (see /work/.library/device/README.md). Versions: the ones this VM's `pip install -e .` resolved.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    optuna==5.1.0 sqlalchemy==2.1.9 alembic==1.20.1 colorlog==6.12.0 mako==1.4.3
ls -la .whl && du -sh .whl
