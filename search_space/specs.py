"""Block specs: the static shape of one block, the key latency tables are built on.

A spec fixes everything that decides a block's runtime: type, channels, input size,
stride, kernel, expansion, squeeze-excite and activation. Its FLOPs and parameter counts
are computed here analytically (FLOPs as ``torch.utils.flop_counter`` counts them:
2 x multiply-accumulates of convolutions and linear layers, at batch 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


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

    block: str  # mbconv | fused_mbconv | pconv | resnet | conv_pool | stem | head
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
        """Hidden channels: expansion of the input (mbconv, fused) or of the output (pconv, resnet)."""
        if self.block in ("mbconv", "fused_mbconv"):
            return make_divisible(self.c_in * self.expansion)
        if self.block in ("pconv", "resnet"):
            return make_divisible(self.c_out * self.expansion)
        return int(self.expansion)

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


def _conv(cin: int, cout: int, k: int, out_hw: int, groups: int = 1, bn: bool = True, bias: bool = False):
    """(flops, params) of one conv (+BN)."""
    macs = cout * out_hw * out_hw * (cin // groups) * k * k
    params = cout * (cin // groups) * k * k + (2 * cout if bn else 0) + (cout if bias else 0)
    return 2 * macs, params


def se_channels(c: int) -> int:
    """Bottleneck width of squeeze-excite on ``c`` channels."""
    return make_divisible(c / 4)


def _se(c: int):
    r = se_channels(c)
    f1, p1 = _conv(c, r, 1, 1, bn=False, bias=True)
    f2, p2 = _conv(r, c, 1, 1, bn=False, bias=True)
    return f1 + f2, p1 + p2


def pconv_channels(c: int) -> int:
    """Channels the partial convolution of a FasterNet block touches (1/4, as in FasterNet)."""
    return max(1, c // 4)


def pconv_merge_kernel(stride: int) -> int:
    """Kernel of the pconv merge conv: 3x3 when downsampling (keeps sizes of other blocks), else 1x1."""
    return 3 if stride != 1 else 1


@lru_cache(maxsize=None)
def _flops_params(s: BlockSpec) -> tuple[int, int]:
    out = s.out_size
    parts = []
    if s.block == "stem":
        parts.append(_conv(s.c_in, s.c_out, s.kernel, out))
    elif s.block == "head":
        c = s.c_in
        if s.mid:
            parts.append(_conv(c, s.mid, 1, s.size))
            c = s.mid
        parts.append((2 * c * s.c_out, c * s.c_out + s.c_out))
    elif s.block == "mbconv":
        parts += [_conv(s.c_in, s.mid, 1, s.size), _conv(s.mid, s.mid, s.kernel, out, groups=s.mid)]
        if s.se:
            parts.append(_se(s.mid))
        parts.append(_conv(s.mid, s.c_out, 1, out))
    elif s.block == "fused_mbconv":
        parts.append(_conv(s.c_in, s.mid, s.kernel, out))
        if s.se:
            parts.append(_se(s.mid))
        parts.append(_conv(s.mid, s.c_out, 1, out))
    elif s.block == "pconv":
        if s.needs_projection:
            parts.append(_conv(s.c_in, s.c_out, pconv_merge_kernel(s.stride), out))
        cp = pconv_channels(s.c_out)
        parts += [_conv(cp, cp, s.kernel, out, bn=False), _conv(s.c_out, s.mid, 1, out), _conv(s.mid, s.c_out, 1, out)]
        if s.se:
            parts.append(_se(s.c_out))
    elif s.block == "resnet":
        parts += [_conv(s.c_in, s.mid, s.kernel, out), _conv(s.mid, s.c_out, s.kernel, out)]
        if s.se:
            parts.append(_se(s.c_out))
        if s.needs_projection:
            parts.append(_conv(s.c_in, s.c_out, 1, out))
    elif s.block == "conv_pool":
        parts.append(_conv(s.c_in, s.c_out, s.kernel, s.size))  # stride 1, then a max-pool (no FLOPs counted)
        if s.se:
            parts.append(_se(s.c_out))
    else:
        raise ValueError(f"unknown block type {s.block!r}")
    return sum(f for f, _ in parts), sum(p for _, p in parts)
