"""The predictor interface, its file format and the registry of predictor kinds.

Every predictor maps encodings ``X = space.encode_many(archs)`` to accuracy in [0, 1]:
``fit(X, y)``, ``predict(X) -> (mean, std)``, ``save(path)``, :func:`load_predictor`.
The base class owns what all kinds share: the space (its config and fingerprint travel in
the file, so a predictor refuses another space's encoding), the feature recipe, feature
standardisation and the target transform (``predictors.targets``). Subclasses only fit and
predict standardised arrays.

Any space with ``encode_many`` works (``search.SearchSpaceProtocol``): the cost and
composition recipes need the project's :class:`SearchSpace` (its config), so on another space
the default recipe is ``encoding`` and the encoding width is taken from the fit data; such a
file stores no config (``space`` is None), so :func:`load_predictor` needs the space passed.

File format (``torch.save`` of a dict): ``format="hwnas-predictor"``, ``version``, ``kind``,
``space`` (config as plain data), ``space_fingerprint``, ``features`` (recipe name),
``target`` (transform name; files without it used ``standard``), ``hparams``, ``scalers``,
``state`` (kind-specific; sklearn models are pickled, so load predictor files only from
sources you trust, as with any pickle), ``meta`` (free-form).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from search_space import SearchSpace, UserError
from search_space.io import atomic_torch_save

from .features import DEFAULT_FEATURES, FEATURE_RECIPES, make_features
from .targets import DEFAULT_TARGET, TARGET_TRANSFORMS, fit_target, inverse_target

FORMAT, VERSION = "hwnas-predictor", 1
PREDICTORS: dict[str, type["Predictor"]] = {}


class PredictorError(UserError):
    """A predictor file or input that cannot be used (foreign space, wrong shape, not fitted)."""


def register_predictor(kind: str) -> Callable[[type], type]:
    """Class decorator: make ``kind`` constructible by :func:`make_predictor` and loadable."""

    def deco(cls: type) -> type:
        cls.kind = kind
        PREDICTORS[kind] = cls
        return cls

    return deco


class Predictor:
    """Accuracy predictor over one search space's encoding; subclasses implement
    ``_fit(F, z)`` and ``_predict(F) -> (mean, std)`` on standardised features ``F`` and
    transformed targets ``z``, plus ``_get_state`` / ``_set_state`` for saving."""

    kind = "base"

    def __init__(self, space: SearchSpace, features: str | None = None, seed: int = 0,
                 target: str = DEFAULT_TARGET, **hparams):
        features = features or default_features(space)
        if features not in FEATURE_RECIPES:
            raise PredictorError(f"unknown feature recipe {features!r}: expected one of {list(FEATURE_RECIPES)}")
        if features != "encoding" and not _has_config(space):
            raise PredictorError(f"feature recipe {features!r} needs a search_space.SearchSpace (its config); "
                                 f"space {_space_name(space)!r} is a {type(space).__name__}: expected features='encoding'")
        if target not in TARGET_TRANSFORMS:
            raise PredictorError(f"unknown target transform {target!r}: expected one of {list(TARGET_TRANSFORMS)}")
        self.space = space
        self.features = features
        self.target = target
        self.seed = seed
        self.hparams = {**self.default_hparams(), **hparams}
        unknown = set(hparams) - set(self.default_hparams())
        if unknown:
            raise PredictorError(f"unknown {self.kind} hyper-parameter {sorted(unknown)[0]!r}: "
                                 f"expected one of {sorted(self.default_hparams())}")
        self.meta: dict = {}
        self._scalers: dict | None = None
        self._width: int | None = getattr(space, "encoding_size", None)  # else from the first fit

    @classmethod
    def default_hparams(cls) -> dict:
        """Hyper-parameters of this kind and their defaults."""
        return {}

    @property
    def space_fingerprint(self) -> str:
        """Fingerprint of the space whose encoding this predictor reads."""
        return getattr(self.space, "fingerprint", None)

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` (or loading) has happened."""
        return self._scalers is not None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(space={_space_name(self.space)!r}, features={self.features!r}, "
                f"target={self.target!r}, fitted={self.fitted})")

    # ---- public interface ------------------------------------------------------------
    def fit(self, X: np.ndarray, y: np.ndarray) -> "Predictor":
        """Fit on encodings ``X`` (n, space.encoding_size) and accuracies ``y`` (n,)."""
        X = np.asarray(X, dtype=np.float32)
        if not _has_config(self.space) and X.ndim == 2:
            self._width = X.shape[1]  # a protocol space does not say its encoding width
        X = self._check_X(X)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if y.shape[0] != X.shape[0]:
            raise PredictorError(f"fit got {X.shape[0]} encodings but {y.shape[0]} accuracies: expected equal counts")
        if X.shape[0] < 4 or not np.all(np.isfinite(y)):
            raise PredictorError(f"fit needs at least 4 finite accuracies, got {y.shape[0]} "
                                 f"({int((~np.isfinite(y)).sum())} not finite)")
        F = make_features(self.space, X, self.features).astype(np.float64)
        f_mean, f_std = F.mean(0), F.std(0)
        f_std[f_std < 1e-8] = 1.0  # constant columns (a single choice) stay zero, not NaN
        z, target_state = fit_target(y, self.target)
        self._scalers = {"f_mean": f_mean, "f_std": f_std, "width": X.shape[1], **target_state}
        self._fit((F - f_mean) / f_std, z)
        return self

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation of the predicted accuracy of each row of ``X``."""
        self._require_fitted()
        X = self._check_X(X)
        if X.shape[0] == 0:
            return np.zeros(0), np.zeros(0)
        return inverse_target(*self._predict(self._standardised(X)), self._scalers)

    def predict_transformed(self, X: np.ndarray) -> np.ndarray:
        """The predicted mean in the fitted target's units (a monotone map of accuracy, so it ranks
        as :meth:`predict` does; means of several kinds average here, as the blend does)."""
        return self._predict(self._standardised(self._check_X(X)))[0]

    def _standardised(self, X: np.ndarray) -> np.ndarray:
        """Standardised features of checked encodings ``X``."""
        self._require_fitted()
        s = self._scalers
        return (make_features(self.space, X, self.features).astype(np.float64) - s["f_mean"]) / s["f_std"]

    def save(self, path: str | Path, meta: dict | None = None) -> Path:
        """Write the fitted predictor atomically (``meta`` is merged into :attr:`meta`)."""
        if not self.fitted:
            raise PredictorError(f"{self.kind} predictor is not fitted: nothing to save")
        self.meta.update(meta or {})
        config = self.space.config.to_json() if _has_config(self.space) else None
        blob = {"format": FORMAT, "version": VERSION, "kind": self.kind, "space": config,
                "space_name": _space_name(self.space),
                "space_fingerprint": self.space_fingerprint, "features": self.features, "seed": self.seed,
                "target": self.target,
                "hparams": self.hparams, "scalers": self._scalers, "state": self._get_state(), "meta": self.meta}
        return atomic_torch_save(blob, path)

    # ---- helpers ---------------------------------------------------------------------
    def _require_fitted(self) -> None:
        if not self.fitted:
            raise PredictorError(f"{self.kind} predictor is not fitted: call fit(X, y) or load a saved one")

    def _check_X(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        width = self._width
        if X.ndim != 2 or (width is not None and X.shape[1] != width):
            raise PredictorError(f"encodings have shape {X.shape}: expected (n, {width if width is not None else 'd'}) "
                                 f"from space {_space_name(self.space)!r} ({self.space_fingerprint}).encode_many")
        return X

    def _fit(self, F: np.ndarray, z: np.ndarray) -> None:
        raise NotImplementedError

    def _predict(self, F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _get_state(self):
        raise NotImplementedError

    def _set_state(self, state) -> None:
        raise NotImplementedError


def predictor_kinds() -> dict[str, type[Predictor]]:
    """:data:`PREDICTORS` with the built-in kinds registered (the package loads lazily, so a
    kind's module may not have been imported yet)."""
    from . import kinds  # noqa: F401  (its import registers them)

    return PREDICTORS


def _has_config(space) -> bool:
    """Whether ``space`` is the project's SearchSpace kind (the cost recipes read its config)."""
    return hasattr(space, "config") and hasattr(space.config, "stages")


def _space_name(space) -> str:
    return getattr(space, "name", type(space).__name__)


def default_features(space) -> str:
    """The feature recipe used when none is given: :data:`DEFAULT_FEATURES` on a
    :class:`SearchSpace`, ``encoding`` on any other space (the only recipe it supports)."""
    return DEFAULT_FEATURES if _has_config(space) else "encoding"


def make_predictor(kind: str, space: SearchSpace, **kwargs) -> Predictor:
    """A new, unfitted predictor of ``kind`` (one of :data:`PREDICTORS`)."""
    kinds = predictor_kinds()
    if kind not in kinds:
        raise PredictorError(f"unknown predictor kind {kind!r}: expected one of {sorted(kinds)}")
    return kinds[kind](space, **kwargs)


def load_predictor(path: str | Path, space: SearchSpace | None = None) -> Predictor:
    """Load a saved predictor; with ``space`` given, refuse one fitted on another space."""
    path = Path(path)
    if not path.is_file():
        raise PredictorError(f"predictor file {str(path)!r} not found: "
                             "expected a file written by 'hwnas predictor fit'")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise PredictorError(f"predictor file {str(path)!r} is not readable ({type(e).__name__}): "
                             "expected a torch file written by 'hwnas predictor fit'") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise PredictorError(f"{str(path)!r} is not an hwnas predictor file: expected format {FORMAT!r}")
    if blob.get("version") != VERSION:
        raise PredictorError(f"predictor file {str(path)!r} has version {blob.get('version')!r}, expected {VERSION}")
    stored_name = blob.get("space_name") or (blob["space"] or {}).get("name")
    if space is not None and getattr(space, "fingerprint", None) != blob["space_fingerprint"]:
        raise PredictorError(f"predictor {str(path)!r} was fitted on space {stored_name!r} "
                             f"({blob['space_fingerprint']}), not on space {_space_name(space)!r} "
                             f"({getattr(space, 'fingerprint', None)}): fit a predictor on this space's accuracy dataset")
    if space is None and blob["space"] is None:
        raise PredictorError(f"predictor {str(path)!r} was fitted on a user-defined space {stored_name!r}, "
                             "whose config is not stored: expected load_predictor(path, space)")
    kinds = predictor_kinds()
    if blob["kind"] not in kinds:
        raise PredictorError(f"predictor {str(path)!r} has unknown kind {blob['kind']!r}: "
                             f"expected one of {sorted(kinds)}")
    pred = kinds[blob["kind"]](space or SearchSpace.from_config(blob["space"]), features=blob["features"],
                               seed=blob["seed"], target=blob.get("target", "standard"), **blob["hparams"])
    pred._scalers = blob["scalers"]
    pred._width = pred._width or blob["scalers"].get("width")
    pred._set_state(blob["state"])
    pred.meta = blob["meta"]
    return pred
