"""Where the time of one sandwich training step goes: host (Python + dispatch) or GPU kernels.

Runs ``search_space.training.sandwich_step`` on the ``cifar`` supernet with random images (no
dataset needed) at several batch sizes; per batch size, the same 10 sandwiches are first run
untimed (cuDNN's first call of each conv shape), then ``--steps`` steps are timed and profiled
with ``torch.profiler``. Reports per step: wall time, summed GPU kernel time, the number of kernel
launches, and the GPU-busy fraction (kernel time / wall). Each timed step ends with a synchronise,
so the host cannot queue the next step early: the wall time here is an upper bound that depends on
the host's speed. Compare the kernel time with training's own step time (epoch time / steps): where
they are close, training is GPU-bound and fewer launches would not pay.

    PYTHONPATH=. python experiments/profile_sandwich_step.py --device cuda        # batch 512, 1024, 2048
    PYTHONPATH=. python experiments/profile_sandwich_step.py --smoke              # CPU, seconds

Writes experiments/results/supernet_bench/sandwich_step_profile_<device>.json/.md (and to $OUT when set).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from experiments.bench_supernet import machine
from search_space import SearchSpace, Supernet
from search_space.io import atomic_write_json, atomic_write_text
from search_space.training import TrainConfig, build_optimizer, sandwich_archs, sandwich_step

RESULTS = Path(__file__).resolve().parent / "results" / "supernet_bench"


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--batch-sizes", default="512,1024,2048", help="comma-separated (default 512,1024,2048)")
    p.add_argument("--steps", type=int, default=20, help="profiled steps per batch size (default 20)")
    p.add_argument("--smoke", action="store_true", help="CPU, batch 16, 2 steps: checks the script (not saved)")
    args = p.parse_args(argv)
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        p.error(f"--batch-sizes {args.batch_sizes!r} is invalid; expected comma-separated ints like 512,1024")
    if args.smoke:
        args.device, args.batch_sizes, args.steps = "cpu", [16], 2
    return args


def profile_batch(space: SearchSpace, batch: int, steps: int, device: torch.device) -> dict:
    """Warm up, then time and profile ``steps`` sandwich steps at ``batch``; one result row."""
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    net = Supernet(space).to(device, memory_format=torch.channels_last if cuda else torch.preserve_format)
    config = TrainConfig(epochs=1, batch_size=batch, students="sandwich")
    opt = build_optimizer(net, config)
    rng = np.random.default_rng(0)
    lists = [sandwich_archs(space, rng, config.num_random, config.students) for _ in range(10)]
    size = space.config.resolutions[-1]
    x = torch.randn(batch, space.config.in_channels, size, size, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if cuda else x
    y = torch.randint(0, space.config.num_classes, (batch,), device=device)
    autocast = torch.bfloat16 if cuda else None

    def run(n: int) -> list[float]:
        times = []
        for i in range(n):
            start = time.perf_counter()
            sandwich_step(net, net, lists[i % len(lists)], x, y, opt, config, autocast)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return times

    run(len(lists))
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    wall = run(steps)  # timed without the profiler's own overhead
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        run(steps)
    events = prof.key_averages()
    if cuda:
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        kernel_s = sum(e.self_device_time_total for e in kernels) / 1e6 / steps
        launches = sum(e.count for e in kernels) / steps
    else:
        kernel_s, launches = None, None
    step_s = statistics.median(wall)
    top = sorted((e for e in events if e.device_type == torch.autograd.DeviceType.CPU),
                 key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    return {"batch_size": batch, "step_s_median": step_s, "step_s_all": wall, "gpu_kernel_s_per_step": kernel_s,
            "gpu_busy_fraction": kernel_s / step_s if cuda else None, "kernel_launches_per_step": launches,
            "img_per_s": batch / step_s, "peak_gpu_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
            "top_cpu_ops": [{"name": e.key, "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                             "calls_per_step": e.count / steps} for e in top]}


def markdown(res: dict) -> str:
    """The result table."""
    lines = [f"# Sandwich step profile ({res['machine'].get('gpu', res['machine']['cpu'])})", "",
             f"{res['machine']['date']}; `{res['command']}`; cifar supernet, sandwich rule (largest, smallest, "
             "2 random), bf16 + channels-last on CUDA; medians over the timed steps", "",
             "| batch | step ms | GPU kernel ms | GPU busy | launches/step | img/s | peak GPU GiB |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in res["rows"]:
        busy = "-" if r["gpu_busy_fraction"] is None else f"{r['gpu_busy_fraction']:.0%}"
        mem = "-" if r["peak_gpu_mem_gib"] is None else f"{r['peak_gpu_mem_gib']:.1f}"
        kernel_ms, launches = ("-", "-") if busy == "-" else (f"{1e3 * r['gpu_kernel_s_per_step']:.1f}",
                                                            f"{r['kernel_launches_per_step']:.0f}")
        lines.append(f"| {r['batch_size']} | {1e3 * r['step_s_median']:.1f} | {kernel_ms} | "
                     f"{busy} | {launches} | {r['img_per_s']:.0f} | {mem} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Profile every batch size, write the report, print the table."""
    args = parse_args(argv)
    device = torch.device(args.device)
    space = SearchSpace.from_config("cifar")
    rows = []
    for b in args.batch_sizes:
        rows.append(profile_batch(space, b, args.steps, device))
        print(f"batch {b}: {1e3 * rows[-1]['step_s_median']:.1f} ms/step", file=sys.stderr)
    res = {"machine": machine(device), "command": " ".join(["profile_sandwich_step.py"] + sys.argv[1:]), "rows": rows}
    text = markdown(res)
    folders = ([] if args.smoke else [RESULTS]) + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else [])
    for folder in folders:
        atomic_write_json(folder / f"sandwich_step_profile_{device.type}.json", res)
        atomic_write_text(folder / f"sandwich_step_profile_{device.type}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
