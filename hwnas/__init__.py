"""hwnas: hardware-aware neural architecture search (command line, pipeline, datasets, export)."""

from hwnas.export import create_model, load_model

__all__ = ["create_model", "load_model"]
__version__ = "0.1.0"
