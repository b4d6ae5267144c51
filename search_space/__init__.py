"""Block search space, architectures, and the weight-sharing supernet.

Names load lazily (see :mod:`search_space._lazy`): arch strings, configs, :class:`SearchSpace`,
errors and file helpers need no torch; the blocks, supernet and checkpoints import it."""

from ._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "arch": ["BLOCK_TYPES", "Arch", "ArchError", "LayerChoice", "StageChoice"],
    "blocks": ["build_block"],
    "checkpoint": ["CheckpointError", "checkpoint_hash", "checkpoint_meta", "load_supernet", "save_supernet"],
    "errors": ["UserError"],
    "config": ["ConfigError", "SpaceConfig", "load_config", "preset_names"],
    "space": ["SearchSpace"],
    "specs": ["BlockSpec", "BlockType", "block_type", "make_divisible", "register_block_type"],
    "supernet": ["Subnet", "Supernet", "recalibrate_bn"],
})
