"""Which block types pay off where: mean measured accuracy of an accuracy dataset's subnets, grouped
by the block type of each stage's first (downsampling) layer, next to their mean MFLOPs.

    PYTHONPATH=. python experiments/accuracy_by_block.py experiments/results/supernet_cifar/cifar_pool_recipe/predictor_cifar_dataset.jsonl

Prints a Markdown table (stage x block type: subnets, mean accuracy, mean MFLOPs); ``--out FILE``
also writes it. Means over spread-sampled subnets mix in everything else the subnets differ in, so
they show tendencies, not a controlled comparison.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from predictors import AccuracyDataset
from search_space.arch import BLOCK_ABBREV
from search_space.errors import UserError
from search_space.io import atomic_write_text


def table_by_first_block(data: AccuracyDataset) -> dict[tuple[int, str], dict]:
    """(stage index, block type) -> {"n", "acc", "mflops"} over the subnets whose stage starts with it."""
    groups: dict[tuple[int, str], list[tuple[float, float]]] = defaultdict(list)
    for rec, arch in zip(data.records, data.archs()):  # archs() checks them against the stored space
        for i, stage in enumerate(arch.stages):
            groups[(i, stage.layers[0].block)].append((rec["accuracy"], rec["flops"] / 1e6))
    return {key: {"n": len(v), "acc": float(np.mean([a for a, _ in v])), "mflops": float(np.mean([f for _, f in v]))}
            for key, v in sorted(groups.items())}


def markdown(path: str, header: dict, rows: dict[tuple[int, str], dict]) -> str:
    """The table as Markdown, with where the numbers come from."""
    lines = [f"Accuracy dataset `{path}`: space {header.get('space')} ({header.get('space_fingerprint')}), "
             f"checkpoint {header.get('checkpoint_hash')}, split {header.get('split')}", "",
             "| stage | first block | subnets | mean accuracy | mean MFLOPs |", "| ---: | --- | ---: | ---: | ---: |"]
    for (stage, block), r in rows.items():
        lines.append(f"| {stage + 1} | {block} ({BLOCK_ABBREV[block]}) | {r['n']} | {r['acc']:.2%} | {r['mflops']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Print (and with --out write) the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", help="accuracy dataset (.jsonl written by hwnas predictor dataset or gpu_predictor_cifar.py)")
    p.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = p.parse_args(argv)
    try:
        data = AccuracyDataset.load(args.dataset)
    except UserError as e:
        sys.exit(f"accuracy_by_block: {e}")
    if not data.records:
        p.error(f"accuracy dataset {args.dataset!r} holds no subnets; expected at least one record")
    text = markdown(args.dataset, data.header, table_by_first_block(data))
    print(text, end="")
    if args.out:
        atomic_write_text(Path(args.out), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
