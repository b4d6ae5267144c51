"""Block search space, architectures, and the weight-sharing supernet."""

from .arch import BLOCK_TYPES, Arch, ArchError, LayerChoice, StageChoice
from .blocks import build_block
from .checkpoint import CheckpointError, checkpoint_hash, load_supernet, save_supernet
from .errors import UserError
from .config import ConfigError, SpaceConfig, load_config, preset_names
from .space import SearchSpace
from .specs import BlockSpec, make_divisible
from .supernet import Subnet, Supernet, recalibrate_bn

__all__ = [
    "Arch", "ArchError", "BLOCK_TYPES", "BlockSpec", "ConfigError", "LayerChoice", "SearchSpace", "SpaceConfig",
    "StageChoice", "Subnet", "Supernet", "build_block", "load_config", "make_divisible", "preset_names",
    "recalibrate_bn", "UserError", "CheckpointError", "checkpoint_hash", "load_supernet",
    "save_supernet",
]
