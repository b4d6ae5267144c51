"""Latency backends, registered once: settings, their validation, fingerprint fields, availability.

A backend type is declared with :func:`register_backend`: the :class:`latency_tables.backends.Backend`
subclass that times modules (or its ``"module:Class"`` name, so that declaring needs no torch),
its options and their defaults, the dtypes it times, the fingerprint fields that change its
latencies (a table measured where one of them differs describes another machine), whether it
times on the host CPU, and a check of whether it can measure here. ``make_backend``, table
building and loading, run configs (``hwnas run``), the pipeline's latency stage and
``hwnas latency`` ask this registry, so a new backend is one module (docs/DESIGN.md shows one).

A backend spec is ``NAME`` or ``NAME:VARIANT`` for a type that takes a variant (onnxruntime:
its execution provider). Modules named in the environment variable ``HWNAS_PLUGINS``
(comma-separated) are imported the first time a name is not found, so that a backend of your
own is known to every ``hwnas`` command and worker process.

This module is torch-free: validating a run config does not load torch.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass, fields
from typing import Callable

from .errors import BackendError

DTYPE_NAMES = ("fp32", "fp16", "bf16")
PLUGINS_ENV = "HWNAS_PLUGINS"
_NAME_RE = re.compile(r"[a-z][a-z0-9_]*")


class BackendSettingError(BackendError):
    """A bad backend setting; ``setting`` names it (``backend``, ``dtype``, ``options.NAME``, ...)."""

    def __init__(self, message: str, setting: str):
        super().__init__(message)
        self.setting = setting


@dataclass(frozen=True)
class BackendType:
    """One registered backend type (see :func:`register_backend`)."""

    name: str
    factory: object  # a Backend subclass, or "module:Class"
    options: dict  # option -> default; the default's type is the option's type
    dtypes: tuple[str, ...]
    fingerprint_fields: tuple[str, ...]
    available: Callable[[str | None], str | None]
    on_cpu: Callable[[str | None], bool]
    variant: str | None = None  # what the ":VARIANT" part is (onnxruntime: "provider"); None: no variant
    default_variant: str | None = None
    machine_info: Callable[[], dict] | None = None
    check: Callable[[str | None, dict], None] | None = None
    help: str = ""

    def backend_class(self) -> type:
        """The Backend subclass (imported now when it was registered by name)."""
        if not isinstance(self.factory, str):
            return self.factory
        module, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(module), attr)

    def spec_form(self) -> str:
        """How a spec of this type is written: ``cuda``, ``onnxruntime[:<provider>]``."""
        return f"{self.name}[:<{self.variant}>]" if self.variant else self.name


BACKENDS: dict[str, BackendType] = {}
_plugins_loaded = False


def register_backend(name: str, factory, *, options: dict | None = None, dtypes=("fp32",),
                     fingerprint_fields=("cpu_model", "cpu_cores", "torch"),
                     available: Callable[[str | None], str | None] | None = None,
                     on_cpu: bool | Callable[[str | None], bool] = True, variant: str | None = None,
                     default_variant: str | None = None, machine_info: Callable[[], dict] | None = None,
                     check: Callable[[str | None, dict], None] | None = None, help: str = "") -> BackendType:
    """Declare a latency backend type.

    ``factory``: a :class:`latency_tables.backends.Backend` subclass or its ``"module:Class"``
    name, called as ``factory([variant,] batch_size, dtype, threads, plan, **options)`` with every
    option filled in (defaults from ``options``). ``dtypes``: the dtypes it times.
    ``fingerprint_fields``: fields of the table fingerprint whose difference means another machine
    (warned about, or refused with ``--strict``, when measuring or validating with a table; a
    partial build resumes only where they match). ``machine_info()``: extra fingerprint fields of
    this machine (e.g. ``{"tensorrt": "10.3"}``), recorded in its tables. ``available(variant)``:
    None where it can measure here, else why not (``hwnas run`` skips such devices). ``on_cpu``:
    whether timing runs on the host CPU (busy-machine warnings; the latency stage keeps it apart
    from GPU timing), a bool or a function of the variant. ``check(variant, options)``: raise
    :class:`BackendError` for a bad combination the types alone do not catch.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise BackendError(f"backend name {name!r} is invalid: expected lower-case letters, digits and '_'")
    if name in BACKENDS:
        raise BackendError(f"backend {name!r} is already registered: expected a new name")
    bad = [d for d in dtypes if d not in DTYPE_NAMES]
    if not dtypes or bad:
        raise BackendError(f"backend {name!r}: dtypes {list(dtypes)!r}: expected some of {list(DTYPE_NAMES)}")
    clash = sorted(set(options or {}) & (_plan_fields() | {"batch_size", "dtype", "threads", "spec"}))
    if clash:
        raise BackendError(f"backend {name!r}: option {clash[0]!r} is a common setting: expected another name")
    bt = BACKENDS[name] = BackendType(
        name, factory, dict(options or {}), tuple(dtypes), tuple(fingerprint_fields),
        available or (lambda variant: None), on_cpu if callable(on_cpu) else (lambda variant, v=bool(on_cpu): v),
        variant, default_variant, machine_info, check, help)
    return bt


