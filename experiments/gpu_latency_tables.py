"""Build and validate the CUDA latency tables of a preset (default cifar) on one GPU, in one call.

    PYTHONPATH=. python experiments/gpu_latency_tables.py            # on the GPU machine, writes to $OUT
    PYTHONPATH=. python experiments/gpu_latency_tables.py --smoke    # a minute on a CPU: tiny space, ORT backend

For each configuration (batch 1 and batch 256, bf16, channels-last, CUDA graphs) it builds
``<space>_<gpu>_cuda_b<N>_bf16.json`` (every unique block spec + calibration networks), then
validates each table on random subnets disjoint from its calibration ones, writing the tables
and their reports (``.md``, ``.csv``, ``.png``) to ``$OUT``: 8 files for the two configurations.
Re-running with the same ``$OUT`` resumes. Prints a summary table at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

import torch  # noqa: E402

import latency_tables as lt  # noqa: E402
from latency_tables.build import default_device_name  # noqa: E402
from search_space import SearchSpace  # noqa: E402

# A space small enough for --smoke on a CPU in about a minute.
SMOKE_SPACE = {
    "name": "smoke", "in_channels": 3, "num_classes": 10, "resolutions": [16],
    "stem": {"channels": 8, "kernel": 3, "stride": 1},
    "defaults": {"widths": [0.5, 1.0], "blocks": ["mbconv", "fused_mbconv", "pconv", "resnet"], "kernels": [3],
                 "expansions": {"mbconv": [3], "fused_mbconv": [1], "pconv": [2], "resnet": [1]}},
    "stages": [{"channels": 16, "stride": 2, "depths": [1, 2]}, {"channels": 32, "stride": 2, "depths": [1]}],
}
SMOKE_PLAN = dict(min_rounds=2, max_rounds=3, round_ms=0.5, warmup_ms=2.0)
# GPU timings are quiet (no other process on the device), so fewer rounds than on a shared CPU.
GPU_PLAN = dict(min_rounds=5, max_rounds=12, round_ms=5.0, warmup_ms=20.0)
PASSES = 2  # over calibration and validation nets (the CPU default of 3 fights a shared machine's noise)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_latency_out"), help="output folder (default $OUT)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256], help="default: 1 256")
    p.add_argument("--dtype", default="bf16", choices=["fp32", "fp16", "bf16"], help="default bf16")
    p.add_argument("--calibration-nets", type=int, default=100, help="default 100")
    p.add_argument("--n", type=int, default=200, help="validation subnets per table (default 200)")
    p.add_argument("--space", default="cifar", help="preset name or YAML file (default cifar; e.g. cifar_res)")
    p.add_argument("--smoke", action="store_true", help="tiny space and counts; ORT CPU backend when there is no GPU")
    return p.parse_args(argv)


def configurations(args) -> tuple[SearchSpace, list[tuple[str, object]], int, int]:
    """(space, [(table name, backend)], calibration nets, validation n) for this run."""
    if args.smoke:
        space = SearchSpace.from_config(SMOKE_SPACE)
        if torch.cuda.is_available():
            backends = [lt.make_backend("cuda", batch_size=b, dtype=args.dtype, **SMOKE_PLAN) for b in args.batch_sizes]
        else:
            print("smoke: no CUDA device, the onnxruntime CPU backend stands in (fp32)", flush=True)
            backends = [lt.make_backend("onnxruntime", batch_size=b, **SMOKE_PLAN) for b in args.batch_sizes]
        return space, [(_table_name(space, be), be) for be in backends], 6, 6
    space = SearchSpace.from_config(args.space)
    backends = [lt.make_backend("cuda", batch_size=b, dtype=args.dtype, **GPU_PLAN) for b in args.batch_sizes]
    return space, [(_table_name(space, be), be) for be in backends], args.calibration_nets, args.n


def _table_name(space: SearchSpace, backend) -> str:
    kind = "cuda" if backend.spec == "cuda" else "ort"
    gpu = default_device_name(backend).rsplit("-b", 1)[0]
    return f"{space.name}_{gpu}_{kind}_b{backend.batch_size}_{backend.dtype}"


def main(argv=None) -> int:
    """Build + validate each configuration; print a summary."""
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    space, configs, n_cal, n_val = configurations(args)
    t_start, built = time.time(), []
    for name, backend in configs:  # both tables first: if time runs out, tables beat reports
        print(f"== build {name}: {backend}", flush=True)
        t0 = time.time()
        table = lt.build_table(space, backend, out / f"{name}.json", calibration_nets=n_cal, calibration_passes=PASSES,
                               command=f"experiments/gpu_latency_tables.py (batch {backend.batch_size}, {backend.dtype})")
        built.append((name, table, time.time() - t0))
        print(f"   built in {time.time() - t0:.0f} s (total {time.time() - t_start:.0f} s)", flush=True)
    rows = []
    for name, table, t_build in built:
        print(f"== validate {name}", flush=True)
        t0 = time.time()
        summary = lt.validate_table(table, n=n_val, out_dir=out, name=f"latency_{name}_validation", passes=PASSES,
                                    command=f"experiments/gpu_latency_tables.py{' --smoke' if args.smoke else ''}")
        rows.append((name, table, t_build, time.time() - t0, summary))
        print(f"   validated in {time.time() - t0:.0f} s (total {time.time() - t_start:.0f} s)", flush=True)
    fp = rows[0][1].fingerprint
    print(f"\nmachine: GPU {fp.get('gpu_name')} driver {fp.get('gpu_driver')} CUDA {fp.get('cuda')} torch {fp.get('torch')}; "
          f"CPU {fp.get('cpu_model')}")
    print(f"{'table':34s} {'blocks':>6s} {'build s':>7s} {'val s':>6s} {'model':>22s} {'tbl w10':>7s} {'tau':>5s} "
          f"{'MAPE':>6s} {'raw w10':>7s} {'FLOPs w10':>9s} {'FLOPs tau':>9s} {'repeat':>6s}")
    for name, table, tb, tv, s in rows:
        t, r, f = s["scores"]["table"], s["scores"]["raw block sum"], s["scores"]["FLOPs proxy"]
        print(f"{name:34s} {len(table.data['blocks']):6d} {tb:7.0f} {tv:6.0f} {table.calibration.model:>22s} "
              f"{100 * t['within_10']:6.1f}% {t['kendall_tau']:5.2f} {100 * t['mape']:5.1f}% {100 * r['within_10']:6.1f}% "
              f"{100 * f['within_10']:8.1f}% {f['kendall_tau']:9.2f} {100 * s['repeatability']['within_10']:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
