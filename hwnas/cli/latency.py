"""``hwnas latency``: build, query, show, validate and measure latency lookup tables."""

from __future__ import annotations

import argparse
import json
import shlex

from search_space import SearchSpace

from .space import add_space_arg
from hwnas.cli._group import command_group


def _option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as bool, int, float or string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. spinning=true")
    low = value.lower()
    if low in ("true", "false"):
        return key, low == "true"
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def _add_table_arg(p: argparse.ArgumentParser, flag: bool = True) -> None:
    """The table argument (``--table T``, or positional ``T``) and ``--strict``."""
    help_ = "table file, or the name of a shipped table (e.g. cifar_cpu_ort_b1_fp32)"
    if flag:
        p.add_argument("--table", required=True, help=help_)
    else:
        p.add_argument("table", help=help_)
    p.add_argument("--strict", action="store_true", help="refuse a table measured on another machine (default: "
                   "warn, when measuring or validating with it)")


def register(sub) -> None:
    """Add ``hwnas latency ...``."""
    cmds = command_group(sub, "latency", description="Per-block latency tables measured on a device (ONNX Runtime, "
                         "CUDA or a registered backend), calibrated on whole networks.")

    b = cmds.add_parser("build", help="measure every block of a space (resumable), then calibrate",
                        description="Measure every unique block spec of the space, then whole calibration "
                        "networks, and write the table. Re-running the same command resumes.")
    from latency_tables.registry import DTYPE_NAMES, PLUGINS_ENV, backend_format, options_help

    add_space_arg(b)
    b.add_argument("--backend", default="onnxruntime",
                   help=f"{backend_format(load_plugins=False)}, or a backend registered by a module named in "
                   f"{PLUGINS_ENV} (default: onnxruntime, its CPU provider)")
    b.add_argument("--batch-size", type=int, default=1, help="batch size to time at (default 1)")
    b.add_argument("--dtype", default="fp32", choices=DTYPE_NAMES, help="default fp32 (the backend says which it times)")
    b.add_argument("--threads", type=int, default=None, help="intra-op threads of backends that take them "
                   "(onnxruntime: default 1)")
    b.add_argument("--device-name", default=None, help="short device label stored in the table (default: cpu, "
                   "or <gpu>-b<batch>)")
    b.add_argument("--calibration-nets", type=int, default=100, help="whole networks measured to fit the "
                   "calibration (default 100)")
    b.add_argument("--seed", type=int, default=0, help="seed of the calibration networks (default 0)")
    b.add_argument("--passes", type=int, default=3, help="passes over the calibration networks; each net's "
                   "latency is its fastest pass (default 3)")
    b.add_argument("--opt", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help=f"backend or timing option, repeatable: {options_help()}; min_rounds, max_rounds, round_ms, tol, nice "
                   "(scheduling priority while timing, e.g. nice=-15 as root: less preemption by other processes)")
    b.add_argument("--out", required=True, help="table file to write (e.g. latency_tables/tables/NAME.json)")
    b.set_defaults(func=_build)

    q = cmds.add_parser("query", help="predicted latency of archs, with a per-block breakdown")
    _add_table_arg(q)
    q.add_argument("archs", nargs="+", metavar="ARCH", help="arch string(s)")
    q.add_argument("--json", action="store_true", help="print the breakdowns as JSON")
    q.set_defaults(func=_query)

    ls = cmds.add_parser("list", help="the shipped tables: space, device, settings and validation scores",
                         description="List the tables shipped in latency_tables/tables/; any of them can be "
                         "passed by name wherever a table is expected.")
    ls.set_defaults(func=_list)

    s = cmds.add_parser("show", help="summarise a table: device, settings, calibration, validation")
    _add_table_arg(s, flag=False)
    s.add_argument("--blocks", action="store_true", help="also list every block's latency")
    s.set_defaults(func=_show)

    v = cmds.add_parser("validate", help="measure random subnets here and score the table and a FLOPs proxy",
                        description="Measure N random subnets (disjoint from the calibration ones) end to end, "
                        "in several passes, and report MAPE, share within ±10% and Kendall tau of the table and of a "
                        "FLOPs proxy, next to the measurement's own repeatability (markdown, CSV, PNG). "
                        "Resumable.")
    _add_table_arg(v)
    v.add_argument("--n", type=int, default=200, help="number of subnets (default 200)")
    v.add_argument("--seed", type=int, default=1000, help="seed of the subnets (default 1000)")
    v.add_argument("--passes", type=int, default=3, help="passes over the subnets; measured = fastest pass, "
                   "repeatability = pass 2 vs pass 1 (default 3)")
    v.add_argument("--out-dir", default="experiments/results/latency", help="where the report goes (default experiments/results/latency)")
    v.add_argument("--name", default=None, help="report file stem (default latency_<table>_validation)")
    v.add_argument("--replot", action="store_true", help="only redraw the PNG from the existing CSV (no measuring)")
    v.set_defaults(func=_validate)

    m = cmds.add_parser("measure", help="measure archs end to end here with a table's settings, next to its prediction")
    _add_table_arg(m)
    m.add_argument("archs", nargs="+", metavar="ARCH", help="arch string(s)")
    m.set_defaults(func=_measure)


