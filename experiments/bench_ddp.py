"""DDP supernet training on 1..N GPUs of one host: images/s per GPU, scaling efficiency, accuracy.

For every N of ``--gpus`` (those above the visible GPU count are skipped) it launches

    python -m torch.distributed.run --standalone --nproc_per_node=N -m hwnas supernet train RECIPE ...

with the ``train`` recipe of a run config (default ``experiments/configs/cifar_pool_gpu.yaml``:
``cifar_pool`` on JPEG-CIFAR-10, batch 1024) for ``--epochs E`` (default 4) or, instead, the same
``--time-budget-min M`` on every N. From each run's metrics.jsonl it reads images/s (the median
epoch after the first, which pays cuDNN's autotuning; all epochs when there is one), the last
validation accuracy of the largest and smallest subnets, and each rank's peak CUDA memory. Writes
``OUT/NAME.json`` and ``OUT/NAME.md`` (OUT: ``--out``, default ``$OUT`` or experiments/results/ddp);
the runs' checkpoints and logs stay under ``--work``. Needs plain torch (+ numpy, PyYAML): no
optuna or ray.

    # one device call on a multi-GPU host (4 epochs on each N, then the tables)
    PYTHONPATH=. python experiments/bench_ddp.py --gpus 1,2,4,8 --epochs 4
    # the same time budget on each N (one call per N for long budgets; --include merges them)
    PYTHONPATH=. python experiments/bench_ddp.py --gpus 8 --time-budget-min 8 --include OLD/ddp_budget.json
    # CPU smoke run with gloo (digits recipe), not a scaling measurement
    PYTHONPATH=. python experiments/bench_ddp.py --device cpu --gpus 1,2 --epochs 2 \\
        --config experiments/configs/quickstart.yaml --out experiments/results/ddp --name ddp_cpu_smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from search_space.errors import UserError  # noqa: E402
from search_space.io import atomic_write_json, atomic_write_text  # noqa: E402

DEFAULT_CONFIG = ROOT / "experiments" / "configs" / "cifar_pool_gpu.yaml"
SMOKE_LABEL = "CPU/gloo smoke run: checks the launch and the reading of the metrics, NOT a scaling measurement"
# NVLink multicast stays off on shared hosts (the device notes): kept for the torchrun children too.
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


class BenchError(UserError):
    """Bad input to this script: reported in one line, exit 2."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", default="1,2,4,8", help="process counts to run, comma-separated (default 1,2,4,8); "
                   "on CUDA those above the visible GPUs are skipped")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, default=None, help="train this many epochs on every N (default 4)")
    length.add_argument("--time-budget-min", type=float, default=None,
                        help="instead of --epochs: the same time budget on every N (planned per N)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="run config whose train section is the recipe "
                   "(default experiments/configs/cifar_pool_gpu.yaml)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cuda (NCCL) or cpu (gloo, a smoke run)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size instead of the recipe's")
    p.add_argument("--data", default=None, help="dataset file instead of the config's")
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "experiments" / "results" / "ddp"),
                   help="folder for NAME.json and NAME.md (default $OUT, else experiments/results/ddp)")
    p.add_argument("--name", default=None, help="output file stem (default ddp_scaling, or ddp_budget with a budget)")
    p.add_argument("--work", default=None,
                   help="folder for the runs' checkpoints and logs (default runs/bench_ddp/NAME)")
    p.add_argument("--timeout-s", type=float, default=None, help="stop a run that takes longer (recorded as failed)")
    p.add_argument("--include", nargs="*", default=[], metavar="JSON",
                   help="earlier outputs of this script whose runs (other N, same recipe) join the tables")
    args = p.parse_args(argv)
    if args.epochs is None and args.time_budget_min is None:
        args.epochs = 4
    args.name = args.name or ("ddp_scaling" if args.epochs is not None else "ddp_budget")
    return args


def parse_gpus(text: str) -> list[int]:
    """``"1,2,4"`` -> [1, 2, 4] (sorted, unique); anything else is a BenchError."""
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1:
        raise BenchError(f"--gpus {text!r} is invalid: expected positive process counts such as 1,2,4,8")
    return counts


