"""Device fingerprint: what identifies the machine and software a table was measured with."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from functools import lru_cache

from .registry import extra_machine_info, relevant_fields, timed_on_cpu

# The fields that change latency are declared per backend (``register_backend(fingerprint_fields=...)``);
# a difference in one of them makes a table's numbers describe another machine.


# Above this load per core, CPU timings drift: on the 2-core VM at load 3.5-8.5 a net re-measured
# within ±10% of itself only 85% of the time, against 100% when quiet (latency_cpu_notes.md).
BUSY_LOAD_PER_CORE = 0.5


def busy_machine_warning() -> str | None:
    """A one-line warning when other work loads the CPUs (1-minute load average per core above
    ``BUSY_LOAD_PER_CORE``), else None; CPU latency measured now would describe a busy machine."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return None
    cores = os.cpu_count() or 1
    if load / cores <= BUSY_LOAD_PER_CORE:
        return None
    return (f"warning: the machine is busy (load average {load:.1f} on {cores} cores): CPU timings taken now are "
            "noisy; measure when it is quiet, or expect `hwnas latency validate` to advise a rebuild")


def warn_if_busy(backend: str) -> None:
    """Print :func:`busy_machine_warning` to stderr before timing a backend that times on the host
    CPU (registered ``on_cpu``); a GPU's timings do not depend on the host's other work in the same way."""
    if timed_on_cpu(backend) and (msg := busy_machine_warning()):
        print(msg, file=sys.stderr)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_smi() -> tuple[str | None, str | None]:
    """(GPU name, driver version) of GPU 0 from nvidia-smi, or (None, None)."""
    if not shutil.which("nvidia-smi"):
        return None, None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None, None
    if not out:
        return None, None
    name, _, driver = out[0].partition(",")
    return name.strip(), driver.strip() or None


@lru_cache(maxsize=None)
def _machine() -> dict:
    import torch

    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    gpu, driver = _nvidia_smi()
    if gpu is None and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    return {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "gpu_name": gpu,
        "gpu_driver": driver,
        "cuda": torch.version.cuda if gpu else None,
        "torch": torch.__version__,
        "onnxruntime": ort_version,
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def device_fingerprint(provider: str | None, threads: int | None, batch_size: int, dtype: str,
                       extra: dict | None = None) -> dict:
    """This machine's fingerprint plus the measurement settings that define a table (and a
    backend's ``extra`` machine fields)."""
    return {**_machine(), **(extra or {}), "provider": provider, "threads": threads, "batch_size": batch_size,
            "dtype": dtype}


def fingerprint_for(settings: dict) -> dict:
    """This machine's fingerprint for a backend's (or a table's) settings, without building it; the
    provider field is the spec's variant (onnxruntime's execution provider)."""
    spec = settings["spec"]
    return device_fingerprint(spec.partition(":")[2] or None, settings.get("threads"), settings["batch_size"],
                              settings["dtype"], extra_machine_info(spec))


def fingerprint_differences(recorded: dict, current: dict, spec: str) -> list[str]:
    """Human-readable ``field: recorded -> current`` for each field relevant to backend ``spec``
    (its registered ``fingerprint_fields``) that differs."""
    return [f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}"
            for k in relevant_fields(spec) if recorded.get(k) != current.get(k)]
