"""Architectures: immutable, hashable, with a canonical string and JSON form.

String form (one ``/``-separated group per stage, after the resolution)::

    r32/w1:mb3e6,fmb5e4/w0.75:rn3e1,pc3e2

``mb3e6`` = block ``mbconv``, kernel 3, expansion 6. The depth of a stage is the
number of layers listed, so layers beyond a stage's depth cannot make two
architectures differ.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .errors import UserError
from .specs import ABBREV_BLOCK, BLOCK_ABBREV  # kept in step with the block-type registry (specs.py)

BLOCK_TYPES = tuple(BLOCK_ABBREV)  # the built-in layer block types; registered ones: specs.layer_block_types()

_LAYER_RE = re.compile(r"^([a-z]+)(\d+)e(\d+(?:\.\d+)?)$")
_STAGE_RE = re.compile(r"^w(\d+(?:\.\d+)?):(.+)$")
_RES_RE = re.compile(r"^r(\d+)$")
ARCH_FORMAT = "'r<resolution>/w<width>:<block><kernel>e<expansion>,.../...' (e.g. r32/w1:mb3e6,rn3e1/w0.5:pc3e2)"


class ArchError(UserError):
    """A malformed architecture, or one outside its search space."""


def _num(x: float) -> float | int:
    """Integers stay integers so that strings and JSON are canonical."""
    return int(x) if float(x).is_integer() else float(x)


def _fmt(x: float) -> str:
    return format(_num(x), "g")


@dataclass(frozen=True)
class LayerChoice:
    """One layer: block type, kernel size and expansion ratio."""

    block: str
    kernel: int
    expansion: float

    def __str__(self) -> str:
        return f"{BLOCK_ABBREV[self.block]}{self.kernel}e{_fmt(self.expansion)}"


@dataclass(frozen=True)
class StageChoice:
    """One stage: width multiplier and its active layers (depth = len(layers))."""

    width: float
    layers: tuple[LayerChoice, ...]

    @property
    def depth(self) -> int:
        """Number of active layers."""
        return len(self.layers)

    def __str__(self) -> str:
        return f"w{_fmt(self.width)}:" + ",".join(str(l) for l in self.layers)


@dataclass(frozen=True)
class Arch:
    """A subnet of a search space: input resolution and one choice per stage."""

    resolution: int
    stages: tuple[StageChoice, ...]

    def __str__(self) -> str:
        return f"r{self.resolution}/" + "/".join(str(s) for s in self.stages)

    def to_json(self) -> dict:
        """Plain-data form (round-trips through :meth:`from_json`)."""
        return {
            "resolution": self.resolution,
            "stages": [
                {
                    "width": _num(s.width),
                    "layers": [
                        {"block": l.block, "kernel": l.kernel, "expansion": _num(l.expansion)}
                        for l in s.layers
                    ],
                }
                for s in self.stages
            ],
        }

    @classmethod
    def from_json(cls, data: dict | str) -> "Arch":
        """Build from :meth:`to_json` output (a dict or a JSON string)."""
        if isinstance(data, str):
            data = json.loads(data)
        try:
            return cls(
                resolution=int(data["resolution"]),
                stages=tuple(
                    StageChoice(
                        width=_num(s["width"]),
                        layers=tuple(
                            LayerChoice(str(l["block"]), int(l["kernel"]), _num(l["expansion"]))
                            for l in s["layers"]
                        ),
                    )
                    for s in data["stages"]
                ),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ArchError(f"malformed arch JSON {str(data)[:80]!r}: missing or bad key {e}") from None

    @classmethod
    def parse(cls, text: str) -> "Arch":
        """Parse the canonical string form; raises :class:`ArchError` naming the bad part."""
        parts = text.strip().split("/")
        m = _RES_RE.match(parts[0])
        if not m or len(parts) < 2:
            raise ArchError(f"malformed arch string {text!r}: expected {ARCH_FORMAT}")
        stages = []
        for i, part in enumerate(parts[1:]):
            sm = _STAGE_RE.match(part)
            if not sm:
                raise ArchError(f"malformed stage {i} {part!r} in arch {text!r}: expected 'w<width>:<layers>'")
            layers = []
            for j, tok in enumerate(sm.group(2).split(",")):
                lm = _LAYER_RE.match(tok)
                if not lm or lm.group(1) not in ABBREV_BLOCK:
                    raise ArchError(
                        f"malformed layer {tok!r} (stage {i}, layer {j}) in arch {text!r}: expected "
                        f"<block><kernel>e<expansion> with block one of {sorted(ABBREV_BLOCK)}"
                    )
                layers.append(LayerChoice(ABBREV_BLOCK[lm.group(1)], int(lm.group(2)), _num(float(lm.group(3)))))
            stages.append(StageChoice(_num(float(sm.group(1))), tuple(layers)))
        return cls(int(m.group(1)), tuple(stages))
