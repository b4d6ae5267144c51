"""Elastic layers: weights at the largest size, narrowed per subnet (OFA-style sharing).

Fewer output channels take the first channels; a smaller kernel is the centre of the
largest; input channels follow whatever the previous layer produced.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvBnAct, SqueezeExcite
from .specs import se_channels


def center_kernel(weight: torch.Tensor, k: int) -> torch.Tensor:
    """The central k x k window of a conv weight."""
    start = (weight.shape[-1] - k) // 2
    return weight[..., start : start + k, start : start + k]


def elastic_bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """BatchNorm over the first ``x.shape[1]`` channels of ``bn`` (running stats updated in place)."""
    c = x.shape[1]
    if c == bn.num_features:
        return bn(x)
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative average, used by BN recalibration
            momentum = 1.0 / float(bn.num_batches_tracked)
    use_batch_stats = bn.training or not bn.track_running_stats
    return F.batch_norm(x, bn.running_mean[:c], bn.running_var[:c], bn.weight[:c], bn.bias[:c],
                        use_batch_stats, momentum, bn.eps)


class ElasticConvBnAct(ConvBnAct):
    """ConvBnAct whose output channels and kernel are chosen by ``set_active``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.active_out = self.conv.out_channels
        self.active_k = self.conv.kernel_size[0]

    def set_active(self, cout: int, k: int) -> None:
        """Compute ``cout`` output channels with a ``k`` x ``k`` kernel."""
        self.active_out, self.active_k = cout, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cin, k = x.shape[1], self.active_k
        if self.depthwise:
            w, groups = self.conv.weight[:cin], cin
        else:
            w, groups = self.conv.weight[: self.active_out, :cin], 1
        x = F.conv2d(x, center_kernel(w, k), None, self.stride, k // 2, 1, groups)
        if self.bn is not None:
            x = elastic_bn(x, self.bn)
        return self.act(x)


class ElasticSqueezeExcite(SqueezeExcite):
    """Squeeze-excite whose width follows its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        r = se_channels(c)
        s = F.conv2d(x.mean((2, 3), keepdim=True), self.reduce.weight[:r, :c], self.reduce.bias[:r])
        s = F.conv2d(F.relu(s), self.expand.weight[:c, :r], self.expand.bias[:c])
        return x * F.hardsigmoid(s)


class ElasticLinear(nn.Linear):
    """Linear layer whose input width follows its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight[:, : x.shape[1]], self.bias)


def copy_sliced(src: dict[str, torch.Tensor], dst: nn.Module) -> None:
    """Load ``dst``'s state from larger tensors of the same names: first channels, centre kernels."""
    state = {}
    for name, target in dst.state_dict().items():
        t = src[name]
        if t.dim() == 0:
            state[name] = t.clone()
            continue
        if t.dim() == 4 and t.shape[-1] != target.shape[-1]:
            t = center_kernel(t, target.shape[-1])
        state[name] = t[tuple(slice(0, n) for n in target.shape)].clone()
    dst.load_state_dict(state)
