"""Block modules: one class per block type, shared by static subnets and the supernet.

Each block declares its layers once in ``layout(spec)``; the static model builds them at
the spec's exact size, the supernet builds them at the slot's largest size with elastic
layers (``search_space.elastic``) and narrows them per subnet with ``configure(spec)``.
Parameter names are identical in both, which is what makes weight export a plain slice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .specs import BlockSpec, block_type, pconv_channels, pconv_merge_kernel, se_channels


def make_act(name: str | None) -> nn.Module:
    """Activation module by name (None = identity)."""
    return {None: nn.Identity, "relu": lambda: nn.ReLU(inplace=True), "hswish": lambda: nn.Hardswish(inplace=True),
            "silu": lambda: nn.SiLU(inplace=True)}[name]()


class ConvBnAct(nn.Module):
    """Conv (no bias, 'same' padding) + optional BatchNorm + optional activation."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, depthwise: bool = False,
                 act: str | None = None, bn: bool = True):
        super().__init__()
        self.stride, self.depthwise = stride, depthwise
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=cin if depthwise else 1, bias=False)
        self.bn = nn.BatchNorm2d(cout) if bn else None
        self.act = make_act(act)

    def set_active(self, cout: int, k: int) -> None:
        """Static layers have one size; elastic ones override this."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation with a hard-sigmoid gate (MobileNetV3)."""

    def __init__(self, c: int):
        super().__init__()
        r = se_channels(c)
        self.reduce = nn.Conv2d(c, r, 1, bias=True)
        self.expand = nn.Conv2d(r, c, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.reduce(x.mean((2, 3), keepdim=True)))
        return x * F.hardsigmoid(self.expand(s))


class Block(nn.Module):
    """Base: builds the layers that ``layout`` names; ``configure`` narrows elastic ones."""

    def __init__(self, spec: BlockSpec, conv=ConvBnAct, se=SqueezeExcite, projection: bool | None = None):
        super().__init__()
        projection = spec.needs_projection if projection is None else projection
        for name, kw in self.layout(spec, projection).items():
            setattr(self, name, conv(**kw))
        self.se = se(self.se_channels(spec)) if spec.se else nn.Identity()
        self.out_act = make_act(spec.act)
        self.configure(spec)

    @staticmethod
    def layout(spec: BlockSpec, projection: bool) -> dict[str, dict]:
        """Name -> ConvBnAct keyword arguments of every conv layer."""
        raise NotImplementedError

    @staticmethod
    def se_channels(spec: BlockSpec) -> int:
        """Channels squeeze-excite acts on."""
        return spec.c_out

    def configure(self, spec: BlockSpec) -> None:
        """Make this block compute ``spec`` (a no-op in size for static blocks)."""
        for name, kw in self.layout(spec, spec.needs_projection).items():
            getattr(self, name).set_active(kw["cout"], kw["k"])
        self.residual = spec.residual
        self.projection = spec.needs_projection
        self.cp = pconv_channels(spec.c_out)


class MBConv(Block):
    """Inverted residual: 1x1 expand, kxk depthwise, (SE), 1x1 project (MobileNetV2/V3)."""

    @staticmethod
    def layout(s, projection):
        return {"expand": dict(cin=s.c_in, cout=s.mid, k=1, act=s.act),
                "dw": dict(cin=s.mid, cout=s.mid, k=s.kernel, stride=s.stride, depthwise=True, act=s.act),
                "proj": dict(cin=s.mid, cout=s.c_out, k=1)}

    @staticmethod
    def se_channels(s):
        return s.mid

    def forward(self, x):
        y = self.proj(self.se(self.dw(self.expand(x))))
        return x + y if self.residual else y


class FusedMBConv(Block):
    """Fused inverted residual: kxk dense expand, (SE), 1x1 project (EfficientNetV2)."""

    @staticmethod
    def layout(s, projection):
        return {"expand": dict(cin=s.c_in, cout=s.mid, k=s.kernel, stride=s.stride, act=s.act),
                "proj": dict(cin=s.mid, cout=s.c_out, k=1)}

    @staticmethod
    def se_channels(s):
        return s.mid

    def forward(self, x):
        y = self.proj(self.se(self.expand(x)))
        return x + y if self.residual else y


