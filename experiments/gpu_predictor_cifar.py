"""Accuracy-predictor benchmark on JPEG-CIFAR-10, on one GPU, within one 9-minute call.

1. loads a trained supernet (``hwnas supernet train``) and JPEG-CIFAR-10 (decoded once, cached
   in $HWNAS_CACHE, default runs/cache);
2. picks the faster memory layout (channels-last or not) on a short interleaved probe;
3. measures as many spread-sampled subnets as a time budget allows, at least a floor (1,500),
   each BN-recalibrated and scored on the whole validation split (5,000 images carved out of
   the training set, never trained on) under bf16 autocast; resumable (runs/gpu_predictor_cifar/);
4. re-measures 100 of them with other calibration images (the measurement's repeatability);
5. fits every predictor on at most 1,000 subnets, scores Kendall tau / Spearman / RMSE on all the
   others (at least 500), and selects a kind by 5-fold Kendall tau on the fitted part.

    PYTHONPATH=. python experiments/gpu_predictor_cifar.py --checkpoint runs/cifar_supernet/supernet.pt
    PYTHONPATH=. python experiments/gpu_predictor_cifar.py --smoke      # CPU, random weights, ~2 min
    PYTHONPATH=. python experiments/gpu_predictor_cifar.py --device cpu --out DIR \
        --from-dataset DIR/predictor_cifar_dataset.jsonl --repeat-from DIR/predictor_cifar_repeat.jsonl
                                          # steps 4-5 only, on a dataset measured earlier (CPU is enough)

A wrapper's ``timeout`` should leave 15 s after --deadline: the accuracy dataset is copied to
the output folder when measuring stops, and continuing below the floor reloads the checkpoint.

Writes to $OUT (default runs/gpu_predictor_cifar/out): predictor_cifar.{json,md,png},
predictor_cifar_dataset.jsonl, predictor_cifar_repeat.jsonl, predictor_cifar_best.pt.
Accuracies are on JPEG-CIFAR-10 (JPEG quality ~75), not on the original CIFAR-10.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

T0 = time.perf_counter()  # deadlines count from here, imports included

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HWNAS_CACHE", str(ROOT / "runs" / "cache"))  # decoded JPEGs, reused by later calls

import numpy as np  # noqa: E402  (after HWNAS_CACHE is set)
import torch  # noqa: E402

from hwnas.accuracy import measure_accuracy_dataset, random_subset  # noqa: E402
from hwnas.arguments import add_measurement_args  # noqa: E402
from hwnas.data_wiring import calibration_batches, load_for_space, split_batches  # noqa: E402
from predictors import DEFAULT_FEATURES, AccuracyDataset, rank_metrics, sample_archs_spread  # noqa: E402
from predictors.benchmark import compare_predictors, holdout_split, limit_threads, write_report  # noqa: E402
from search_space import SearchSpace, Supernet, checkpoint_hash, load_supernet, save_supernet  # noqa: E402
from search_space.evaluation import evaluate_archs  # noqa: E402

WORK = ROOT / "runs" / "gpu_predictor_cifar"


def elapsed() -> float:
    """Seconds since the script started (imports included)."""
    return time.perf_counter() - T0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--checkpoint", default=str(ROOT / "runs" / "cifar_supernet" / "supernet.pt"),
                   help="supernet.pt from 'hwnas supernet train' (default runs/cifar_supernet/supernet.pt)")
    p.add_argument("--data", default=str(ROOT / ".data" / "cifar10_jpeg.npz"), help="cifar10_jpeg.npz "
                   "(default .data/cifar10_jpeg.npz)")
    p.add_argument("--measure-until", type=float, default=240, help="stop measuring at this many seconds after "
                   "start once the floor is met (default 240)")
    p.add_argument("--deadline", type=float, default=330, help="stop measuring here even below the floor, so "
                   "fitting and reports finish within the call (default 330)")
    p.add_argument("--floor", type=int, default=1500, help="subnets to measure at least (default 1500)")
    p.add_argument("--max-n", type=int, default=6000, help="size of the spread sample to draw from (default 6000)")
    p.add_argument("--n-fit", type=int, default=1000, help="subnets to fit on, at most (default 1000)")
    p.add_argument("--min-test", type=int, default=500, help="held-out subnets, at least (default 500)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the fit/held-out split and of the fits "
                   "(default 0); other values show how much the scores depend on which subnets are fitted")
    add_measurement_args(p, calib_batches=2, calib_batch_size=1024, eval_batch_size=2500)
    p.add_argument("--repeat", type=int, default=100, help="subnets re-measured for repeatability (default 100)")
    p.add_argument("--layout", default="auto", choices=["auto", "channels_last", "contiguous"],
                   help="memory layout; auto = the faster on a probe (default auto)")
    p.add_argument("--device", default="cuda", help="default cuda")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of torch and scikit-learn (default 1: "
                   "the fits took 217 s with 1 thread on a 2-core VM, and had not finished after 245 s with all "
                   "threads on a 32-core GPU host running two of them; 0 = all)")
    p.add_argument("--out", default=os.environ.get("OUT", str(WORK / "out")), help="output folder (default $OUT)")
    p.add_argument("--work-dir", default=str(WORK), help="accuracy datasets, kept for resuming (default "
                   "runs/gpu_predictor_cifar)")
    p.add_argument("--from-dataset", default=None, metavar="JSONL", help="skip measuring: fit and report on this "
                   "accuracy dataset (predictor_cifar_dataset.jsonl of an earlier run; CPU is enough)")
    p.add_argument("--repeat-from", default=None, metavar="JSONL", help="with --from-dataset: its re-measured "
                   "subnets (predictor_cifar_repeat.jsonl), for the repeatability line")
    p.add_argument("--smoke", action="store_true", help="CPU, random-weight supernet, a few subnets: checks the "
                   "script, numbers are meaningless")
    args = p.parse_args(argv)
    if args.smoke:
        args.device, args.floor, args.max_n, args.n_fit, args.min_test, args.repeat = "cpu", 24, 40, 16, 8, 6
        args.measure_until, args.deadline, args.calib_batches, args.calib_batch_size = 60, 90, 1, 32
        args.eval_batch_size, args.eval_limit, args.threads = 100, 100, 1
        args.work_dir = tempfile.mkdtemp(prefix="gpu_predictor_cifar_smoke_")  # fresh: nothing to resume
        args.checkpoint = str(Path(args.work_dir) / "supernet.pt")
        args.out = str(Path(args.work_dir) / "out")
        if not Path(args.data).exists():
            args.data = str(ROOT.parent / "shared" / "data" / "cifar10_jpeg.npz")
    return args


def make_smoke_checkpoint(path: Path, data: str) -> None:
    """A randomly initialised cifar supernet, so that --smoke runs without a trained one."""
    if not path.exists():
        torch.manual_seed(0)
        save_supernet(path, Supernet(SearchSpace.from_config("cifar")),
                      meta={"dataset": "cifar10-jpeg", "data": data, "val_fraction": 0.1, "split_seed": 0})


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that timings are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe_layout(args, bundle, device: torch.device) -> tuple[bool, dict]:
    """Time the same subnets in both layouts, interleaved twice (the first round warms up);
    return whether channels-last is faster and the seconds per subnet of each."""
    if args.layout != "auto":
        return args.layout == "channels_last", {}
    supernet, _ = load_supernet(args.checkpoint)
    space = supernet.space
    archs = sample_archs_spread(space, 4 if args.smoke else 16, np.random.default_rng(123))
    autocast = torch.bfloat16 if device.type == "cuda" else None
    calib = calibration_batches(bundle, args.calib_batch_size, device)
    evalb = split_batches(random_subset(bundle.val, args.eval_limit, 0), bundle, args.eval_batch_size)
    times = {"channels_last": [], "contiguous": []}
    for _ in range(2):
        for name, fmt in (("channels_last", torch.channels_last), ("contiguous", torch.contiguous_format)):
            supernet.to(device, memory_format=fmt)
            sync(device)
            t = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast is not None):
                evaluate_archs(supernet, archs, calib, evalb, args.calib_batches, autocast)
            sync(device)
            times[name].append((time.perf_counter() - t) / len(archs))
    per = {k: round(v[-1], 4) for k, v in times.items()}  # second round: after warm-up
    del supernet
    return per["channels_last"] < per["contiguous"], per


def device_name(device: torch.device) -> str:
    """GPU (or CPU) model, for the report."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return platform.processor() or "CPU"


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if args.from_dataset:
        return fit_offline(args, out)
    if args.smoke:
        make_smoke_checkpoint(Path(args.checkpoint), args.data)
    if not Path(args.checkpoint).is_file():
        print(f"error: checkpoint {args.checkpoint!r} not found: train one first, e.g. 'hwnas supernet train "
              "--space cifar --dataset cifar10-jpeg --data .data/cifar10_jpeg.npz --out runs/cifar_supernet'",
              file=sys.stderr)
        return 2
    limit_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    timings = {}
    _, blob = load_supernet(args.checkpoint)
    meta = blob.get("meta", {})
    space = SearchSpace.from_config(blob["space"])
    bundle = load_for_space("cifar10-jpeg", args.data, space, seed=meta.get("split_seed", 0),
                            val_fraction=meta.get("val_fraction", 0.1), device=device)
    timings["setup_s"] = round(elapsed(), 1)
    print(f"[{elapsed():5.0f} s] data and checkpoint loaded; val split {len(bundle.val)} images")

    channels_last, probe = probe_layout(args, bundle, device)
    timings["probe_s"] = round(elapsed() - timings["setup_s"], 1)
    print(f"[{elapsed():5.0f} s] layout: {'channels_last' if channels_last else 'contiguous'} "
          f"(probe, s per subnet: {probe or 'skipped'})")

    ck_hash = checkpoint_hash(args.checkpoint)  # a retrained checkpoint starts a new file
    dataset_path = work / f"acc_val_{ck_hash}.jsonl"
    common = dict(dataset="cifar10-jpeg", data=args.data, device=device, calib_batches=args.calib_batches,
                  calib_batch_size=args.calib_batch_size, eval_batch_size=args.eval_batch_size,
                  eval_limit=args.eval_limit, channels_last=channels_last, bundle=bundle)
    before = len(AccuracyDataset.load(dataset_path)) if dataset_path.exists() else 0
    t = time.perf_counter()
    data = measure_accuracy_dataset(args.checkpoint, args.max_n, dataset_path,
                                    time_budget_s=max(0.0, args.measure_until - elapsed()), **common)
    if len(data) < args.floor and elapsed() < args.deadline:
        # Reloading the checkpoint takes seconds: keep what is measured if the call ends meanwhile.
        shutil.copyfile(dataset_path, out / "predictor_cifar_dataset.jsonl")
        print(f"[{elapsed():5.0f} s] {len(data)} < floor {args.floor}: measuring on until {args.deadline:.0f} s")
        data = measure_accuracy_dataset(args.checkpoint, args.max_n, dataset_path,
                                        time_budget_s=max(0.0, args.deadline - elapsed()), **common)
    measure_s = time.perf_counter() - t
    new = len(data) - before
    rate = 60 * new / measure_s if measure_s > 0 else 0.0
    timings.update(measure_s=round(measure_s, 1), subnets_per_min=round(rate, 1))
    floor_met = len(data) >= args.floor
    print(f"[{elapsed():5.0f} s] {len(data)} subnets ({new} new, {rate:.0f} per minute); floor {args.floor} "
          f"{'met' if floor_met else 'NOT MET: re-run to add more (resumes)'}")
    shutil.copyfile(dataset_path, out / "predictor_cifar_dataset.jsonl")  # kept even if the call is cut short
    if len(data) < args.min_test + 10:
        print(f"error: {len(data)} subnets measured, too few to fit and hold out {args.min_test}", file=sys.stderr)
        return 1

    t = time.perf_counter()
    repeat_path = work / f"acc_val_repeat_{ck_hash}.jsonl"
    again = measure_accuracy_dataset(args.checkpoint, data.archs(space)[:args.repeat], repeat_path,
                                     measure_seed=1, **common)
    shutil.copyfile(repeat_path, out / "predictor_cifar_repeat.jsonl")
    timings["repeat_s"] = round(time.perf_counter() - t, 1)
    context = {
        "command": "PYTHONPATH=. python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "machine": f"{device_name(device)}, torch {torch.__version__}, {os.cpu_count()} CPU cores",
        "checkpoint": f"{args.checkpoint} ({ck_hash}), meta epochs {meta.get('epoch')}",
        "floor": f"{args.floor} subnets {'met' if floor_met else 'NOT met'}",
        "throughput": f"{rate:.0f} subnets per minute ({'channels_last' if channels_last else 'contiguous'}, bf16, "
                      f"eval batch {args.eval_batch_size})",
        "layout_probe_s_per_subnet": probe,
    }
    return fit_and_report(args, space, data, again, out, context, timings)