def _load(args, measuring: bool):
    """The table of ``args``; its machine is compared with this one only when ``measuring`` (or
    with ``--strict``): reading the tables of devices you do not have is what they are for."""
    from latency_tables import LatencyTable

    return LatencyTable.load(args.table, strict=args.strict, check_machine=measuring or args.strict)


def _build(args) -> int:
    from latency_tables import build_table, make_backend
    from latency_tables.fingerprint import warn_if_busy
    from search_space.io import check_out_file

    check_out_file(args.out)  # before minutes of measuring
    space = SearchSpace.from_config(args.space)
    opts = dict(args.opt)
    backend = make_backend(args.backend, batch_size=args.batch_size, dtype=args.dtype, threads=args.threads, **opts)
    parts = ["hwnas", "latency", "build", "--space", args.space, "--backend", args.backend, "--batch-size",
             str(args.batch_size), "--dtype", args.dtype]
    parts += ["--threads", str(args.threads)] if args.threads is not None else []
    parts += ["--device-name", args.device_name] if args.device_name else []
    parts += ["--calibration-nets", str(args.calibration_nets), "--seed", str(args.seed), "--passes", str(args.passes)]
    for k, val in args.opt:
        parts += ["--opt", f"{k}={val}"]
    parts += ["--out", args.out]
    warn_if_busy(args.backend)
    table = build_table(space, backend, args.out, device=args.device_name, calibration_nets=args.calibration_nets,
                        seed=args.seed, calibration_passes=args.passes, command=" ".join(shlex.quote(x) for x in parts))
    _print_summary(table)
    return 0


def _query(args) -> int:
    table = _load(args, measuring=False)
    for arch in args.archs:
        bd = table.breakdown(arch)
        if args.json:
            print(json.dumps(bd))
            continue
        print(f"{bd['arch']}\n  predicted {bd['total_ms']:.4f} ms on {table.device} "
              f"(block sum {bd['raw_sum_ms']:.4f} ms, calibration intercept {bd['intercept_ms']:+.4f} ms)")
        for r in bd["blocks"]:
            print(f"    {r['key']:55s} {r['ms']:9.4f} ms  calibrated {r['calibrated_ms']:9.4f} ms")
    return 0


