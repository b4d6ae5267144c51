"""Block specs: the static shape of one block, the key latency tables are built on.

A spec fixes everything that decides a block's runtime: type, channels, input size,
stride, kernel, expansion, squeeze-excite and activation. Its FLOPs and parameter counts
are computed here analytically (FLOPs as ``torch.utils.flop_counter`` counts them:
2 x multiply-accumulates of convolutions and linear layers, at batch 1).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from .errors import UserError


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without losing more than 10%."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def conv_out(size: int, stride: int) -> int:
    """Output size of a 'same'-padded convolution (odd kernel, padding k // 2)."""
    return (size - 1) // stride + 1


@dataclass(frozen=True, order=True)
class BlockSpec:
    """Static shape of one block (``stem`` and ``head`` included, for whole-net latency)."""

    block: str  # a registered block type (mbconv, fused_mbconv, pconv, resnet, conv_pool, ...), stem or head
    c_in: int
    c_out: int  # head: number of classes
    size: int  # input height = width
    stride: int = 1
    kernel: int = 1
    expansion: float = 1  # head: channels of its 1x1 conv (0 = none)
    se: bool = False
    act: str = "relu"

    @property
    def out_size(self) -> int:
        """Spatial size of the output."""
        return 1 if self.block == "head" else conv_out(self.size, self.stride)

    @property
    def mid(self) -> int:
        """Hidden channels, as the block type defines them (e.g. expansion x input for mbconv)."""
        return block_type(self.block).mid(self)

    @property
    def needs_projection(self) -> bool:
        """Whether the identity path must change shape (resnet shortcut, pconv merge)."""
        return self.stride != 1 or self.c_in != self.c_out

    @property
    def residual(self) -> bool:
        """Whether mbconv / fused_mbconv / conv_pool add their input to the output."""
        return self.stride == 1 and self.c_in == self.c_out

    @property
    def key(self) -> str:
        """Stable, readable identifier used as the latency-table key."""
        e = format(self.expansion, "g")
        return (
            f"{self.block}:c{self.c_in}-{self.c_out}:r{self.size}:s{self.stride}:k{self.kernel}"
            f":e{e}:se{int(self.se)}:{self.act}"
        )

    @classmethod
    def from_key(cls, key: str) -> "BlockSpec":
        """Inverse of :attr:`key`."""
        block, ch, r, s, k, e, se, act = key.split(":")
        c_in, c_out = ch[1:].split("-")
        ev = float(e[1:])
        return cls(block, int(c_in), int(c_out), int(r[1:]), int(s[1:]), int(k[1:]),
                   int(ev) if ev.is_integer() else ev, se[2:] == "1", act)

    def flops(self) -> int:
        """FLOPs at batch 1 (2 x MACs of convs and linears, as FlopCounterMode counts)."""
        return _flops_params(self)[0]

    def params(self) -> int:
        """Trainable parameters of the static block."""
        return _flops_params(self)[1]


def conv_cost(cin: int, cout: int, k: int, out_hw: int, groups: int = 1, bn: bool = True,
              bias: bool = False) -> tuple[int, int]:
    """(flops, params) of one conv (+BN) with an ``out_hw`` x ``out_hw`` output."""
    macs = cout * out_hw * out_hw * (cin // groups) * k * k
    params = cout * (cin // groups) * k * k + (2 * cout if bn else 0) + (cout if bias else 0)
    return 2 * macs, params


def se_channels(c: int) -> int:
    """Bottleneck width of squeeze-excite on ``c`` channels."""
    return make_divisible(c / 4)


def se_cost(c: int) -> tuple[int, int]:
    """(flops, params) of squeeze-excite on ``c`` channels."""
    r = se_channels(c)
    f1, p1 = conv_cost(c, r, 1, 1, bn=False, bias=True)
    f2, p2 = conv_cost(r, c, 1, 1, bn=False, bias=True)
    return f1 + f2, p1 + p2


def pconv_channels(c: int) -> int:
    """Channels the partial convolution of a FasterNet block touches (1/4, as in FasterNet)."""
    return max(1, c // 4)


def pconv_merge_kernel(stride: int) -> int:
    """Kernel of the pconv merge conv: 3x3 when downsampling (keeps sizes of other blocks), else 1x1."""
    return 3 if stride != 1 else 1


@lru_cache(maxsize=None)
def _flops_params(s: BlockSpec) -> tuple[int, int]:
    parts = block_type(s.block).cost(s)
    return sum(f for f, _ in parts), sum(p for _, p in parts)


# ----------------------------------------------------------------------------- block types


@dataclass(frozen=True)
class BlockType:
    """Everything the space, the latency tables and the supernet need of one block type."""

    name: str  # in configs, JSON archs and table keys, e.g. "mbconv"
    abbrev: str | None  # in arch strings, e.g. "mb" (mb3e6); None: not a layer choice (stem, head)
    mid: Callable[[BlockSpec], int]  # hidden channels of a spec
    cost: Callable[[BlockSpec], list[tuple[int, int]]]  # (FLOPs, params) of each layer of a spec
    module: str | type  # the torch module class, or "package.module:Class" imported when first built

    def module_class(self) -> type:
        """The block's ``nn.Module`` class (a :class:`search_space.blocks.Block` for layer choices)."""
        if isinstance(self.module, str):
            path, _, cls = self.module.partition(":")
            return getattr(importlib.import_module(path), cls)
        return self.module


BLOCK_REGISTRY: dict[str, BlockType] = {}
# Views kept in step with the registry (arch strings are formatted and parsed through them).
BLOCK_ABBREV: dict[str, str] = {}
ABBREV_BLOCK: dict[str, str] = {}
_ABBREV_RE = re.compile(r"^[a-z]+$")


def register_block_type(name: str, abbrev: str | None, *, mid: Callable[[BlockSpec], int],
                        cost: Callable[[BlockSpec], list[tuple[int, int]]], module: str | type) -> BlockType:
    """Declare a block type: its arch-string abbreviation (lower-case letters), hidden channels,
    per-layer (FLOPs, params) and module class (a :class:`search_space.blocks.Block` subclass
    whose ``layout`` names its convs, so that the supernet makes it elastic). Configs may then
    list it under ``blocks``; see docs/DESIGN.md for a worked example."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name or ""):
        raise UserError(f"block type name {name!r} is invalid: expected lower-case letters, digits and '_'")
    if name in BLOCK_REGISTRY:
        raise UserError(f"block type {name!r} is already registered: expected a new name")
    if abbrev is not None and (not _ABBREV_RE.match(abbrev) or abbrev in ABBREV_BLOCK or abbrev in ("r", "w")):
        raise UserError(f"block abbreviation {abbrev!r} for {name!r} is invalid or taken: expected lower-case "
                        f"letters, not one of {sorted(ABBREV_BLOCK)}")
    bt = BLOCK_REGISTRY[name] = BlockType(name, abbrev, mid, cost, module)
    if abbrev is not None:
        BLOCK_ABBREV[name], ABBREV_BLOCK[abbrev] = abbrev, name
    return bt


def unregister_block_type(name: str) -> None:
    """Remove a block type registered by :func:`register_block_type` (tests, notebooks)."""
    bt = BLOCK_REGISTRY.pop(name)
    if bt.abbrev is not None:
        del BLOCK_ABBREV[name], ABBREV_BLOCK[bt.abbrev]
    _flops_params.cache_clear()


def block_type(name: str) -> BlockType:
    """The registered block type ``name``."""
    try:
        return BLOCK_REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown block type {name!r}: expected one of {sorted(BLOCK_REGISTRY)}") from None


def layer_block_types() -> tuple[str, ...]:
    """Block types a config may list as layer choices (every registered type but stem and head)."""
    return tuple(BLOCK_ABBREV)


# The built-in types; their modules live in search_space/blocks.py (imported with torch when built).
def _expand_input(s: BlockSpec) -> int:
    return make_divisible(s.c_in * s.expansion)


def _expand_output(s: BlockSpec) -> int:
    return make_divisible(s.c_out * s.expansion)


def _as_given(s: BlockSpec) -> int:
    return int(s.expansion)


def _with_se(parts: list, c: int, s: BlockSpec) -> list:
    return parts + [se_cost(c)] if s.se else parts


def _mbconv_cost(s):
    return _with_se([conv_cost(s.c_in, s.mid, 1, s.size), conv_cost(s.mid, s.mid, s.kernel, s.out_size, groups=s.mid)],
                    s.mid, s) + [conv_cost(s.mid, s.c_out, 1, s.out_size)]


def _fused_mbconv_cost(s):
    return _with_se([conv_cost(s.c_in, s.mid, s.kernel, s.out_size)], s.mid, s) + [conv_cost(s.mid, s.c_out, 1, s.out_size)]


def _pconv_cost(s):
    out, cp = s.out_size, pconv_channels(s.c_out)
    parts = [conv_cost(s.c_in, s.c_out, pconv_merge_kernel(s.stride), out)] if s.needs_projection else []
    parts += [conv_cost(cp, cp, s.kernel, out, bn=False), conv_cost(s.c_out, s.mid, 1, out),
              conv_cost(s.mid, s.c_out, 1, out)]
    return _with_se(parts, s.c_out, s)


def _resnet_cost(s):
    out = s.out_size
    parts = _with_se([conv_cost(s.c_in, s.mid, s.kernel, out), conv_cost(s.mid, s.c_out, s.kernel, out)], s.c_out, s)
    return parts + ([conv_cost(s.c_in, s.c_out, 1, out)] if s.needs_projection else [])


def _conv_pool_cost(s):
    # stride 1 at the input's size, then a max-pool (no FLOPs counted)
    return _with_se([conv_cost(s.c_in, s.c_out, s.kernel, s.size)], s.c_out, s)


def _stem_cost(s):
    return [conv_cost(s.c_in, s.c_out, s.kernel, s.out_size)]


def _head_cost(s):
    parts, c = [], s.c_in
    if s.mid:
        parts.append(conv_cost(c, s.mid, 1, s.size))
        c = s.mid
    return parts + [(2 * c * s.c_out, c * s.c_out + s.c_out)]


for _name, _abbrev, _mid, _cost, _cls in (
        ("mbconv", "mb", _expand_input, _mbconv_cost, "MBConv"),
        ("fused_mbconv", "fmb", _expand_input, _fused_mbconv_cost, "FusedMBConv"),
        ("pconv", "pc", _expand_output, _pconv_cost, "PConvBlock"),
        ("resnet", "rn", _expand_output, _resnet_cost, "ResNetBlock"),
        ("conv_pool", "cp", _as_given, _conv_pool_cost, "ConvPool"),
        ("stem", None, _as_given, _stem_cost, "Stem"),
        ("head", None, _as_given, _head_cost, "Head")):
    register_block_type(_name, _abbrev, mid=_mid, cost=_cost, module=f"search_space.blocks:{_cls}")
