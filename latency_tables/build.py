"""Building a table: time every unique block of a space, then calibrate on whole networks.

Resumable: the table file is rewritten (atomically) after every chunk of blocks and of
calibration networks; re-running the same build measures only what is missing.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from search_space import SearchSpace

from .calibration import fit_calibration
from .errors import TableError
from .measure import measure_blocks, measure_passes, passes_ms, sample_archs
from .registry import relevant_fields, timed_on_cpu
from .table import LatencyTable

DEFAULT_CALIBRATION_NETS = 100
DEFAULT_PASSES = 3
# A partial table resumes only where these and the backend's own fingerprint fields match.
RESUME_FIELDS = ("cpu_model", "gpu_name", "provider", "threads", "batch_size", "dtype", "torch", "onnxruntime")


def _resume(out: Path, space: SearchSpace, backend, device: str | None,
            restart_changed: bool = False) -> LatencyTable | None:
    """Load a partial table at ``out`` and check it was started with the same settings here.
    With ``restart_changed``, a table of another space, backend setting or device label is
    discarded (None: start a new one) instead of refused; another machine is still refused."""
    table = LatencyTable.load(out)
    if restart_changed and ((table.space_fingerprint, table.backend_settings, table.device)
                            != (space.fingerprint, backend.settings(), device or table.device)):
        return None
    table.check_space(space)
    if table.backend_settings != backend.settings():
        diff = sorted(k for k in set(table.backend_settings) | set(backend.settings())
                      if table.backend_settings.get(k) != backend.settings().get(k))
        k = diff[0]
        raise TableError(f"{str(out)!r} was built with {k}={table.backend_settings.get(k)!r}, not "
                         f"{backend.settings().get(k)!r}: use the same settings to resume, or another --out")
    here = backend.fingerprint()
    for k in dict.fromkeys(RESUME_FIELDS + relevant_fields(backend.spec)):
        if table.fingerprint.get(k) != here.get(k):
            raise TableError(f"{str(out)!r} was started on another machine ({k}: {table.fingerprint.get(k)!r} "
                             f"here {here.get(k)!r}): use another --out")
    if device is not None and device != table.device:
        raise TableError(f"{str(out)!r} is labelled device {table.device!r}, not {device!r}: use another --out")
    return table


def default_device_name(backend) -> str:
    """``cpu`` for a backend that times on the host CPU (ONNX Runtime's CPU provider), else
    ``<gpu>-b<batch>`` (``h200-b1``): the GPU name's first word with a digit in it
    (``NVIDIA H200 NVL`` -> ``h200``)."""
    if timed_on_cpu(backend.spec):
        return "cpu"
    words = (backend.fingerprint().get("gpu_name") or backend.spec.partition(":")[2] or backend.spec).split()
    gpu = next((w for w in words if any(c.isdigit() for c in w)), words[-1]).lower()
    return f"{gpu}-b{backend.batch_size}"


def build_table(space: SearchSpace, backend, out: str | Path, device: str | None = None,
                calibration_nets: int = DEFAULT_CALIBRATION_NETS, seed: int = 0, command: str = "",
                block_chunk: int = 40, net_chunk: int = 20, calibration_passes: int = DEFAULT_PASSES,
                restart_changed: bool = False) -> LatencyTable:
    """Measure every unique block spec of ``space`` with ``backend``, then ``calibration_nets``
    random networks end to end in ``calibration_passes`` passes (seed ``seed``, smallest and
    largest included), fit the calibration and write the table to ``out``. Resumes a partial
    table at ``out``; one built with other settings is an error, or with ``restart_changed``
    (a changed config) is replaced by a new build. A table finished earlier with the same
    settings is returned as it is (not re-saved)."""
    if calibration_nets < 4:
        raise TableError(f"calibration nets {calibration_nets}: expected at least 4 (the fit needs them)")
    if calibration_passes < 1:
        raise TableError(f"calibration passes {calibration_passes}: expected at least 1")
    out = Path(out)
    table = _resume(out, space, backend, device, restart_changed) if out.exists() else None
    plan = {"calibration_nets": calibration_nets, "seed": seed, "calibration_passes": calibration_passes}
    if table is not None and table.is_complete and all(table.data["build"].get(k) == v for k, v in plan.items()):
        print(f"{table.device}: table {str(out)!r} finished earlier with these settings: nothing to measure",
              file=sys.stderr, flush=True)
        return table  # not re-saved: work derived from it (a validation) stays valid
    if table is None:
        table = LatencyTable.new(space, backend, device or default_device_name(backend), command)
        table.save(out)
    build = table.data["build"]
    if command:  # the latest command is the one that completes this table
        build["command"] = command
    build.update(plan)

    missing = set(table.missing_keys(space))
    specs = [s for s in space.unique_block_specs() if s.key in missing]
    total = len(space.unique_block_specs())
    t0 = time.time()
    for part in measure_blocks(backend, specs, block_chunk, f"{table.device}: blocks", done=total - len(specs),
                               total=total):
        table.data["blocks"].update({s.key: st.to_json() for s, st in part})
        build["block_seconds"] = round(build.get("block_seconds", 0.0) + time.time() - t0, 1)
        t0 = time.time()
        table.save(out)

    archs = sample_archs(space, calibration_nets, seed, anchors=True)
    done = {n["arch"]: n["passes"] for n in table.data["calibration_nets"]}
    t0 = time.time()

    def save():
        nonlocal t0
        table.data["calibration_nets"] = [{"arch": a, "passes": p} for a, p in done.items()]
        build["calibration_seconds"] = round(build.get("calibration_seconds", 0.0) + time.time() - t0, 1)
        t0 = time.time()
        table.save(out)

    measure_passes(backend, space, archs, calibration_passes, done, save, net_chunk,
                   desc=f"{table.device}: calibration nets")
    nets = [[(s, table.block_ms(s.key)) for s in space.block_specs(a)] for a in archs]
    table.calibration = fit_calibration(nets, [passes_ms(done[str(a)]) for a in archs])
    table._lut.clear()
    table.save(out)
    return table