def visible_gpus(device: str) -> int | None:
    """How many GPUs torch sees (None on the CPU)."""
    if device == "cpu":
        return None
    import torch

    if not torch.cuda.is_available():
        raise BenchError("--device cuda but torch sees no GPU: expected a GPU host, or --device cpu for a gloo "
                         "smoke run")
    return torch.cuda.device_count()


def recipe_args(args: argparse.Namespace, out: Path) -> list[str]:
    """``hwnas supernet train`` arguments of the config's recipe with this benchmark's length,
    batch size, data and device; ``out`` is the run folder."""
    from hwnas.run_config import load_run_config, supernet_train_args

    cfg = load_run_config(args.config)
    train = cfg["train"]
    train["epochs"] = args.epochs if args.epochs is not None else train["epochs"]
    train["time_budget_min"] = args.time_budget_min
    if args.batch_size is not None:
        train["batch_size"] = args.batch_size
    if args.data is not None:
        cfg["dataset"]["path"] = args.data
    data = cfg["dataset"]["path"]
    if data is not None and not (ROOT / data).exists() and not Path(data).exists():
        raise BenchError(f"dataset file {data!r} not found: expected it (e.g. .data/cifar10_jpeg.npz carried to "
                         "the host), or --data PATH")
    for flag, value in (("--epochs", args.epochs), ("--batch-size", train["batch_size"])):
        if value is not None and value < 1:
            raise BenchError(f"{flag} {value} is invalid: expected an integer >= 1")
    if args.time_budget_min is not None and not args.time_budget_min > 0:
        raise BenchError(f"--time-budget-min {args.time_budget_min} is invalid: expected a positive number of minutes")
    space = cfg["space"]
    if isinstance(space, str) and Path(space).is_absolute() and Path(space).is_relative_to(ROOT):
        space = str(Path(space).relative_to(ROOT))  # runs start in ROOT; the same recipe on every host
    return supernet_train_args(cfg, space, out, args.device) + ["--quiet"]


