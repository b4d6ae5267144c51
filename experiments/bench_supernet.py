"""Training-step throughput of the supernet vs the extracted static model of the same subnet.

One step = set the active subnet (supernet only, as training does), forward, cross-entropy,
backward, SGD step (the optimizer of ``search_space.training``). The largest and the smallest
subnet of a space, each as the supernet and as its static extraction. Timings are interleaved in
rounds (supernet, static, supernet, ...) so machine noise hits both alike; medians over rounds.
Peak memory per case comes from a separate child process per case (peak RSS; on CUDA also
torch.cuda.max_memory_allocated), so the cases do not inflate each other's peaks.

Target (issue 2): supernet step within 1.3x of the static model at batch 256 on CUDA.

    PYTHONPATH=. python experiments/bench_supernet.py                     # CPU, batch 32
    PYTHONPATH=. python experiments/bench_supernet.py --device cuda       # batch 256, bf16, channels-last
    PYTHONPATH=. python experiments/bench_supernet.py --smoke             # seconds, checks the script

Writes experiments/results/supernet_bench/supernet_bench_<device>.json and .md (and copies to $OUT when set).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from search_space import SearchSpace, Subnet, Supernet
from search_space.io import atomic_write_json, atomic_write_text
from search_space.train_dist import resolve_device
from search_space.training import TrainConfig, build_optimizer

RESULTS = Path(__file__).resolve().parent / "results" / "supernet_bench"
CASES = ["largest/supernet", "largest/static", "smallest/supernet", "smallest/static"]
TARGET_RATIO = 1.3


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--space", default="cifar", help="space preset or config file (default cifar)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 32 on CPU, 256 on CUDA")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default: 9 CPU, 15 CUDA)")
    p.add_argument("--steps", type=int, default=None, help="steps per round and case (default: 2 CPU, 10 CUDA)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per case first (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: steadier on a shared "
                   "machine; the ratio, not the absolute speed, is what is measured)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN autotune (off in training)")
    p.add_argument("--smoke", action="store_true", help="tiny run to check the script (results not saved)")
    p.add_argument("--memory-case", help=argparse.SUPPRESS)  # internal: child process measuring one case
    args = p.parse_args(argv)
    cuda = resolve_device(args.device).type == "cuda"
    args.batch_size = args.batch_size or (4 if args.smoke else 256 if cuda else 32)
    args.rounds = args.rounds or (2 if args.smoke else 15 if cuda else 9)
    args.steps = args.steps or (1 if args.smoke else 10 if cuda else 2)
    if args.smoke:
        args.warmup = 1
    return args


class StepCase:
    """One model training one subnet on a fixed batch; ``step()`` trains once. ``supernet`` is
    given when ``model`` is the supernet (each step then activates ``arch``, as training does)."""

    def __init__(self, model: torch.nn.Module, arch, supernet: Supernet | None, batch_size: int, device: torch.device,
                 space: SearchSpace):
        self.model, self.arch, self.supernet = model, arch, supernet
        cuda = device.type == "cuda"
        fmt = torch.channels_last if cuda else torch.contiguous_format
        self.model.to(device, memory_format=fmt).train()
        self.optimizer = build_optimizer(self.model, TrainConfig(epochs=1, batch_size=batch_size))
        cfg = space.config
        x = torch.randn(batch_size, cfg.in_channels, arch.resolution, arch.resolution, device=device)
        self.x = x.contiguous(memory_format=fmt)
        self.y = torch.randint(0, cfg.num_classes, (batch_size,), device=device)
        self.autocast = torch.bfloat16 if cuda else None
        self.device = device

    @classmethod
    def build(cls, supernet: Supernet, case: str, batch_size: int, device: torch.device) -> "StepCase":
        """Case ``"largest/supernet"``, ``"smallest/static"``, ...: the static model is extracted."""
        which, kind = case.split("/")
        space = supernet.space
        arch = space.largest() if which == "largest" else space.smallest()
        if kind == "supernet":
            return cls(supernet, arch, supernet, batch_size, device, space)
        return cls(supernet.extract(arch), arch, None, batch_size, device, space)

    def step(self) -> None:
        """set_active (supernet), forward, loss, backward, optimizer step."""
        if self.supernet is not None:
            self.supernet.set_active(self.arch)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            logits = self.model(self.x)
        F.cross_entropy(logits.float(), self.y).backward()
        self.optimizer.step()

    def timed(self, steps: int) -> float:
        """Seconds per step over ``steps`` steps."""
        sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(self.device)
        return (time.perf_counter() - start) / steps


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (timings must include it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_memory(args, case: str) -> dict:
    """Child-process mode: build one case, run a few steps, report its peak memory."""
    device = resolve_device(args.device)
    if case == "baseline":  # the interpreter with torch imported: subtract it to compare models
        return {"peak_rss_mb": peak_rss_mb()}
    which, kind = case.split("/")
    space = SearchSpace.from_config(args.space)
    arch = space.largest() if which == "largest" else space.smallest()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if kind == "supernet":
        supernet = Supernet(space)
        runner = StepCase(supernet, arch, supernet, args.batch_size, device, space)
    else:  # built directly, so the supernet never inflates this process's peak
        runner = StepCase(Subnet(arch, space.block_specs(arch)), arch, None, args.batch_size, device, space)
    for _ in range(args.warmup + 1):
        runner.step()
    sync(device)
    out = {"peak_rss_mb": peak_rss_mb()}
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM on Linux (ru_maxrss would be wrong in a child:
    Linux carries the parent's high-water mark over fork + exec)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_in_child(args, case: str) -> dict:
    """Run :func:`measure_memory` in a fresh interpreter and parse its JSON line."""
    cmd = [sys.executable, __file__, "--device", args.device, "--space", args.space, "--threads", str(args.threads),
           "--batch-size",
           str(args.batch_size), "--warmup", str(args.warmup), "--memory-case", case]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ.copy())
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine(device: torch.device) -> dict:
    """What the numbers were measured on."""
    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "host": platform.node(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_1min": os.getloadavg()[0], "torch": torch.__version__, "python": platform.python_version()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
    except (OSError, StopIteration):
        pass
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def run(args) -> dict:
    """Time every case in interleaved rounds; return the results dict."""
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    torch.manual_seed(0)
    supernet = Supernet(SearchSpace.from_config(args.space))
    runners = {case: StepCase.build(supernet, case, args.batch_size, device) for case in CASES}
    for r in runners.values():
        for _ in range(args.warmup):
            r.step()
    times = {name: [] for name in runners}
    bar = _progress(args.rounds)
    for _ in range(args.rounds):
        for name, r in runners.items():
            times[name].append(r.timed(args.steps))
        bar.update(1)
    bar.close()
    cases = {}
    for name, r in runners.items():
        med = statistics.median(times[name])
        cases[name] = {"arch": str(r.arch), "ms_per_step": med * 1e3, "img_per_s": args.batch_size / med,
                       "ms_min": min(times[name]) * 1e3, "ms_max": max(times[name]) * 1e3}
        cases[name].update(memory_in_child(args, name))
    ratios = {w: cases[f"{w}/supernet"]["ms_per_step"] / cases[f"{w}/static"]["ms_per_step"] for w in ("largest", "smallest")}
    # Per-round ratios pair measurements taken seconds apart, so slow load drift cancels out.
    paired = {w: statistics.median(a / b for a, b in zip(times[f"{w}/supernet"], times[f"{w}/static"]))
              for w in ("largest", "smallest")}
    return {"benchmark": "supernet training step vs extracted static model", "device": device.type,
            "machine": machine(device), "settings": {"space": args.space, "batch_size": args.batch_size,
            "rounds": args.rounds, "steps_per_round": args.steps, "warmup": args.warmup,
            "dtype": "bf16 autocast" if device.type == "cuda" else "fp32",
            "memory_format": "channels_last" if device.type == "cuda" else "contiguous",
            "cudnn_benchmark": args.cudnn_benchmark, "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])},
            "cases": cases, "ratio_supernet_over_static": ratios, "paired_ratio_median": paired,
            "baseline_rss_mb": memory_in_child(args, "baseline")["peak_rss_mb"],
            "target": f"supernet step <= {TARGET_RATIO}x static at batch 256 on CUDA",
            "target_met": all(v <= TARGET_RATIO for v in ratios.values()) if device.type == "cuda" and
            args.batch_size == 256 else None}


def markdown(res: dict) -> str:
    """A short report table."""
    m, s = res["machine"], res["settings"]
    where = m.get("gpu", m["cpu"])
    lines = [f"# Supernet vs static training step ({res['device']}, {where})", "",
             f"{m['date']}, torch {m['torch']}, {m['torch_threads']} thread(s), load average "
             f"{m['load_average_1min']:.1f} on {m['cpu_count']} cores, batch {s['batch_size']}, {s['dtype']}, {s['memory_format']}, "
             f"median of {s['rounds']} interleaved rounds x {s['steps_per_round']} steps; `{s['command']}`", "",
             "| subnet | model | ms/step (median) | min-max | img/s | peak RSS MB | peak GPU MB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, c in res["cases"].items():
        which, kind = name.split("/")
        gpu = f"{c['peak_gpu_mb']:.0f}" if "peak_gpu_mb" in c else "-"
        rss = f"{c['peak_rss_mb']:.0f}" if "peak_rss_mb" in c else "-"
        lines.append(f"| {which} | {kind} | {c['ms_per_step']:.2f} | {c['ms_min']:.2f}-{c['ms_max']:.2f} | "
                     f"{c['img_per_s']:.0f} | {rss} | {gpu} |")
    r, pr = res["ratio_supernet_over_static"], res["paired_ratio_median"]
    lines += ["", f"Supernet / static step time (ratio of medians): largest {r['largest']:.2f}x, smallest "
              f"{r['smallest']:.2f}x; median of per-round ratios: largest {pr['largest']:.2f}x, smallest "
              f"{pr['smallest']:.2f}x "
              f"(target {res['target']}: {'met' if res['target_met'] else 'not met' if res['target_met'] is False else 'n/a here'}).",
              f"Peak RSS is per case in a fresh process; the interpreter with torch imported alone peaks at "
              f"{res['baseline_rss_mb']:.0f} MB."]
    return "\n".join(lines) + "\n"


def _progress(total: int):
    """tqdm on stderr when installed, else a silent stand-in."""
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc="rounds", file=sys.stderr)
    except ImportError:
        class _Quiet:
            def update(self, k):
                pass

            def close(self):
                pass

        return _Quiet()


def main(argv=None) -> int:
    """Run the experiment, write its files, print the table."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_case:
        print(json.dumps(measure_memory(args, args.memory_case)))
        return 0
    res = run(args)
    text = markdown(res)
    print(text)
    if args.smoke:
        return 0
    name = f"supernet_bench_{res['device']}"
    targets = [RESULTS] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else [])
    for folder in targets:
        atomic_write_json(folder / f"{name}.json", res)
        atomic_write_text(folder / f"{name}.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