def unregister_backend(name: str) -> None:
    """Remove a backend registered by :func:`register_backend` (tests, notebooks)."""
    BACKENDS.pop(name)


def _load_plugins() -> None:
    """Import the modules named in ``HWNAS_PLUGINS`` (once)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise BackendError(f"{PLUGINS_ENV}: cannot import {module!r} ({e}): expected importable module "
                               f"names, comma-separated") from None


def find_backend_type(name: str) -> BackendType | None:
    """The registered type ``name`` (plugins imported first if it is unknown), or None."""
    if name not in BACKENDS:
        _load_plugins()
    return BACKENDS.get(name)


def backend_names() -> list[str]:
    """Names of every registered backend type (plugins included)."""
    _load_plugins()
    return sorted(BACKENDS)


def backend_format(load_plugins: bool = True) -> str:
    """The accepted spec forms, for help texts and errors: ``'cuda', 'onnxruntime[:<provider>]'``
    (``load_plugins=False``: the types registered so far, as a help text needs)."""
    names = backend_names() if load_plugins else sorted(BACKENDS)
    return ", ".join(repr(BACKENDS[n].spec_form()) for n in names)


def options_help() -> str:
    """Each registered type's options, for help texts: ``spinning, opset (onnxruntime); ...``."""
    return "; ".join(f"{', '.join(bt.options)} ({name})" for name, bt in sorted(BACKENDS.items()) if bt.options)


def parse_spec(spec: str) -> tuple[BackendType, str | None]:
    """``(type, variant)`` of a backend spec; the variant defaults to the type's default."""
    name, sep, variant = str(spec).partition(":")
    bt = find_backend_type(name)
    if bt is None or (sep and not bt.variant) or (sep and not variant):
        raise BackendSettingError(f"backend {spec!r}: expected one of {backend_format()} (a backend of your own "
                                  f"registers with latency_tables.register_backend)", "backend")
    return bt, variant or bt.default_variant


def _plan_fields() -> set[str]:
    from .timing import TimingPlan

    return {f.name for f in fields(TimingPlan)}