class PConvBlock(Block):
    """FasterNet block: partial kxk conv on 1/4 of the channels, then a pointwise MLP.

    A merge conv changes shape first when stride or channels change (FasterNet's
    downsampling layer), so the residual always has matching shapes.
    """

    @staticmethod
    def layout(s, projection):
        layers = {}
        if projection:
            k = pconv_merge_kernel(s.stride)
            layers["merge"] = dict(cin=s.c_in, cout=s.c_out, k=k, stride=s.stride)
        cp = pconv_channels(s.c_out)
        layers["partial"] = dict(cin=cp, cout=cp, k=s.kernel, bn=False)
        layers["mlp_in"] = dict(cin=s.c_out, cout=s.mid, k=1, act=s.act)
        layers["mlp_out"] = dict(cin=s.mid, cout=s.c_out, k=1)
        return layers

    def forward(self, x):
        if self.projection:
            x = self.merge(x)
        y = torch.cat([self.partial(x[:, : self.cp]), x[:, self.cp :]], dim=1)
        return x + self.se(self.mlp_out(self.mlp_in(y)))


class ResNetBlock(Block):
    """Basic residual block of two dense kxk convs (ResNet / TResNet style)."""

    @staticmethod
    def layout(s, projection):
        layers = {"conv1": dict(cin=s.c_in, cout=s.mid, k=s.kernel, stride=s.stride, act=s.act),
                  "conv2": dict(cin=s.mid, cout=s.c_out, k=s.kernel)}
        if projection:
            layers["shortcut"] = dict(cin=s.c_in, cout=s.c_out, k=1, stride=s.stride)
        return layers

    def forward(self, x):
        y = self.se(self.conv2(self.conv1(x)))
        return self.out_act(y + (self.shortcut(x) if self.projection else x))


class ConvPool(Block):
    """Plain kxk conv at the input's resolution, max-pooled when downsampling (ResNet-9's layer):
    pooling keeps the full-resolution conv that a strided conv would skip. Shapes that match
    get an identity shortcut, as mbconv's do."""

    @staticmethod
    def layout(s, projection):
        return {"conv": dict(cin=s.c_in, cout=s.c_out, k=s.kernel, act=s.act)}

    def configure(self, spec):
        super().configure(spec)
        self.pool = spec.stride

    def forward(self, x):
        y = self.conv(x)
        if self.pool != 1:
            y = F.max_pool2d(y, self.pool, ceil_mode=True)  # ceil: the size conv_out() gives a strided conv
        y = self.se(y)
        return x + y if self.residual else y


class Stem(Block):
    """Input convolution."""

    @staticmethod
    def layout(s, projection):
        return {"conv": dict(cin=s.c_in, cout=s.c_out, k=s.kernel, stride=s.stride, act=s.act)}

    def forward(self, x):
        return self.conv(x)


class Head(nn.Module):
    """Optional 1x1 conv, global average pool, dropout, linear classifier."""

    def __init__(self, spec: BlockSpec, conv=ConvBnAct, linear=nn.Linear, dropout: float = 0.0):
        super().__init__()
        c = spec.c_in
        self.conv = conv(cin=c, cout=spec.mid, k=1, act=spec.act) if spec.mid else None
        self.dropout = nn.Dropout(dropout)
        self.fc = linear(spec.mid or c, spec.c_out)

    def configure(self, spec: BlockSpec) -> None:
        """The head's output sizes never change; only its input width does."""

    def forward(self, x):
        if self.conv is not None:
            x = self.conv(x)
        return self.fc(self.dropout(torch.flatten(x.mean((2, 3)), 1)))


def block_class(name: str) -> type[nn.Module]:
    """The module class of block type ``name`` (see :func:`search_space.specs.register_block_type`)."""
    return block_type(name).module_class()


def build_block(spec: BlockSpec, dropout: float = 0.0) -> nn.Module:
    """A static module computing ``spec`` (random weights), e.g. to time it alone."""
    if spec.block == "head":
        return Head(spec, dropout=dropout)
    return block_class(spec.block)(spec)
