"""Where one `hwnas export` of a `cifar_pool` model spends its time (loading, scoring, ONNX, timing).

The export stage of `hwnas run` writes `export.top` models per device; each loads the 1 GB supernet,
recalibrates BN, scores the test set, exports and checks the ONNX file and times it with ORT. This script
exports one arch from a freshly initialised `cifar_pool` supernet under cProfile and writes the share of
each part, so that a change to the stage is aimed at what costs (on the GPU host, scoring runs on CUDA).

    python experiments/profile_export.py [--arch ARCH] [--data .data/cifar10_jpeg.npz]

Writes experiments/results/export/export_profile_<cpu|cuda>.{md,json}.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "experiments" / "results" / "export"
PARTS = {  # part -> function (file suffix, name) whose cumulative time it is
    "score the test set": ("search_space/evaluation.py", "accuracy"),
    "recalibrate BN": ("search_space/supernet.py", "recalibrate_bn"),
    "load the supernet": ("search_space/checkpoint.py", "load_supernet"),
    "hash the checkpoint": ("search_space/checkpoint.py", "checkpoint_hash"),
    "load the dataset's batches": ("hwnas/export.py", "_data_batches"),
    "ONNX export + parity check": ("hwnas/export.py", "export_onnx"),
    "time with ORT": ("latency_tables/backends.py", "measure"),
}


def main(argv: list[str] | None = None) -> int:
    """Profile one export and write the breakdown."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="r32/w0.5:fmb3e1/w0.5:cp3e1/w1:mb3e3")
    p.add_argument("--data", default=".data/cifar10_jpeg.npz", help="JPEG-CIFAR-10 file (default %(default)s)")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    import torch

    from hwnas.export import ExportRequest, export_one
    from search_space import SearchSpace, Supernet, save_supernet

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "supernet.pt"
        torch.manual_seed(0)
        save_supernet(ckpt, Supernet(SearchSpace.from_config("cifar_pool")),
                      {"dataset": "cifar10-jpeg", "data": args.data, "split_seed": 0, "val_fraction": 0.1})
        req = ExportRequest(arch=args.arch, out=Path(tmp) / "m.onnx", checkpoint=ckpt, dataset="cifar10-jpeg",
                            data=args.data, force=True)
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        export_one(req)
        prof.disable()
        total = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (cc, nc, tt, ct, callers)
    parts = {}
    for part, (suffix, name) in PARTS.items():
        parts[part] = round(max((v[3] for (f, _, n), v in stats.items() if f.endswith(suffix) and n == name), default=0.0), 2)
    where = "cuda" if torch.cuda.is_available() else "cpu"
    machine = (torch.cuda.get_device_name(0) if where == "cuda" else platform.processor() or platform.machine())
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv),
              "machine": f"{machine}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}", "scoring_on": where,
              "arch": args.arch, "total_seconds": round(total, 2), "parts_seconds": parts}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from search_space.io import atomic_write_json, atomic_write_text

    atomic_write_json(out / f"export_profile_{where}.json", result)
    lines = [f"# One export of a `cifar_pool` model: where the time goes (scoring on {where})", "",
             f"{result['date']}, `{result['command']}`, {result['machine']}; arch `{args.arch}`, "
             "freshly initialised supernet (its weights alone: a 518 MB checkpoint), test set of JPEG-CIFAR-10 (10,000 images).", "",
             "| part | seconds | share |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {v:.2f} | {100 * v / total:.0f}% |" for k, v in parts.items()]
    lines += [f"| **the export** | **{total:.2f}** | 100% |", ""]
    atomic_write_text(out / f"export_profile_{where}.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
