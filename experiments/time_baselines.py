"""Time baselines (and optional archs of a space) with the latency backends, before a search, so
its budgets can be set at a fraction of the baseline's measured latency.

    PYTHONPATH=. python experiments/time_baselines.py --space cifar_pool --baseline resnet18 --baseline largest \
        --device gpu_b1=cuda:1:bf16 --device gpu_b256=cuda:256:bf16 --device cpu_t1=onnxruntime:1:fp32:1 \
        --out $OUT/baseline_latency.json

A device is NAME=BACKEND:BATCH:DTYPE[:THREADS]; all models of a device are timed in interleaved
rounds. Writes one JSON file (models x devices, ms) and prints a table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

import torch  # noqa: E402

from experiments.bench_supernet import machine  # noqa: E402
from hwnas.baselines import make_baseline  # noqa: E402
from latency_tables import make_backend  # noqa: E402
from search_space import SearchSpace, Subnet  # noqa: E402
from search_space.io import atomic_write_json  # noqa: E402


def parse_device(spec: str) -> tuple[str, dict]:
    """NAME=BACKEND:BATCH:DTYPE[:THREADS] -> (name, make_backend kwargs)."""
    name, _, rest = spec.partition("=")
    parts = rest.split(":")
    if not name or len(parts) not in (3, 4):
        raise SystemExit(f"--device {spec!r}: expected NAME=BACKEND:BATCH:DTYPE[:THREADS]")
    kw = {"spec": parts[0], "batch_size": int(parts[1]), "dtype": parts[2]}
    if len(parts) == 4:
        kw["threads"] = int(parts[3])
    return name, kw


def main(argv=None) -> int:
    """Time every model on every device; write and print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="cifar_pool")
    p.add_argument("--baseline", action="append", default=[])
    p.add_argument("--arch", action="append", default=[], help="arch strings of the space to time too")
    p.add_argument("--device", action="append", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    space = SearchSpace.from_config(args.space)
    models = {b: make_baseline(b, space) for b in args.baseline}
    for a in args.arch:
        arch = space.parse(a)
        models[a] = Subnet(arch, space.block_specs(arch))
    r = max(space.config.resolutions)
    shape = (space.config.in_channels, r, r)
    gpu = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    result = {"space": space.name, "machine": machine(gpu), "devices": {}, "ms": {m: {} for m in models}}
    for spec in args.device:
        name, kw = parse_device(spec)
        backend = make_backend(kw.pop("spec"), **kw)
        result["devices"][name] = backend.settings()
        stats = backend.measure_many([(m.eval(), shape) for m in models.values()])
        for m, s in zip(models, stats):
            result["ms"][m][name] = round(float(s.ms), 5)
    atomic_write_json(args.out, result)
    names = list(result["devices"])
    print("model".ljust(40) + "".join(n.rjust(12) for n in names))
    for m, row in result["ms"].items():
        print(m[:40].ljust(40) + "".join(f"{row[n]:12.4f}" for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
