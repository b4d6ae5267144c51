"""Search-space configuration: plain data, loaded from YAML/TOML or a preset, validated.

Every error names the offending key (``stages[2].kernels``) and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import UserError
from .specs import layer_block_types
from .io import read_text

PRESET_DIR = Path(__file__).parent / "presets"
ACTIVATIONS = ("relu", "hswish", "silu")
EXTREMES = ("per_stage", "per_layer")  # how SearchSpace.largest()/smallest() pick options


class ConfigError(UserError):
    """A search-space config with a missing, unknown or invalid key."""


@dataclass(frozen=True)
class StageConfig:
    """Choices of one stage (base channels are scaled by the width multipliers)."""

    channels: int
    stride: int
    depths: tuple[int, ...]
    widths: tuple[float, ...]
    blocks: tuple[str, ...]
    kernels: tuple[int, ...]
    expansions: dict  # block type -> tuple of ratios
    se: bool

    def layer_options(self) -> list[tuple[str, int, float]]:
        """Every (block, kernel, expansion) a layer of this stage may take, in a fixed order."""
        return [(b, k, e) for b in self.blocks for k in self.kernels for e in self.expansions[b]]


@dataclass(frozen=True)
class SpaceConfig:
    """A whole search space."""

    name: str
    in_channels: int
    num_classes: int
    resolutions: tuple[int, ...]
    act: str
    stem_channels: int
    stem_kernel: int
    stem_stride: int
    head_channels: int | None
    dropout: float
    stages: tuple[StageConfig, ...]
    extremes: str = "per_stage"

    def to_json(self) -> dict:
        """Plain-data config that :func:`parse_config` reads back (also what the fingerprint hashes)."""
        d = json.loads(json.dumps(asdict(self)))
        return {
            "name": d["name"], "in_channels": d["in_channels"], "num_classes": d["num_classes"],
            "resolutions": d["resolutions"], "act": d["act"],
            "stem": {"channels": d["stem_channels"], "kernel": d["stem_kernel"], "stride": d["stem_stride"]},
            "head": {"channels": d["head_channels"]}, "dropout": d["dropout"], "stages": d["stages"],
            # Only when set, so that spaces without the key keep their fingerprints.
            **({"extremes": d["extremes"]} if d["extremes"] != "per_stage" else {}),
        }

    def fingerprint(self) -> str:
        """Short hash identifying this space: tables and predictors refuse another."""
        blob = json.dumps(self.to_json(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


_TOP_KEYS = {"name", "in_channels", "num_classes", "resolutions", "act", "stem", "head", "dropout", "defaults", "stages",
             "extremes"}
_STAGE_KEYS = {"channels", "stride", "depths", "widths", "blocks", "kernels", "expansions", "se"}


def _err(key: str, expected: str, got) -> ConfigError:
    return ConfigError(f"config key '{key}': expected {expected}, got {got!r}")


def _int(d: dict, key: str, path: str, *, default=None, minimum: int = 1) -> int:
    v = d.get(key, default)
    if v is None or isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise _err(f"{path}{key}", f"an integer >= {minimum}", v)
    return v


def _list(d: dict, key: str, path: str, kind: type, check, expected: str) -> tuple:
    v = d.get(key)
    ok = isinstance(v, list) and v and all(
        isinstance(x, kind) and not isinstance(x, bool) and check(x) for x in v
    )
    if not ok or len(set(v)) != len(v):
        raise _err(f"{path}{key}", f"a non-empty list of distinct {expected}", v)
    return tuple(sorted(v)) if kind is not str else tuple(v)


def _num_list(d: dict, key: str, path: str) -> tuple:
    v = d.get(key)
    if not isinstance(v, list) or not v or any(isinstance(x, bool) or not isinstance(x, (int, float)) or x <= 0 for x in v):
        raise _err(f"{path}{key}", "a non-empty list of positive numbers", v)
    if len(set(v)) != len(v):
        raise _err(f"{path}{key}", "distinct values", v)
    return tuple(sorted(int(x) if float(x).is_integer() else float(x) for x in v))


def _stage(raw, i: int, defaults: dict) -> StageConfig:
    path = f"stages[{i}]."
    if not isinstance(raw, dict):
        raise _err(f"stages[{i}]", "a mapping", raw)
    unknown = set(raw) - _STAGE_KEYS
    if unknown:
        raise ConfigError(f"config key '{path}{sorted(unknown)[0]}': unknown key, expected one of {sorted(_STAGE_KEYS)}")
    d = {**defaults, **raw}
    for key in _STAGE_KEYS - {"se"}:
        if key not in d:
            raise ConfigError(f"config key '{path}{key}': missing (set it in the stage or in 'defaults')")
    known = layer_block_types()
    blocks = _list(d, "blocks", path, str, lambda b: b in known, f"block types from {list(known)}")
    exp_raw = d["expansions"]
    if isinstance(exp_raw, list):
        exp_raw = {b: exp_raw for b in blocks}
    if not isinstance(exp_raw, dict):
        raise _err(f"{path}expansions", "a list of ratios or a mapping block type -> list of ratios", exp_raw)
    expansions = {}
    for b in blocks:
        if b not in exp_raw:
            raise ConfigError(f"config key '{path}expansions.{b}': missing (every block type in 'blocks' needs ratios)")
        expansions[b] = _num_list(exp_raw, b, f"{path}expansions.")
    stride = _int(d, "stride", path)
    if stride not in (1, 2):
        raise _err(f"{path}stride", "1 or 2", stride)
    se = d.get("se", False)
    if not isinstance(se, bool):
        raise _err(f"{path}se", "true or false", se)
    return StageConfig(
        channels=_int(d, "channels", path),
        stride=stride,
        depths=_list(d, "depths", path, int, lambda x: x >= 1, "integers >= 1"),
        widths=_num_list(d, "widths", path),
        blocks=blocks,
        kernels=_list(d, "kernels", path, int, lambda k: k >= 1 and k % 2 == 1, "odd positive integers"),
        expansions=expansions,
        se=se,
    )


def parse_config(raw: dict) -> SpaceConfig:
    """Validate a plain-data config and return a :class:`SpaceConfig`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(raw).__name__}")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"config key '{sorted(unknown)[0]}': unknown key, expected one of {sorted(_TOP_KEYS)}")
    for key in ("name", "stem", "stages", "resolutions"):
        if key not in raw:
            raise ConfigError(f"config key '{key}': missing")
    if not isinstance(raw["name"], str) or not raw["name"]:
        raise _err("name", "a non-empty string", raw["name"])
    act = raw.get("act", "relu")
    if act not in ACTIVATIONS:
        raise _err("act", f"one of {list(ACTIVATIONS)}", act)
    stem = raw["stem"]
    if not isinstance(stem, dict):
        raise _err("stem", "a mapping with channels, kernel, stride", stem)
    head = raw.get("head") or {}
    if not isinstance(head, dict):
        raise _err("head", "a mapping with 'channels'", head)
    head_channels = head.get("channels")
    if head_channels is not None:
        head_channels = _int(head, "channels", "head.")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise _err("defaults", "a mapping of stage keys", defaults)
    stages = raw["stages"]
    if not isinstance(stages, list) or not stages:
        raise _err("stages", "a non-empty list of stage mappings", stages)
    dropout = raw.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise _err("dropout", "a number in [0, 1)", dropout)
    extremes = raw.get("extremes", "per_stage")
    if extremes not in EXTREMES:
        raise _err("extremes", f"one of {list(EXTREMES)}", extremes)
    stem_kernel = _int(stem, "kernel", "stem.", default=3)
    if stem_kernel % 2 == 0:
        raise _err("stem.kernel", "an odd integer", stem_kernel)
    return SpaceConfig(
        name=raw["name"],
        in_channels=_int(raw, "in_channels", "", default=3),
        num_classes=_int(raw, "num_classes", "", default=10, minimum=2),
        resolutions=_list(raw, "resolutions", "", int, lambda r: r >= 4, "integers >= 4"),
        act=act,
        stem_channels=_int(stem, "channels", "stem."),
        stem_kernel=stem_kernel,
        stem_stride=_int(stem, "stride", "stem.", default=1),
        head_channels=head_channels,
        dropout=float(dropout),
        stages=tuple(_stage(s, i, defaults) for i, s in enumerate(stages)),
        extremes=extremes,
    )


def preset_names() -> list[str]:
    """Names of the bundled presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(source: str | Path | dict) -> SpaceConfig:
    """Load a config from a preset name, a YAML/TOML file, or a dict."""
    if isinstance(source, dict):
        return parse_config(source)
    source = str(source)
    path = Path(source)
    if not path.suffix and not path.exists():
        if source not in preset_names():
            raise ConfigError(f"unknown space preset {source!r}: expected one of {preset_names()} or a .yaml/.toml file")
        path = PRESET_DIR / f"{source}.yaml"
    if not path.is_file():
        raise ConfigError(f"space config file {str(path)!r} not found: expected a preset name {preset_names()} or a .yaml/.toml file")
    text = read_text(path, "space config", "a YAML or TOML file", ConfigError)
    try:
        if path.suffix == ".toml":
            raw = tomllib.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as e:  # parse errors from either library
        msg = str(e).replace("\n", " ")
        raise ConfigError(f"space config {str(path)!r} is not valid {path.suffix[1:] or 'yaml'}: {msg}") from None
    return parse_config(raw)
