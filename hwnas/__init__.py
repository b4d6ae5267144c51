"""hwnas: hardware-aware neural architecture search (command line, pipeline, datasets, export)."""

from search_space._lazy import lazy_exports

# Lazy, so that the command line starts without torch (hwnas.export imports it).
__getattr__, __dir__, __all__ = lazy_exports(__name__, {"export": ["create_model", "load_model"]})
__version__ = "0.1.0"