def _print_summary(table) -> None:
    d, cal = table.data, table.calibration
    fp = table.fingerprint
    print(f"{table.path}: device {table.device!r}  {table.backend_spec}  batch {table.batch_size}  {table.dtype}")
    print(f"  space {d['space']['name']!r} ({table.space_fingerprint})  blocks {len(d['blocks'])}  missing "
          f"{len(table.missing_keys())}  calibration nets {len(d['calibration_nets'])}  "
          f"{'complete' if table.is_complete else 'INCOMPLETE: ' + table.build_command()}")
    print(f"  machine: {fp.get('cpu_model')} ({fp.get('cpu_cores')} cores), threads {fp.get('threads')}, GPU "
          f"{fp.get('gpu_name')} (driver {fp.get('gpu_driver')}, CUDA {fp.get('cuda')}), torch {fp.get('torch')}, "
          f"onnxruntime {fp.get('onnxruntime')}")
    b = d["build"]
    print(f"  built {d['created']} in {b.get('block_seconds', 0) + b.get('calibration_seconds', 0):.0f} s "
          f"(blocks {b.get('block_seconds', '?')} s, calibration {b.get('calibration_seconds', '?')} s)")
    if cal:
        cv = cal.cv
        print(f"  calibration {cal.model} (ridge {cal.ridge:g}): intercept {cal.intercept_ms:+.4f} ms, scales "
              + ", ".join(f"{k} {v:.3f}" for k, v in sorted(cal.scale.items()))
              + (", offsets " + ", ".join(f"{k} {v:+.4f} ms" for k, v in sorted(cal.offset_ms.items())) if cal.offset_ms else "")
              + (f", {cal.ms_per_mparam:+.4f} ms per M params" if cal.ms_per_mparam else "")
              + f"; leave-one-out MAPE {100 * cv.get('mape', float('nan')):.1f}%, within ±10% "
              f"{100 * cv.get('within_10', float('nan')):.0f}%")
    v = d.get("validation")
    if v:
        t, f, r = v["scores"]["table"], v["scores"]["FLOPs proxy"], v["repeatability"]
        print(f"  validation {v['date']} (n={v['n']}): table MAPE {100 * t['mape']:.1f}%, within ±10% "
              f"{100 * t['within_10']:.1f}%, tau {t['kendall_tau']:.3f} | FLOPs proxy {100 * f['within_10']:.1f}%, "
              f"tau {f['kendall_tau']:.3f} | measurement repeatability {100 * r['within_10']:.1f}%")


def _list(args) -> int:
    from latency_tables import LatencyTable, shipped_tables

    print(f"{'name':28s} {'space':10s} {'device':10s} {'backend':32s} {'batch':>5s} {'dtype':5s} {'blocks':>6s}  validation")
    for path in shipped_tables():
        t = LatencyTable.load(path, check_machine=False)  # other machines' tables are expected here
        v = t.data.get("validation")
        score = (f"{100 * v['scores']['table']['within_10']:.0f}% within ±10%, tau "
                 f"{v['scores']['table']['kendall_tau']:.3f} ({v['date'][:10]})") if v else "not validated"
        print(f"{path.stem:28s} {t.data['space']['name']:10s} {t.device:10s} {t.backend_spec:32s} {t.batch_size:5d} "
              f"{t.dtype:5s} {len(t.data['blocks']):6d}  {score}")
    return 0


def _show(args) -> int:
    table = _load(args, measuring=False)
    _print_summary(table)
    if args.blocks:
        for key in sorted(table.data["blocks"], key=table.block_ms):
            st = table.stats(key)
            print(f"    {key:55s} {st.ms:9.4f} ms  median {st.median_ms:9.4f}  p90 {st.p90_ms:9.4f}  n {st.n}")
    return 0


def _validate(args) -> int:
    from pathlib import Path

    from latency_tables.fingerprint import warn_if_busy
    from latency_tables.validate import replot_validation, report_name, validate_table

    table = _load(args, measuring=True)
    if args.replot:
        print(replot_validation(table, Path(args.out_dir) / f"{args.name or report_name(table)}.csv"))
        return 0
    cmd = (f"hwnas latency validate --table {shlex.quote(str(args.table))} --n {args.n} --seed {args.seed} "
           f"--passes {args.passes} "
           f"--out-dir {shlex.quote(args.out_dir)}" + (f" --name {shlex.quote(args.name)}" if args.name else ""))
    warn_if_busy(table.backend_spec)
    s = validate_table(table, n=args.n, seed=args.seed, out_dir=args.out_dir, name=args.name, command=cmd,
                       passes=args.passes)
    for k, m in s["scores"].items():
        print(f"{k:14s} MAPE {100 * m['mape']:5.1f}%  within ±10% {100 * m['within_10']:5.1f}%  tau {m['kendall_tau']:.3f}")
    r = s["repeatability"]
    print(f"measurement repeatability (2nd pass within ±10% of 1st): {100 * r['within_10']:.1f}%")
    print(f"target {'met' if s['targets']['met'] else 'MISSED'}; report: {s['files']['md']}")
    for line in s["advice"]:
        print(f"advice: {line}")
    return 0


def _measure(args) -> int:
    table = _load(args, measuring=True)
    for arch in args.archs:
        pred = table.predict(arch)
        got = table.measure_arch(arch, strict=args.strict)
        print(f"{arch}\n  measured {got:.4f} ms  predicted {pred:.4f} ms  ({100 * (pred / got - 1):+.1f}%)")
    return 0

