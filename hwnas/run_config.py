"""The ``hwnas run`` configuration: one YAML file for the whole pipeline, validated.

Unknown keys, missing keys and wrong types are errors naming the key path
(``search.trials``) and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, TYPE_CHECKING

import yaml

from search_space.errors import UserError
from search_space.io import read_text

if TYPE_CHECKING:  # run_config stays torch-free: these are imported where a training is built
    from hwnas.supernet_training import RunSettings
    from search_space.training import TrainConfig

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "quickstart.yaml"
REQUIRED = object()

# key -> (allowed types, default) or a nested schema; lists of device mappings are checked below.
DEVICE_SCHEMA = {
    "name": ((str,), REQUIRED),
    "backend": ((str,), "onnxruntime"),
    "batch_size": ((int,), 1),
    "dtype": ((str,), "fp32"),
    "threads": ((int, type(None)), None),
    "table": ((str, type(None)), None),  # reuse this table (path or shipped name) instead of building one
    "options": ((dict,), {}),  # the backend's options and timing-plan fields (latency_tables.registry)
}
SCHEMA = {
    "name": ((str,), REQUIRED),
    "seed": ((int,), 0),
    "device": ((str,), "auto"),
    "space": ((str, dict), REQUIRED),
    "dataset": {"name": ((str,), REQUIRED), "path": ((str, type(None)), None)},
    "train": {"epochs": ((int,), 10), "batch_size": ((int,), 128), "lr": ((float, int), 0.05),
              "num_random": ((int,), 2), "students": ((str,), "mixed"),
              "augment": ((str, type(None)), None), "time_budget_min": ((float, int, type(None)), None),
              "teacher_dropout": ((float, int, type(None)), None), "teacher_cutout": ((bool,), False),
              "weight_decay": ((float, int), 5e-4), "ema_decay": ((float, type(None)), None),
              "label_smoothing": ((float, int), 0.1), "logit_scale": ((float, int), 1.0)},
    "latency": {"devices": ((list,), REQUIRED), "calibration": ((int,), 20), "validate": ((int,), 40)},
    "predictor": {"archs": ((int,), 200), "holdout": ((int, type(None)), None), "model": ((str,), "auto"),
                  # one accuracy measurement: BN recalibration batches, their size, evaluation batch size
                  "calib_batches": ((int,), 20), "calib_batch_size": ((int,), 256), "eval_batch_size": ((int,), 1000)},
    # rounds: N > 0 measures `queries` more subnets on the supernet in N rounds (search.search_rounds),
    # the accuracy dataset's subnets known beforehand; fronts are made of measured subnets only
    "search": {"trials": ((int,), 2000), "sampler": ((str,), "nsga2"), "budgets": ((dict,), {}),
               "rounds": ((int, type(None)), None), "queries": ((int,), 200)},
    "verify": {"top": ((int,), 8)},
    "export": {"top": ((int,), 3), "dynamic_batch": ((bool,), True)},
    # final training: the chosen (exported) archs and the baselines trained alone with one recipe
    # (epochs 0: the stage is skipped and exports carry supernet weights)
    "final": {"epochs": ((int,), 0), "batch_size": ((int,), 256), "lr": ((float, int, type(None)), None),
              "weight_decay": ((float, int), 5e-4), "label_smoothing": ((float, int), 0.1),
              "logit_scale": ((float, int), 1.0), "augment": ((str, type(None)), None),
              "init": ((list,), ["scratch", "inherited"]), "baselines": ((list,), ["largest"]),
              "ranking": ((int,), 0), "ranking_epochs": ((int,), 0), "choose": ((str,), "auto"),
              # archs per device the choice rule takes (auto adds one of most FLOPs); null: export.top
              "top": ((int, type(None)), None),
              # the fine-tuned estimate (epochs from inherited weights at lr, null: 1/5 of the recipe's) that the
              # measured rule picks by among its `estimate_candidates` best within the budget; 0: off
              "estimate_epochs": ((int,), 2), "estimate_lr": ((float, int, type(None)), None),
              "estimate_candidates": ((int,), 8)},
    # where the work runs (not what it computes: changing it redoes no stage). ray_address: join this
    # Ray cluster (hwnas run --ray-address overrides); tables are built on the node owning
    # device:NAME, the accuracy datasets are measured in `shards` Ray tasks (null: two per CPU, or
    # GPU with device cuda, of the cluster), the search runs `workers` Ray workers on `storage`
    # (null: OUT/search/study.journal, which every node must see; postgresql://USER@HOST/DB needs no shared filesystem)
    "cluster": {"ray_address": ((str, type(None)), None), "workers": ((int,), 2),
                "storage": ((str, type(None)), None), "shards": ((int, type(None)), None)},
}
# Counts where 0 means no work at all (the run would train for nothing): refused up front.
POSITIVE = ("train.batch_size", "cluster.workers", "predictor.archs", "predictor.calib_batch_size",
            "predictor.eval_batch_size", "search.trials", "search.queries", "verify.top")


class RunConfigError(UserError):
    """A run config with a missing, unknown or invalid key."""


def _check(raw, schema: dict, path: str) -> dict:
    if not isinstance(raw, dict):
        raise RunConfigError(f"config key '{path.rstrip('.') or '<top>'}': expected a mapping, got {raw!r}")
    unknown = set(raw) - set(schema)
    if unknown:
        key = sorted(unknown)[0]
        raise RunConfigError(f"config key '{path}{key}': unknown key, expected one of {sorted(schema)}")
    out = {}
    for key, rule in schema.items():
        if isinstance(rule, dict):
            out[key] = _check(raw.get(key, {}), rule, f"{path}{key}.")
            continue
        types, default = rule
        if key not in raw:
            if default is REQUIRED:
                raise RunConfigError(f"config key '{path}{key}': missing")
            out[key] = default
            continue
        value = raw[key]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            names = " or ".join(t.__name__ if t is not type(None) else "null" for t in types)
            raise RunConfigError(f"config key '{path}{key}': expected {names}, got {value!r}")
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise RunConfigError(f"config key '{path}{key}': expected a non-negative number, got {value!r}")
        out[key] = value
    return out


def parse_run_config(raw: dict) -> dict:
    """Validate a run config (plain data) and fill in defaults."""
    cfg = _check(raw, SCHEMA, "")
    devices = cfg["latency"]["devices"]
    if not devices:
        raise RunConfigError("config key 'latency.devices': expected at least one device")
    for key in POSITIVE:
        section, name = key.split(".")
        if cfg[section][name] < 1:
            raise RunConfigError(f"config key '{key}': expected a positive integer, got {cfg[section][name]!r}")
    if cfg["cluster"]["shards"] is not None and cfg["cluster"]["shards"] < 1:
        raise RunConfigError(f"config key 'cluster.shards': expected null or a positive integer, "
                             f"got {cfg['cluster']['shards']!r}")
    cfg["latency"]["devices"] = [_check(d, DEVICE_SCHEMA, f"latency.devices[{i}].") for i, d in enumerate(devices)]
    names = [d["name"] for d in cfg["latency"]["devices"]]
    for i, d in enumerate(cfg["latency"]["devices"]):
        _check_backend(d, f"latency.devices[{i}]")
        if names.count(d["name"]) > 1:
            raise RunConfigError(f"config key 'latency.devices[{i}].name': {d['name']!r} appears twice, expected unique names")
    for i, d in enumerate(cfg["latency"]["devices"]):
        if d["table"] is not None and not _table_exists(d["table"]):
            raise RunConfigError(f"config key 'latency.devices[{i}].table': {d['table']!r} not found, expected a "
                                 "table file or a shipped table name such as cifar_h200_cuda_b1_bf16 (latency_tables/tables/)")
    from search_space.training import STUDENT_RULES

    if cfg["train"]["students"] not in STUDENT_RULES:
        raise RunConfigError(f"config key 'train.students': expected one of {sorted(STUDENT_RULES)}, "
                             f"got {cfg['train']['students']!r}")
    budget = cfg["train"]["time_budget_min"]
    if budget is not None and not budget > 0:
        raise RunConfigError(f"config key 'train.time_budget_min': expected null or a positive number of minutes, "
                             f"got {budget!r}")
    teacher_dropout = cfg["train"]["teacher_dropout"]
    if teacher_dropout is not None and not 0 <= teacher_dropout < 1:
        raise RunConfigError(f"config key 'train.teacher_dropout': expected null or a number in [0, 1), "
                             f"got {teacher_dropout!r}")
    ema_decay = cfg["train"]["ema_decay"]
    if ema_decay is not None and not 0 < ema_decay < 1:
        raise RunConfigError(f"config key 'train.ema_decay': expected null or a number in (0, 1), got {ema_decay!r}")
    smoothing, scale = cfg["train"]["label_smoothing"], cfg["train"]["logit_scale"]
    if not 0 <= smoothing < 1:
        raise RunConfigError(f"config key 'train.label_smoothing': expected a number in [0, 1), got {smoothing!r}")
    if not 0 < scale < float("inf"):
        raise RunConfigError(f"config key 'train.logit_scale': expected a positive number, got {scale!r}")
    weight_decay = cfg["train"]["weight_decay"]
    if isinstance(weight_decay, bool) or not weight_decay >= 0:
        raise RunConfigError(f"config key 'train.weight_decay': expected a number >= 0, got {weight_decay!r}")
    from hwnas.datasets import AUGMENTATIONS

    if cfg["train"]["augment"] is not None and cfg["train"]["augment"] not in AUGMENTATIONS:
        raise RunConfigError(f"config key 'train.augment': expected null or one of {list(AUGMENTATIONS)}, "
                             f"got {cfg['train']['augment']!r}")
    _check_final(cfg["final"])
    for dev, budget in cfg["search"]["budgets"].items():
        if dev not in names:
            raise RunConfigError(f"config key 'search.budgets.{dev}': unknown device, expected one of {names}")
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0:
            raise RunConfigError(f"config key 'search.budgets.{dev}': expected a positive latency in ms, got {budget!r}")
    if cfg["device"] not in ("auto", "cpu", "cuda") and not cfg["device"].startswith("cuda:"):
        raise RunConfigError(f"config key 'device': expected auto, cpu, cuda or cuda:N, got {cfg['device']!r}")
    return cfg


def _check_backend(device: dict, key: str) -> None:
    """A device's backend and its settings, as its registration validates them (no torch); an
    empty ``options`` is dropped, so that configs written before the key existed keep their
    stage fingerprints."""
    from latency_tables.registry import BackendSettingError, check_backend_settings

    if not device["options"]:
        del device["options"]
    try:
        check_backend_settings(device["backend"], device["batch_size"], device["dtype"], device["threads"],
                               **device.get("options", {}))
    except BackendSettingError as e:
        raise RunConfigError(f"config key '{key}.{e.setting}': {e}") from None


def device_backend(device: dict):
    """The latency backend of one configured device (``latency.devices[i]``)."""
    from latency_tables import make_backend

    return make_backend(device["backend"], batch_size=device["batch_size"], dtype=device["dtype"],
                        threads=device["threads"], **device.get("options", {}))


def _check_final(final: dict) -> None:
    """The ``final`` section's lists and ranges (types are checked by the schema)."""
    from hwnas.baselines import BaselineError, check_baseline_name
    from hwnas.final_stage import INITS

    from hwnas.final_stage import CHOICE_RULES

    if final["choose"] not in CHOICE_RULES:
        raise RunConfigError(f"config key 'final.choose': expected one of {list(CHOICE_RULES)}, got {final['choose']!r}")
    if not final["init"] or any(i not in INITS for i in final["init"]):
        raise RunConfigError(f"config key 'final.init': expected a non-empty list of {list(INITS)}, got {final['init']!r}")
    for i, name in enumerate(final["baselines"]):
        try:
            check_baseline_name(name)
        except BaselineError as e:
            raise RunConfigError(f"config key 'final.baselines[{i}]': {e}") from None
    if final["ranking"] and final["ranking"] < 3:
        raise RunConfigError(f"config key 'final.ranking': expected 0 (off) or at least 3 archs for a rank "
                             f"correlation, got {final['ranking']!r}")
    if final["ranking"] and final["ranking_epochs"] < 1:
        raise RunConfigError(f"config key 'final.ranking_epochs': expected >= 1 when final.ranking is on, "
                             f"got {final['ranking_epochs']!r}")
    if final["top"] is not None and final["top"] < 1:
        raise RunConfigError(f"config key 'final.top': expected >= 1 or null (export.top), got {final['top']!r}")
    if final["epochs"] and final["batch_size"] < 1:
        raise RunConfigError(f"config key 'final.batch_size': expected >= 1, got {final['batch_size']!r}")
    if final["estimate_candidates"] < 1:
        raise RunConfigError(f"config key 'final.estimate_candidates': expected >= 1, got {final['estimate_candidates']!r}")
    if final["estimate_lr"] is not None and not final["estimate_lr"] > 0:
        raise RunConfigError(f"config key 'final.estimate_lr': expected null or a positive number, got {final['estimate_lr']!r}")
    if final["lr"] is not None and not final["lr"] > 0:
        raise RunConfigError(f"config key 'final.lr': expected null or a positive number, got {final['lr']!r}")


