"""``hwnas export``: subnets to ONNX (checked against PyTorch, re-measured) and PyTorch files."""

from __future__ import annotations

import json
from pathlib import Path

from hwnas.cli._group import add_command
from hwnas.export import ExportRequest, export_one, front_requests


def register(sub) -> None:
    """Add ``hwnas export``."""
    p = add_command(
        sub, "export",
        description="Extract a subnet from a trained supernet, recalibrate BatchNorm on training data, export it to "
        "ONNX, check ONNX Runtime against PyTorch, measure its latency on this machine and save the PyTorch model too.")
    p.add_argument("--checkpoint", required=True, help="supernet checkpoint (hwnas supernet train)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--arch", help="one arch string")
    src.add_argument("--pareto", help="pareto_<device>.json from hwnas search: export every arch on the front")
    p.add_argument("--out", required=True, help="output .onnx file (with --arch) or folder (with --pareto)")
    p.add_argument("--dataset", help="dataset for BN recalibration and parity inputs (default: the checkpoint's)")
    p.add_argument("--data", help="dataset path (default: the checkpoint's)")
    p.add_argument("--no-recalibrate", action="store_true", help="keep the supernet's BN statistics")
    p.add_argument("--table", action="append", default=[], metavar="DEVICE=TABLE",
                   help="latency table(s) whose prediction to record and print beside the measurement")
    p.add_argument("--dynamic-batch", action="store_true", help="export with a dynamic batch axis")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads for the latency measurement")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=_run)


def _run(args) -> int:
    common = dict(checkpoint=args.checkpoint, dataset=args.dataset, data=args.data,
                  recalibrate=not args.no_recalibrate, tables=args.table, dynamic_batch=args.dynamic_batch,
                  threads=args.threads, force=args.force)
    if args.arch:
        requests = [ExportRequest(arch=args.arch, out=Path(args.out), **common)]
    else:
        requests = front_requests(args.pareto, Path(args.out), common)
    print(f"{'file':40s} {'max|diff|':>10s} {'ORT ms':>8s}  predicted ms")
    for req in requests:
        res = export_one(req)
        preds = ", ".join(f"{d}={v:.3f}" for d, v in res["predicted_ms"].items()) or "-"
        print(f"{str(res['onnx']):40s} {res['max_abs_diff']:10.2e} {res['measured_ms']:8.3f}  {preds}")
    if len(requests) > 1:
        print(json.dumps({"exported": len(requests)}))
    return 0