def _type_ok(value, default) -> bool:
    """Whether ``value`` has the type of an option whose default is ``default``."""
    if default is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def check_backend_settings(spec: str, batch_size: int = 1, dtype: str = "fp32", threads: int | None = None,
                           **opts) -> tuple[BackendType, str | None, dict, dict]:
    """Validate a backend's settings without building it (no torch): ``(type, variant, timing-plan
    options, backend options with defaults filled in)``. Raises :class:`BackendSettingError`
    naming the bad value and what was expected."""
    bt, variant = parse_spec(spec)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BackendSettingError(f"batch size {batch_size!r}: expected a positive integer", "batch_size")
    if dtype not in bt.dtypes:
        raise BackendSettingError(f"dtype {dtype!r} is not supported by the {bt.name} backend: expected one of "
                                  f"{list(bt.dtypes)}", "dtype")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise BackendSettingError(f"threads {threads!r}: expected a positive integer or null (the backend's default)",
                                  "threads")
    from .timing import TimingPlan

    plan_names = _plan_fields()
    unknown = sorted(set(opts) - set(bt.options) - plan_names)
    if unknown:
        raise BackendSettingError(f"backend {spec!r}: unknown option {unknown[0]!r}: expected one of "
                                  f"{list(bt.options) + [f.name for f in fields(TimingPlan)]}", f"options.{unknown[0]}")
    for k, v in opts.items():
        default = bt.options[k] if k in bt.options else getattr(TimingPlan, k)
        if not _type_ok(v, default):
            raise BackendSettingError(f"backend {spec!r}: option {k}={v!r}: expected a {type(default).__name__} "
                                      f"like the default {default!r}", f"options.{k}")
    backend_opts = {**bt.options, **{k: v for k, v in opts.items() if k in bt.options}}
    if bt.check is not None:
        bt.check(variant, backend_opts)
    return bt, variant, {k: v for k, v in opts.items() if k in plan_names}, backend_opts


def backend_unavailable(spec: str) -> str | None:
    """None when ``spec`` can measure on this machine, else why not (one line)."""
    bt, variant = parse_spec(spec)
    return bt.available(variant)


def timed_on_cpu(spec: str) -> bool:
    """Whether ``spec`` times on the host CPU (False for a spec no registered type knows)."""
    name, _, variant = str(spec).partition(":")
    bt = find_backend_type(name)
    return bt is not None and bool(bt.on_cpu(variant or bt.default_variant))


def relevant_fields(spec: str) -> tuple[str, ...]:
    """Fingerprint fields whose difference makes a table of ``spec`` describe another machine
    (none for a type not registered here: its tables can still be read)."""
    bt = find_backend_type(str(spec).partition(":")[0])
    return bt.fingerprint_fields if bt else ()


def extra_machine_info(spec: str) -> dict:
    """The fingerprint fields a backend type adds for this machine (its ``machine_info``)."""
    bt = find_backend_type(str(spec).partition(":")[0])
    return dict(bt.machine_info()) if bt and bt.machine_info else {}


# ---- the built-in backends (their classes live in latency_tables/backends.py, imported with torch) ----
CPU_PROVIDERS = ("CPUExecutionProvider", "DnnlExecutionProvider", "XnnpackExecutionProvider")


def _ort_unavailable(provider: str | None) -> str | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    available = ort.get_available_providers()
    if provider not in available:
        return f"onnxruntime provider {provider!r} is not available here (available: {available})"
    return None


def _ort_check(provider: str | None, options: dict) -> None:
    """A provider name onnxruntime does not know at all (a typo) is an error, not a skipped device."""
    try:
        import onnxruntime as ort
    except ImportError:
        return
    known = ort.get_all_providers()
    if provider not in known:
        raise BackendSettingError(f"onnxruntime provider {provider!r} is not available in any onnxruntime build: "
                                  f"expected one of {known}", "backend")


def _cuda_unavailable(variant: str | None) -> str | None:
    import torch

    return None if torch.cuda.is_available() else "no CUDA device visible"


register_backend(
    "onnxruntime", "latency_tables.backends:OrtBackend", options={"spinning": False, "opset": 17},
    fingerprint_fields=("cpu_model", "cpu_cores", "onnxruntime", "provider", "threads"),
    available=_ort_unavailable, on_cpu=lambda provider: provider in CPU_PROVIDERS, variant="provider",
    default_variant="CPUExecutionProvider", check=_ort_check,
    help="ONNX Runtime with an execution provider (default CPUExecutionProvider; threads default 1)")
register_backend(
    "cuda", "latency_tables.backends:CudaBackend", dtypes=DTYPE_NAMES,
    options={"channels_last": True, "cuda_graph": True, "cudnn_benchmark": True, "min_graph_us": 100.0, "device": 0},
    fingerprint_fields=("gpu_name", "gpu_driver", "cuda", "torch"), available=_cuda_unavailable, on_cpu=False,
    help="PyTorch on a CUDA GPU, CUDA graphs timed with CUDA events")