def launch(n: int, train_args: list[str], run_dir: Path, device: str, timeout_s: float | None) -> dict:
    """One torchrun launch of ``n`` processes; returns its command, exit status, wall seconds and
    the tail of its log (the whole log is ``run_dir/train.log``)."""
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run each time (this script's own work folder)
    run_dir.mkdir(parents=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "hwnas", *train_args]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, **SAFE_ENV, "PYTHONPATH": path, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    if device == "cpu":
        env["OMP_NUM_THREADS"] = "1"
    start = time.perf_counter()
    with open(run_dir / "train.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # torchrun and its workers: their own process group
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = "timeout"
    wall = time.perf_counter() - start
    lines = (run_dir / "train.log").read_text(errors="replace").splitlines()
    error = next((line for line in lines if line.startswith("hwnas: error:")), None)
    return {"command": " ".join(["torchrun", *cmd[3:]]), "rc": rc, "wall_s": round(wall, 1), "error": error,
            "log_tail": lines[-15:]}


def summarise(n: int, run_dir: Path) -> dict:
    """Throughput, accuracy and memory of one finished run, from its metrics.jsonl (and the plan
    in its checkpoint, for a budget run)."""
    path = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    if not records:
        return {"n": n, "epochs": 0}
    steady = records[1:] or records  # the first epoch pays cuDNN's autotuning of every conv shape
    img_s = statistics.median(r["img_per_s"] for r in steady)
    last_acc = next((r for r in reversed(records) if "val_acc_largest" in r), {})
    peaks = next((r["peak_mem_mib"] for r in reversed(records) if "peak_mem_mib" in r), None)
    out = {"n": n, "epochs": records[-1]["epoch"], "world_size": records[-1].get("world_size"),
           "img_per_s": round(img_s, 1), "img_per_s_per_gpu": round(img_s / n, 1),
           "epoch_s_median": round(statistics.median(r["time_s"] for r in steady), 3),
           "train_s": round(sum(r["time_s"] for r in records), 1),
           "val_acc_largest": last_acc.get("val_acc_largest"), "val_acc_smallest": last_acc.get("val_acc_smallest"),
           "peak_mem_mib_per_rank": [round(m) for m in peaks] if peaks else None,
           "stopped": records[-1].get("stopped"), "records": records}
    if (run_dir / "supernet.pt").exists():
        from search_space.checkpoint import read_checkpoint

        out["plan"] = read_checkpoint(run_dir / "supernet.pt")["meta"].get("plan")
    return out


def machine(device: str) -> dict:
    """The card (nvidia-smi) or CPU, the host's cores and the software versions."""
    import torch

    info = {"host_cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}
    if device == "cuda":
        try:
            query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
            smi = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
        except (OSError, subprocess.TimeoutExpired):
            smi = []
        info.update(card=smi[0].split(",")[0].strip() if smi else torch.cuda.get_device_name(0),
                    nvidia_smi=smi, gpus_visible=torch.cuda.device_count(), nccl=str(torch.cuda.nccl.version()))
    else:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), platform.processor())
        info.update(card=f"CPU ({cpu}), gloo", load_average_1min=round(os.getloadavg()[0], 2))
    return info


def merge_included(runs: list[dict], files: list[str], recipe: list[str], mode: dict, card: str) -> list[dict]:
    """``runs`` plus those of earlier outputs for other N, checked to share recipe, mode and card."""
    merged = {r["n"]: r for r in runs}
    for file in files:
        try:
            old = json.loads(Path(file).read_text())
        except (OSError, ValueError) as e:
            raise BenchError(f"--include {file!r} is not readable JSON ({type(e).__name__}): expected an output "
                             "of this script") from None
        if old.get("recipe_args") != recipe or old.get("mode") != mode:
            raise BenchError(f"--include {file!r} ran another recipe or length: expected the same config, "
                             "--batch-size and --epochs/--time-budget-min")
        if old.get("machine", {}).get("card") != card:
            raise BenchError(f"--include {file!r} ran on {old.get('machine', {}).get('card')!r}, this run on "
                             f"{card!r}: expected the same card")
        for r in old.get("runs", []):
            merged.setdefault(r["n"], {**r, "from": str(file)})
    return [merged[n] for n in sorted(merged)]


def add_efficiency(runs: list[dict]) -> None:
    """Scaling efficiency of each run: its images/s per GPU over that of N=1 (when N=1 ran)."""
    base = next((r.get("img_per_s_per_gpu") for r in runs if r["n"] == 1 and r.get("img_per_s_per_gpu")), None)
    for r in runs:
        r["efficiency_vs_1"] = round(r["img_per_s_per_gpu"] / base, 3) if base and r.get("img_per_s_per_gpu") else None


def markdown(result: dict) -> str:
    """The result as a short markdown report."""
    pct = lambda v: f"{100 * v:.2f}%" if isinstance(v, float) else "–"  # noqa: E731
    mode = result["mode"]
    length = f"{mode['epochs']} epochs" if mode.get("epochs") else f"a {mode['time_budget_min']:g}-minute budget"
    lines = [f"# DDP supernet training: {length} on 1..N processes ({result['date']})", ""]
    if result["label"]:
        lines += [f"**{result['label']}.**", ""]
    m = result["machine"]
    load = f" (1-minute load average {m['load_average_1min']})" if "load_average_1min" in m else ""
    lines += [f"Card: {m['card']}; host cores {m['host_cores']}{load}; torch {m['torch']}, Python {m['python']}.",
              f"Command: `{result['command']}` (config `{result['config']}`).",
              f"Recipe: `hwnas {' '.join(result['recipe_args'])}`.", "",
              "| N | images/s | images/s per GPU | efficiency vs N=1 | epochs | median epoch s | val largest | "
              "val smallest | peak MiB (max rank) | wall s | status |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in result["runs"]:
        peak = max(r["peak_mem_mib_per_rank"]) if r.get("peak_mem_mib_per_rank") else "–"
        eff = f"{100 * r['efficiency_vs_1']:.1f}%" if r.get("efficiency_vs_1") else "–"
        status = "ok" if r.get("rc") == 0 else f"failed ({r.get('rc')}{': ' + r['error'] if r.get('error') else ''})"
        status += f", stopped at {r['stopped']}" if r.get("stopped") else ""
        status += f", from {Path(r['from']).name}" if r.get("from") else ""
        lines.append(f"| {r['n']} | {r.get('img_per_s', '–')} | {r.get('img_per_s_per_gpu', '–')} | {eff} | "
                     f"{r.get('epochs', 0)} | {r.get('epoch_s_median', '–')} | {pct(r.get('val_acc_largest'))} | "
                     f"{pct(r.get('val_acc_smallest'))} | {peak} | {r.get('wall_s', '–')} | {status} |")
    if result["skipped"]:
        lines += ["", f"Skipped (more processes than visible GPUs): N = {', '.join(map(str, result['skipped']))}."]
    lines += ["", "images/s: global, the median epoch after the first (training steps only, no evaluation or "
              "checkpoint); efficiency: images/s per GPU over N=1's. Accuracy: the last epoch's BN-recalibrated "
              "validation accuracy. Per-run commands and logs' tails are in the JSON beside this file.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every run finished, 1 when one failed, 2 on bad input."""
    args = parse_args(argv)
    try:
        counts = parse_gpus(args.gpus)
        gpus = visible_gpus(args.device)
        work = Path(args.work or ROOT / "runs" / "bench_ddp" / args.name)
        recipe = recipe_args(args, Path("RUN"))
        batch = int(recipe[recipe.index("--batch-size") + 1])
        run_counts = [n for n in counts if gpus is None or n <= gpus]
        if not run_counts:
            raise BenchError(f"--gpus {args.gpus} but only {gpus} GPU(s) visible: expected counts up to {gpus}")
        if bad := [n for n in run_counts if batch % n]:
            raise BenchError(f"batch size {batch} cannot be split over {bad} processes: expected counts dividing it")
        mode = {"epochs": args.epochs} if args.epochs is not None else {"time_budget_min": args.time_budget_min}
        if missing := [f for f in args.include if not Path(f).is_file()]:
            raise BenchError(f"--include {missing[0]!r} not found: expected an earlier output of this script")
        host = machine(args.device)
        merge_included([], args.include, recipe, mode, host["card"])  # other recipe or card: refused now
    except UserError as e:
        print(f"bench_ddp: error: {e}", file=sys.stderr)
        return 2
    runs = []
    for n in run_counts:  # the report is rewritten after every run: a call cut short keeps what ran
        run_dir = work / f"n{n}"
        print(f"bench_ddp: N={n} ...", file=sys.stderr, flush=True)
        launched = launch(n, recipe_args(args, run_dir), run_dir, args.device, args.timeout_s)
        runs.append({**summarise(n, run_dir), **launched})
        r = runs[-1]
        print(f"bench_ddp: N={n} rc={r['rc']} {r.get('img_per_s_per_gpu', '-')} img/s/GPU, val largest "
              f"{r.get('val_acc_largest')}, {r['wall_s']} s", file=sys.stderr, flush=True)
        write_report(args, argv, host, mode, recipe, merge_included(runs, args.include, recipe, mode, host["card"]),
                     [n for n in counts if n not in run_counts])
    print(f"bench_ddp: wrote {Path(args.out) / (args.name + '.md')} and .json", file=sys.stderr)
    return 0 if all(r.get("rc") == 0 for r in runs) else 1


def write_report(args: argparse.Namespace, argv: list[str] | None, host: dict, mode: dict, recipe: list[str],
                 runs: list[dict], skipped: list[int]) -> None:
    """Write OUT/NAME.json and OUT/NAME.md (atomically) for the runs so far."""
    add_efficiency(runs)
    result = {"label": SMOKE_LABEL if args.device == "cpu" else None,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python", "experiments/bench_ddp.py", *(sys.argv[1:] if argv is None else argv)]),
              "config": os.path.relpath(args.config, ROOT) if Path(args.config).is_absolute() else args.config,
              "mode": mode, "recipe_args": recipe, "machine": host, "skipped": skipped, "runs": runs}
    out = Path(args.out)
    atomic_write_json(out / f"{args.name}.json", result)
    atomic_write_text(out / f"{args.name}.md", markdown(result))

if __name__ == "__main__":
    sys.exit(main())
