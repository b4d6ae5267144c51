"""Building a table: time every unique block of a space, then calibrate on whole networks.

Resumable: the table file is rewritten (atomically) after every chunk of blocks and of
calibration networks; re-running the same build measures only what is missing.
"""

from __future__ import annotations

import time
from pathlib import Path

from search_space import SearchSpace

from .calibration import fit_calibration
from .errors import TableError
from .measure import measure_blocks, measure_networks, sample_archs
from .table import LatencyTable
from .timing import TimingStats

DEFAULT_CALIBRATION_NETS = 100
RESUME_FIELDS = ("cpu_model", "gpu_name", "provider", "threads", "batch_size", "dtype", "torch", "onnxruntime")


def _resume(out: Path, space: SearchSpace, backend, device: str | None) -> LatencyTable:
    """Load a partial table at ``out`` and check it was started with the same settings here."""
    table = LatencyTable.load(out)
    table.check_space(space)
    if table.backend_settings != backend.settings():
        diff = sorted(k for k in set(table.backend_settings) | set(backend.settings())
                      if table.backend_settings.get(k) != backend.settings().get(k))
        k = diff[0]
        raise TableError(f"{str(out)!r} was built with {k}={table.backend_settings.get(k)!r}, not "
                         f"{backend.settings().get(k)!r}: use the same settings to resume, or another --out")
    here = backend.fingerprint()
    for k in RESUME_FIELDS:
        if table.fingerprint.get(k) != here.get(k):
            raise TableError(f"{str(out)!r} was started on another machine ({k}: {table.fingerprint.get(k)!r} "
                             f"here {here.get(k)!r}): use another --out")
    if device is not None and device != table.device:
        raise TableError(f"{str(out)!r} is labelled device {table.device!r}, not {device!r}: use another --out")
    return table


def default_device_name(backend) -> str:
    """``cpu`` for ONNX Runtime on the CPU provider, else the GPU / provider name and batch size."""
    if backend.spec == "onnxruntime:CPUExecutionProvider":
        return "cpu"
    gpu = (backend.fingerprint().get("gpu_name") or backend.spec).split()[-1].lower()
    return f"{gpu}-b{backend.batch_size}"


def build_table(space: SearchSpace, backend, out: str | Path, device: str | None = None,
                calibration_nets: int = DEFAULT_CALIBRATION_NETS, seed: int = 0, command: str = "",
                block_chunk: int = 40, net_chunk: int = 20) -> LatencyTable:
    """Measure every unique block spec of ``space`` with ``backend``, then ``calibration_nets``
    random networks end to end (seed ``seed``, smallest and largest included), fit the
    calibration and write the table to ``out``. Resumes a partial table at ``out``."""
    if calibration_nets < 4:
        raise TableError(f"calibration nets {calibration_nets}: expected at least 4 (the fit needs them)")
    out = Path(out)
    if out.exists():
        table = _resume(out, space, backend, device)
    else:
        table = LatencyTable.new(space, backend, device or default_device_name(backend), command)
        table.save(out)
    build = table.data["build"]
    build.update(calibration_nets=calibration_nets, seed=seed)

    missing = table.missing_keys(space)
    specs = [s for s in space.unique_block_specs() if s.key in set(missing)]
    total = len(space.unique_block_specs())
    t0 = time.time()
    for part in measure_blocks(backend, specs, block_chunk, "blocks", done=total - len(specs), total=total):
        table.data["blocks"].update({s.key: st.to_json() for s, st in part})
        build["block_seconds"] = round(build.get("block_seconds", 0.0) + time.time() - t0, 1)
        t0 = time.time()
        table.save(out)

    archs = sample_archs(space, calibration_nets, seed, anchors=True)
    measured = {n["arch"]: n for n in table.data["calibration_nets"]}
    todo = [a for a in archs if str(a) not in measured]
    t0 = time.time()
    nets = measure_networks(backend, space, todo, net_chunk, desc="calibration nets")
    for k, (a, st) in enumerate(nets, 1):
        measured[str(a)] = {"arch": str(a), "stats": st.to_json()}
        if k % net_chunk == 0 or k == len(todo):  # one save per measured chunk
            table.data["calibration_nets"] = list(measured.values())
            build["calibration_seconds"] = round(build.get("calibration_seconds", 0.0) + time.time() - t0, 1)
            t0 = time.time()
            table.save(out)

    wanted = [measured[str(a)] for a in archs]
    nets = [[(s.block, table.block_ms(s.key)) for s in space.block_specs(space.parse(n["arch"]))] for n in wanted]
    table.calibration = fit_calibration(nets, [TimingStats.from_json(n["stats"]).ms for n in wanted])
    table._lut.clear()
    table.save(out)
    return table