def _table_exists(path_or_name: str) -> bool:
    from latency_tables.table import resolve_table_path

    return resolve_table_path(path_or_name).is_file()


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """A copy of ``raw`` with each ``KEY.PATH=VALUE`` of ``overrides`` (``hwnas run --set``) set;
    VALUE is read as YAML (``8.3``, ``families``, ``null``, ``[largest, resnet18]``). The keys are
    checked afterwards, with the rest of the config."""
    import copy

    if not isinstance(raw, dict):  # not a mapping: parse_run_config says so in one line
        return raw
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise RunConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted config key, e.g. train.epochs=10")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise RunConfigError(f"--set {item!r}: the value is not valid YAML: {str(e).splitlines()[0]}") from None
        node = out
        for depth, part in enumerate(parts[:-1], 1):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RunConfigError(f"--set {item!r}: config key '{'.'.join(parts[:depth])}' is {node!r}, not a "
                                     f"mapping of keys")
        node[parts[-1]] = value
    return out


def load_run_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> dict:
    """Load and validate a run config file (default: the bundled quickstart), with ``overrides``
    (see :func:`apply_overrides`) applied before validation."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise RunConfigError(f"run config {str(path)!r} not found: expected a YAML file such as experiments/configs/quickstart.yaml")
    try:
        raw = yaml.safe_load(read_text(path, "run config", "a YAML file", RunConfigError))
    except yaml.YAMLError as e:
        raise RunConfigError(f"run config {str(path)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    cfg = parse_run_config(apply_overrides(raw, overrides))
    if isinstance(cfg["space"], str) and cfg["space"].endswith((".yaml", ".yml", ".toml")):
        # relative to the config file; for a linked config (experiments/configs/quickstart.yaml) also its target's
        beside = [folder / cfg["space"] for folder in (path.parent, path.resolve().parent)]
        cfg["space"] = str(next((f for f in beside if f.is_file()), beside[0]).resolve())
    return cfg


def supernet_training(cfg: dict, device: str, resume: bool = False) -> tuple[TrainConfig, RunSettings]:
    """The supernet training of a parsed config on ``device``: its recipe (a ``TrainConfig`` of the
    ``train`` section and the seed) and its ``hwnas.supernet_training.RunSettings``."""
    from hwnas.supernet_training import RunSettings
    from search_space.training import TrainConfig

    c = cfg["train"]
    # numbers as the command's float options parse them (lr: 1 is 1.0), recorded alike in the checkpoint
    number = {k: float(v) if v is not None and float in SCHEMA["train"][k][0] else v for k, v in c.items()}
    if c["time_budget_min"] is not None:  # the budget plans the epochs: any valid count stands in (a config may say 0)
        number["epochs"] = max(1, c["epochs"])
    config = TrainConfig(**{k: number[k] for k in _RECIPE_KEYS}, seed=cfg["seed"])
    return config, RunSettings(dataset=cfg["dataset"]["name"], data=cfg["dataset"]["path"], device=device,
                               time_budget_min=number["time_budget_min"], eval_every=max(1, c["epochs"] // 10),
                               resume=resume)


_RECIPE_KEYS = [k for k in SCHEMA["train"] if k != "time_budget_min"]  # the train keys that are TrainConfig fields


def supernet_train_args(cfg: dict, space_arg: str, out: str | Path, device: str) -> list[str]:
    """:func:`supernet_training` as ``hwnas supernet train`` arguments writing to ``out`` (each
    setting is the option of the same name), for experiments/bench_ddp.py, which launches the
    command under torchrun."""
    config, run = supernet_training(cfg, device)
    options = {"space": space_arg, "out": out, "seed": config.seed, **{k: getattr(config, k) for k in _RECIPE_KEYS},
               **{k: getattr(run, k) for k in ("dataset", "data", "device", "time_budget_min", "eval_every")}}
    if run.time_budget_min is not None:
        del options["epochs"]  # the budget plans them
    return ["supernet", "train"] + [a for k, v in options.items() if v is not None and v is not False
                                    for a in (f"--{k.replace('_', '-')}", *([] if v is True else [str(v)]))]
