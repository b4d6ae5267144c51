"""The weight-sharing supernet, standalone subnets extracted from it, BN recalibration."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .arch import Arch
from .blocks import Head, Stem, block_class, build_block
from .elastic import ElasticConvBnAct, ElasticLinear, ElasticSqueezeExcite, copy_sliced
from .space import SearchSpace
from .specs import BlockSpec


class Subnet(nn.Module):
    """A standalone static network: stem, blocks, head (plain convs, no elastic logic)."""

    def __init__(self, arch: Arch, specs: list[BlockSpec], dropout: float = 0.0):
        super().__init__()
        self.arch = str(arch)
        self.stem = build_block(specs[0])
        self.blocks = nn.Sequential(*(build_block(s) for s in specs[1:-1]))
        self.head = build_block(specs[-1], dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class Supernet(nn.Module):
    """One module whose weights every subnet of ``space`` shares.

    Each layer slot holds one elastic block per allowed block type, built at the slot's
    largest size. ``set_active(arch)`` selects a subnet; ``forward`` then runs it.
    """

    def __init__(self, space: SearchSpace):
        super().__init__()
        self.space = space
        cfg = space.config
        self.stem = Stem(space.stem_spec(max(cfg.resolutions)))
        self.stages = nn.ModuleList()
        prev = [cfg.stem_channels]
        for i, st in enumerate(cfg.stages):
            outs = [space.stage_channels(i, w) for w in st.widths]
            slots = nn.ModuleList()
            for j in range(max(st.depths)):
                ins = prev if j == 0 else outs
                projection = (j == 0 and st.stride != 1) or any(a != b for a in ins for b in outs)
                slot = nn.ModuleDict()
                for b in st.blocks:
                    e = max(st.expansions[b])
                    spec = space._layer_spec(i, j, space.layer_options(i)[0].__class__(b, max(st.kernels), e),
                                             max(ins), max(outs), 8)
                    slot[b] = block_class(b)(spec, conv=ElasticConvBnAct, se=ElasticSqueezeExcite,
                                             projection=projection)
                slots.append(slot)
            self.stages.append(slots)
            prev = outs
        self.head = Head(space.head_spec(max(prev), 1), conv=ElasticConvBnAct, linear=ElasticLinear,
                         dropout=cfg.dropout)
        self.set_active(space.largest())

    def set_active(self, arch: Arch | str) -> Arch:
        """Make ``forward`` compute ``arch`` (validated against the space)."""
        arch = self.space.validate(arch)
        specs = self.space.block_specs(arch)[1:-1]
        active, k = [], 0
        for i, s in enumerate(arch.stages):
            for j in range(s.depth):
                block = self.stages[i][j][specs[k].block]
                block.configure(specs[k])
                active.append((block, specs[k]))
                k += 1
        self.active_arch, self._active = arch, active
        return arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block, _ in self._active:
            x = block(x)
        return self.head(x)

    def extract(self, arch: Arch | str | None = None) -> Subnet:
        """A static copy of ``arch`` (default: the active one) with the shared weights."""
        arch = self.space.validate(arch) if arch is not None else self.active_arch
        specs = self.space.block_specs(arch)
        net = Subnet(arch, specs, dropout=self.space.config.dropout)
        net.stem.load_state_dict(self.stem.state_dict())
        k = 0
        for i, s in enumerate(arch.stages):
            for j in range(s.depth):
                copy_sliced(self.stages[i][j][specs[k + 1].block].state_dict(), net.blocks[k])
                k += 1
        copy_sliced(self.head.state_dict(), net.head)
        return net.to(next(self.parameters()).device).train(self.training)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor], num_batches: int | None = None) -> None:
    """Reset BatchNorm running statistics and re-estimate them on ``batches`` (train mode,
    cumulative average), then leave the model in eval mode. Needed after weight sharing:
    the stored statistics mix every subnet that was trained."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for n, x in enumerate(batches):
        if num_batches is not None and n >= num_batches:
            break
        model(x[0] if isinstance(x, (tuple, list)) else x)
    for bn, m in zip(bns, momenta):
        bn.momentum = m
    model.eval()
