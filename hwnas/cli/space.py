"""``hwnas space``: inspect a search space, sample, validate and size architectures."""

from __future__ import annotations

import argparse
import json

import numpy as np

from search_space import SearchSpace, preset_names
from search_space.errors import UserError
from hwnas.cli._group import command_group


def add_space_arg(p: argparse.ArgumentParser) -> None:
    """The ``--space`` option every command that needs a search space shares."""
    p.add_argument("--space", default="cifar", help=f"preset name ({', '.join(preset_names())}) or a .yaml/.toml file "
                   "(default: cifar)")


def register(sub) -> None:
    """Add ``hwnas space ...``."""
    cmds = command_group(sub, "space", description="Inspect a search space and its architectures.")

    show = cmds.add_parser("show", help="print the space's choices and size")
    add_space_arg(show)
    show.add_argument("--json", action="store_true", help="print the validated config as JSON")
    show.set_defaults(func=_show)

    sample = cmds.add_parser("sample", help="print random architectures")
    add_space_arg(sample)
    sample.add_argument("-n", type=int, default=5, help="how many (default 5)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--json", action="store_true", help="print JSON instead of arch strings")
    sample.set_defaults(func=_sample)

    val = cmds.add_parser("validate", help="check an arch string belongs to the space")
    add_space_arg(val)
    val.add_argument("arch", help="arch string, e.g. r32/w1:mb3e6/w1:rn3e1,...")
    val.set_defaults(func=_validate)

    fl = cmds.add_parser("flops", help="FLOPs and parameters of an architecture")
    add_space_arg(fl)
    fl.add_argument("arch", nargs="?", help="arch string (or 'largest' / 'smallest'; default: both)")
    fl.add_argument("--blocks", action="store_true", help="also print the per-block breakdown")
    fl.set_defaults(func=_flops)


def _show(args) -> int:
    space = SearchSpace.from_config(args.space)
    cfg = space.config
    if args.json:
        print(json.dumps(cfg.to_json(), indent=2))
        return 0
    print(f"space {cfg.name!r}  fingerprint {space.fingerprint}  {space.size():.3e} architectures")
    print(f"resolutions {list(cfg.resolutions)}  stem {cfg.stem_channels}ch k{cfg.stem_kernel} s{cfg.stem_stride}"
          f"  head {cfg.head_channels or 'pool+fc'}  act {cfg.act}")
    for i, st in enumerate(cfg.stages):
        exps = ", ".join(f"{b}:{list(e)}" for b, e in st.expansions.items())
        print(f"stage {i}: {st.channels}ch stride {st.stride} depths {list(st.depths)} widths {list(st.widths)} "
              f"kernels {list(st.kernels)} se={st.se}\n         expansions {exps}")
    print(f"unique block specs: {len(space.unique_block_specs())}  encoding length: {space.encoding_size}")
    for name, arch in (("largest", space.largest()), ("smallest", space.smallest())):
        print(f"{name:8s} {arch}  {space.flops(arch) / 1e6:.1f} MFLOPs  {space.params(arch) / 1e6:.2f}M params"
              f"  ({cfg.extremes.replace('_', ' ')})")
    return 0


def _sample(args) -> int:
    if args.n < 1:
        raise UserError(f"-n {args.n} is invalid; expected an integer >= 1")
    space = SearchSpace.from_config(args.space)
    rng = np.random.default_rng(args.seed)
    for _ in range(args.n):
        a = space.sample(rng)
        print(json.dumps(a.to_json()) if args.json else a)
    return 0


def _validate(args) -> int:
    space = SearchSpace.from_config(args.space)
    arch = space.parse(args.arch)
    print(f"ok: {arch} is in space {space.name!r}")
    return 0


def _flops(args) -> int:
    space = SearchSpace.from_config(args.space)
    named = {"largest": space.largest, "smallest": space.smallest}
    names = [args.arch] if args.arch else ["largest", "smallest"]
    for name in names:
        arch = named[name]() if name in named else space.parse(name)
        print(f"{arch}\n  FLOPs {space.flops(arch) / 1e6:.2f} M   params {space.params(arch) / 1e6:.3f} M")
        if args.blocks:
            for s in space.block_specs(arch):
                print(f"    {s.key:55s} {s.flops() / 1e6:9.2f} MFLOPs {s.params():9d} params")
    return 0
