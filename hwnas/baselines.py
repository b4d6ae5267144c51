"""Baselines: the networks a user would pick instead of searching, built for a space's data.

A baseline name is one of

- a registered name (:func:`register_baseline`): ``largest`` (the space's largest subnet),
  ``resnet18`` (timm's ResNet-18 with a small-image stem for inputs up to 64 px: the CIFAR
  ResNet-18);
- ``timm:<model>``: any timm model, its stem adapted the same way where it has one;
- ``module:callable``: any importable callable returning a ``torch.nn.Module`` (called with
  ``num_classes=`` and ``in_chans=`` where it takes them).

Adding a baseline is one decorated function, the way timm registers models.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable

from torch import nn

from search_space import SearchSpace
from search_space.errors import UserError

SMALL_IMAGE_MAX = 64  # inputs up to this size get a stride-1 3x3 stem and no stem max-pool


class BaselineError(UserError):
    """An unknown baseline name, or a callable that does not build a network."""


BASELINES: dict[str, Callable[[SearchSpace], nn.Module]] = {}


def register_baseline(name: str):
    """Decorator: ``fn(space) -> nn.Module`` becomes the baseline ``name``."""

    def add(fn):
        BASELINES[name] = fn
        return fn

    return add


@register_baseline("largest")
def largest(space: SearchSpace) -> nn.Module:
    """The space's largest subnet as a plain network, freshly initialised."""
    from search_space import Subnet

    arch = space.largest()
    return Subnet(arch, space.block_specs(arch), dropout=space.config.dropout)


@register_baseline("resnet18")
def resnet18(space: SearchSpace) -> nn.Module:
    """timm's ResNet-18; on small images with the CIFAR stem (11.2M parameters)."""
    return timm_model("resnet18", space)


def timm_model(name: str, space: SearchSpace) -> nn.Module:
    """A timm model for the space's classes and channels; on small inputs its ImageNet stem
    (7x7 stride-2 conv + max-pool, which leaves a 32 px image 8 px wide after the stem) becomes
    a 3x3 stride-1 conv without pooling, as CIFAR ResNets do."""
    import timm

    cfg = space.config
    try:
        model = timm.create_model(name, pretrained=False, num_classes=cfg.num_classes, in_chans=cfg.in_channels)
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise BaselineError(f"baseline 'timm:{name}': {e}; expected a name from timm.list_models()") from None
    if max(cfg.resolutions) <= SMALL_IMAGE_MAX and isinstance(getattr(model, "conv1", None), nn.Conv2d):
        old = model.conv1
        model.conv1 = nn.Conv2d(old.in_channels, old.out_channels, 3, stride=1, padding=1, bias=False)
        if hasattr(model, "maxpool"):
            model.maxpool = nn.Identity()
    return model


def _from_callable(name: str, space: SearchSpace) -> nn.Module:
    module_name, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise BaselineError(f"baseline {name!r}: cannot import it ({e}); expected module:callable") from None
    if not callable(fn):
        raise BaselineError(f"baseline {name!r} is not callable; expected module:callable returning a torch.nn.Module")
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs = {k: v for k, v in (("num_classes", space.config.num_classes), ("in_chans", space.config.in_channels))
              if k in params}
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise BaselineError(f"baseline {name!r} returned {type(model).__name__}; expected a torch.nn.Module")
    return model


def make_baseline(name: str, space: SearchSpace) -> nn.Module:
    """Build baseline ``name`` (see the module docstring) for ``space``'s inputs and classes."""
    if name in BASELINES:
        return BASELINES[name](space)
    if name.startswith("timm:"):
        return timm_model(name[len("timm:"):], space)
    if ":" in name and all(name.partition(":")[::2]):
        return _from_callable(name, space)
    raise BaselineError(f"unknown baseline {name!r}; expected one of {sorted(BASELINES)}, timm:<model> "
                        "or module:callable")


def check_baseline_name(name) -> str:
    """Validate a baseline name's form without building it (for config files)."""
    if not isinstance(name, str) or not (name in BASELINES or name.startswith("timm:")
                                         or (":" in name and all(name.partition(":")[::2]))):
        raise BaselineError(f"unknown baseline {name!r}; expected one of {sorted(BASELINES)}, timm:<model> "
                            "or module:callable")
    return name