def fit_offline(args, out: Path) -> int:
    """--from-dataset: the fit and report of an accuracy dataset measured earlier (on the GPU)."""
    if not args.repeat_from:
        print("error: --from-dataset needs --repeat-from (the re-measured subnets of the same run)", file=sys.stderr)
        return 2
    limit_threads(args.threads)
    data, again = AccuracyDataset.load(args.from_dataset), AccuracyDataset.load(args.repeat_from)
    if again.header["checkpoint_hash"] != data.header["checkpoint_hash"]:
        print(f"error: {args.repeat_from} measures checkpoint {again.header['checkpoint_hash']}, expected "
              f"{data.header['checkpoint_hash']} as in {args.from_dataset}", file=sys.stderr)
        return 2
    space = SearchSpace.from_config(data.header["space_config"])
    context = {"command": "PYTHONPATH=. python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
               "machine": f"fit on {platform.processor() or 'CPU'}, torch {torch.__version__}, {os.cpu_count()} "
                          "CPU cores; the dataset was measured on the GPU earlier"}
    return fit_and_report(args, space, data, again, out, context, {"setup_s": round(elapsed(), 1)})


def fit_and_report(args, space: SearchSpace, data: AccuracyDataset, again: AccuracyDataset, out: Path,
                   context: dict, timings: dict) -> int:
    """Repeatability of the measurement, then every predictor fitted on at most ``--n-fit`` subnets
    and scored on the rest; writes the report and the selected predictor to ``out``."""
    first = {r["arch"]: r["accuracy"] for r in data.records}
    pairs = np.array([(first[r["arch"]], r["accuracy"]) for r in again.records])
    repeat = rank_metrics(pairs[:, 0], pairs[:, 1])
    print(f"[{elapsed():5.0f} s] repeatability (other calibration images): tau {repeat['kendall_tau']:.4f}, "
          f"RMSE {100 * repeat['rmse']:.3f} pts on {repeat['n']} subnets")

    t = time.perf_counter()
    X, y = data.arrays(space)
    n_fit = min(args.n_fit, len(y) - args.min_test)
    fit_idx, test_idx = holdout_split(len(y), n_fit, seed=args.split_seed)
    short_mlp = {"steps": 300}  # --smoke: quick fits, the numbers mean nothing anyway
    hparams = {"mlp": short_mlp, "blend": {"members": {"mlp": short_mlp, "gbt": {}, "gp": {}}}} if args.smoke else {}
    result, fitted = compare_predictors(space, X, y, fit_idx, test_idx, features=(DEFAULT_FEATURES,),
                                        folds=3 if args.smoke else 5, seed=args.split_seed, hparams=hparams)
    best = result["selection"]["selected"]
    fitted[(best, DEFAULT_FEATURES)].save(out / "predictor_cifar_best.pt", {
        "fitted_on": {k: data.header[k] for k in ("checkpoint_hash", "dataset", "split")}, "n_train": int(n_fit)})
    timings["predictors_s"] = round(time.perf_counter() - t, 1)
    timings["total_s"] = round(elapsed(), 1)

    settings = data.header["settings"]
    context = {
        "command": context.pop("command"),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        **context,
        "space": f"{space.name} ({space.fingerprint}), encoding length {space.encoding_size}",
        "accuracy dataset": f"{len(y)} subnets of checkpoint {data.header['checkpoint_hash']}, JPEG-CIFAR-10 "
                            f"validation accuracy {y.min():.4f}..{y.max():.4f} (median {np.median(y):.4f}) on "
                            f"{settings['eval_samples']} images each, BN recalibrated on "
                            f"{settings['num_calib_batches']} x {settings['calib_batch_size']} training images",
        "repeatability (measurement noise)": f"Kendall tau {repeat['kendall_tau']:.4f}, RMSE "
                                             f"{100 * repeat['rmse']:.3f} pts on {repeat['n']} subnets re-measured "
                                             "with other calibration images",
        "target": "Kendall tau >= 0.85 on >= 500 held-out subnets, fitted on <= 1000",
        "timings": timings, "repeatability": repeat,
        "dataset_header": {k: v for k, v in data.header.items() if k != "space_config"},
    }
    title = "Accuracy predictors on JPEG-CIFAR-10 (GPU)"
    write_report(out, "predictor_cifar", title, result, context)
    sel = result["selected_test"]
    print(f"\n{'predictor':10s} {'tau':>7s} {'spearman':>8s} {'rmse pts':>8s}  (fit {result['n_fit']}, test "
          f"{result['n_test']})")
    for r in result["rows"]:
        print(f"{r['kind']:10s} {r['kendall_tau']:7.4f} {r['spearman']:8.4f} {100 * r['rmse']:8.3f}")
    print(f"{'FLOPs':10s} {result['baselines_kendall_tau']['flops']:7.4f}")
    print(f"selected {sel['kind']}: held-out Kendall tau {sel['kendall_tau']:.4f} (target 0.85: "
          f"{'met' if sel['kendall_tau'] >= 0.85 else 'NOT met'}); repeatability tau {repeat['kendall_tau']:.4f}; "
          f"{len(y)} subnets; total {elapsed():.0f} s")
    print(f"files in {out}: {sorted(p.name for p in out.iterdir())}")
    if args.smoke:
        Path(args.checkpoint).unlink()  # 130 MB of random weights, made only for the smoke run
    return 0


if __name__ == "__main__":
    sys.exit(main())
