"""The little a search needs from a search space (any object with these methods works)."""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class SearchSpaceProtocol(Protocol):
    """What :func:`search.run_search` calls on a space.

    ``suggest`` draws one architecture through an Optuna trial (define-by-run; suggest the
    same parameters every time so the space is static and GA samplers cross over all of them),
    ``from_params`` rebuilds it from the trial's stored parameters (resume, reports), and
    ``encode_many`` gives the fixed-length vectors predictors read. ``str(arch)`` names an
    architecture in reports. ``flops(arch)`` / ``params(arch)`` are used when present.
    """

    def suggest(self, trial: Any) -> Any:
        """Draw an architecture through ``trial.suggest_*``."""

    def from_params(self, params: dict) -> Any:
        """The architecture that :meth:`suggest` returned for these parameters."""

    def encode_many(self, archs: Sequence[Any]) -> np.ndarray:
        """Encodings of ``archs``, shape (n, d)."""
