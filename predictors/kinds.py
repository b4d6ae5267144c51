"""The built-in predictor kinds, registered: importing this module fills :data:`PREDICTORS`
(each kind registers itself when its module is imported; see :func:`predictor_kinds`)."""

from . import blend, gp, mlp, trees  # noqa: F401  (imported for their registration)
from .base import PREDICTORS

__all__ = ["PREDICTORS"]
