"""``LatencyTable``: per-block latencies of one device, calibrated on whole networks.

File format (JSON, one file per device x backend x batch size x dtype), ``schema_version`` 1::

    {
      "format": "hwnas-latency-table", "schema_version": 1,
      "device": "cpu",                        # short label (--device-name)
      "created": ISO time, "updated": ISO time,
      "space": {"name", "fingerprint", "config"},   # config rebuilds the SearchSpace
      "backend": {"spec", "batch_size", "dtype", "threads", <backend options>, <timing plan>},
      "fingerprint": {"cpu_model", "cpu_cores", "gpu_name", "gpu_driver", "cuda", "torch",
                      "onnxruntime", "python", "os", "provider", "threads", "batch_size", "dtype"},
      "build": {"command", "block_seconds", "calibration_seconds", "calibration_nets", "seed"},
      "blocks": {BlockSpec.key: {"p10_ms", "median_ms", "p90_ms", "spread", "n"}},
      "calibration_nets": [{"arch", "passes": [{stats}, ...]}],  # whole nets, measured end to end
                                                     # in passes; latency = min over passes
      "calibration": null | {"model", "intercept_ms", "scale", "offset_ms", "ridge", "cv", ...},
      "validation": null | {summary of the last `hwnas latency validate`}
    }

A block's latency is its ``p10_ms`` (see :mod:`latency_tables.timing`). A table is complete
when every unique block spec of its space and the calibration are present; a partial table
(an interrupted build) loads, and predicting with it names what is missing and the command
that fills it in.
"""

from __future__ import annotations

import json
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from search_space import Arch, SearchSpace
from search_space.io import atomic_write_json, read_text

from .calibration import Calibration
from .errors import FingerprintWarning, TableError
from .fingerprint import fingerprint_differences
from .timing import TimingStats

FORMAT = "hwnas-latency-table"
SCHEMA_VERSION = 1
TABLES_DIR = Path(__file__).parent / "tables"
_REQUIRED = {"device": str, "space": dict, "backend": dict, "fingerprint": dict, "blocks": dict,
             "calibration_nets": list, "build": dict}


def now() -> str:
    """Current UTC time, ISO format (seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def resolve_table_path(path_or_name: str | Path) -> Path:
    """A table file path; a bare name (``cifar_cpu_ort_b1_fp32``) means a shipped table."""
    p = Path(path_or_name)
    if p.exists() or p.suffix or len(p.parts) > 1:
        return p
    shipped = TABLES_DIR / f"{p.name}.json"
    return shipped if shipped.exists() else p


def shipped_tables() -> list[Path]:
    """Tables that come with the package."""
    return sorted(TABLES_DIR.glob("*.json"))


class LatencyTable:
    """Per-block latencies of one device plus a whole-network calibration (see module doc)."""

    def __init__(self, data: dict, path: Path | None = None, space: SearchSpace | None = None):
        self.data, self.path = data, path
        self._space = space
        self._lut: dict = {}
        self._parsed: dict[str, Arch] = {}
        cal = data.get("calibration")
        self.calibration = Calibration.from_json(cal) if cal else None

    # ---- creation, loading, saving --------------------------------------------------
    @classmethod
    def new(cls, space: SearchSpace, backend, device: str, command: str = "") -> "LatencyTable":
        """An empty table for ``space`` measured with ``backend`` on this machine."""
        data = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "device": device, "created": now(),
                "updated": now(), "space": {"name": space.name, "fingerprint": space.fingerprint,
                                            "config": space.config.to_json()},
                "backend": backend.settings(), "fingerprint": backend.fingerprint(),
                "build": {"command": command}, "blocks": {}, "calibration_nets": [], "calibration": None,
                "validation": None}
        return cls(data, space=space)

    @classmethod
    def load(cls, path: str | Path, space: SearchSpace | None = None, strict: bool = False,
             check_machine: bool = True) -> "LatencyTable":
        """Read and check a table file (or a shipped table by name).

        Raises :class:`TableError` for a missing, corrupt or foreign file, or one built for
        another space than ``space``. A table measured on another machine warns
        (:class:`FingerprintWarning`), or raises with ``strict=True``; ``check_machine=False``
        skips that comparison (reading another device's table is what shipped tables are for;
        measuring with it is not, and :meth:`measure_arch` checks again).
        """
        p = resolve_table_path(path)
        try:
            text = read_text(p, "latency table", "a JSON file written by `hwnas latency build`", TableError)
        except OSError as e:
            raise TableError(f"cannot read latency table {str(p)!r}: {e.strerror or e}; expected a file "
                             f"written by `hwnas latency build`") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise TableError(f"latency table {str(p)!r} is corrupt: invalid JSON at line {e.lineno} column {e.colno} "
                             f"({e.msg}); rebuild it with `hwnas latency build`") from None
        cls._check_schema(data, p)
        table = cls(data, path=p)
        if space is not None:
            table.check_space(space)
            table._space = space
        if check_machine:
            table.check_machine(strict)
        return table

    @staticmethod
    def _check_schema(data, p: Path) -> None:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise TableError(f"{str(p)!r} is not a hwnas latency table: expected \"format\": \"{FORMAT}\"")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise TableError(f"latency table {str(p)!r} has schema version {data.get('schema_version')!r}, this "
                             f"hwnas reads version {SCHEMA_VERSION}: rebuild it with `hwnas latency build`")
        for key, kind in _REQUIRED.items():
            if not isinstance(data.get(key), kind):
                raise TableError(f"latency table {str(p)!r} is corrupt: key {key!r} missing or not a {kind.__name__}")
        for key in ("name", "fingerprint", "config"):
            if key not in data["space"]:
                raise TableError(f"latency table {str(p)!r} is corrupt: key 'space.{key}' missing")
        for key, stats in data["blocks"].items():
            try:
                TimingStats.from_json(stats)
            except (KeyError, TypeError, ValueError):
                raise TableError(f"latency table {str(p)!r} is corrupt: bad statistics for block {key!r}") from None
        for net in data["calibration_nets"]:
            if not (isinstance(net, dict) and isinstance(net.get("arch"), str) and isinstance(net.get("passes"), list)):
                raise TableError(f"latency table {str(p)!r} is corrupt: bad calibration net entry {str(net)[:60]!r}")
        cal = data.get("calibration")
        if cal is not None:
            try:
                Calibration.from_json(cal)
            except (KeyError, TypeError, ValueError, AttributeError):
                raise TableError(f"latency table {str(p)!r} is corrupt: bad 'calibration'") from None

    def save(self, path: str | Path | None = None) -> Path:
        """Write the table atomically (to ``path`` or where it was loaded from)."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise TableError("latency table has no path to save to: pass one")
        self.data["updated"] = now()
        self.data["calibration"] = self.calibration.to_json() if self.calibration else None
        self.path = atomic_write_json(target, self.data)
        return self.path

    def copy_to(self, path: str | Path) -> Path:
        """Save this table at ``path`` unless a table with the same measurements is there already
        (that copy, and the validation it records, are kept)."""
        path = Path(path)
        if path.exists():
            try:
                if LatencyTable.load(path, check_machine=False).measurement_digest() == self.measurement_digest():
                    return path
            except TableError:
                pass  # a broken copy: replaced
        return self.save(path)

    # ---- identity -------------------------------------------------------------------
    @property
    def device(self) -> str:
        """Short device label (e.g. ``cpu``, ``h200-b1``)."""
        return self.data["device"]

    @property
    def space_fingerprint(self) -> str:
        """Fingerprint of the search space the table was built for."""
        return self.data["space"]["fingerprint"]

    @property
    def backend_settings(self) -> dict:
        """The measurement settings (``make_backend(**backend_settings)`` re-creates them)."""
        return self.data["backend"]

    @property
    def backend_spec(self) -> str:
        """The backend spec (``onnxruntime:<Provider>``, ``cuda`` or a registered one's name)."""
        return self.data["backend"]["spec"]

    @property
    def batch_size(self) -> int:
        """Batch size the blocks were timed at."""
        return int(self.data["backend"]["batch_size"])

    @property
    def dtype(self) -> str:
        """``fp32``, ``fp16`` or ``bf16``."""
        return self.data["backend"]["dtype"]

    @property
    def fingerprint(self) -> dict:
        """The device fingerprint recorded at build time."""
        return self.data["fingerprint"]

    @property
    def space(self) -> SearchSpace:
        """The search space (rebuilt from the config stored in the table when none was given)."""
        if self._space is None:
            self._space = SearchSpace.from_config(self.data["space"]["config"])
        return self._space

    def __repr__(self) -> str:
        return (f"LatencyTable(device={self.device!r}, backend={self.backend_spec!r}, batch_size={self.batch_size}, "
                f"dtype={self.dtype!r}, blocks={len(self.data['blocks'])}, space={self.data['space']['name']!r})")

    def check_space(self, space: SearchSpace) -> None:
        """Raise :class:`TableError` unless the table was built for ``space``."""
        if space.fingerprint != self.space_fingerprint:
            raise TableError(f"latency table {self._where()} was built for space {self.data['space']['name']!r} "
                             f"(fingerprint {self.space_fingerprint}), not for space {space.name!r} "
                             f"(fingerprint {space.fingerprint}): build one with `{self.build_command(space)}`")

    def check_machine(self, strict: bool = False) -> list[str]:
        """Compare the recorded fingerprint with this machine's; warn (or raise if ``strict``)."""
        from .fingerprint import fingerprint_for

        diffs = fingerprint_differences(self.fingerprint, fingerprint_for(self.backend_settings), self.backend_spec)
        if diffs:
            msg = f"latency table {self._where()} was measured on another machine ({'; '.join(diffs)})"
            if strict:
                raise TableError(msg + ": its numbers may not hold here (strict mode)")
            warnings.warn(msg, FingerprintWarning, stacklevel=3)
        return diffs

    def _where(self) -> str:
        return repr(str(self.path)) if self.path else f"for {self.device!r}"

    def build_command(self, space: SearchSpace | None = None) -> str:
        """The command that (re)builds or completes this table."""
        if space is None and self.data["build"].get("command"):
            return self.data["build"]["command"]
        b = self.data["backend"]
        return (f"hwnas latency build --space {space.name if space else self.data['space']['name']} "
                f"--backend {b['spec']} --batch-size {b['batch_size']} --dtype {b['dtype']}"
                f" --out {self.path or 'TABLE.json'}")

    # ---- contents -------------------------------------------------------------------
    def stats(self, key: str) -> TimingStats:
        """Timing statistics of one block spec key."""
        try:
            return TimingStats.from_json(self.data["blocks"][key])
        except KeyError:
            raise TableError(f"block {key!r} is missing from latency table {self._where()}: "
                             f"fill it in with `{self.build_command()}`") from None

    def block_ms(self, key: str) -> float:
        """The latency (ms) of one block spec key (its 10th percentile)."""
        return self.stats(key).ms

    def missing_keys(self, space: SearchSpace | None = None) -> list[str]:
        """Block specs of the space not yet measured."""
        return [s.key for s in (space or self.space).unique_block_specs() if s.key not in self.data["blocks"]]

    def measurement_digest(self) -> str:
        """A short hash of what was measured and fitted (space, settings, machine, blocks, calibration
        nets and calibration), not of when the file was saved or its validation: work derived from
        the table (a validation) is still valid while this is unchanged."""
        import hashlib

        keys = ("space", "backend", "fingerprint", "blocks", "calibration_nets")
        blob = {**{k: self.data[k] for k in keys}, "calibration": self.calibration.to_json() if self.calibration else None}
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def is_complete(self) -> bool:
        """Every block measured and the calibration fitted."""
        return self.calibration is not None and not self.missing_keys()

    # ---- prediction -----------------------------------------------------------------
    def _calibration(self) -> Calibration:
        if self.calibration is None:
            raise TableError(f"latency table {self._where()} has no calibration yet (its build was interrupted): "
                             f"finish it with `{self.build_command()}`")
        return self.calibration

    def _arch(self, arch) -> Arch:
        if isinstance(arch, Arch):
            return arch
        a = self._parsed.get(arch)
        if a is None:
            a = self._parsed[arch] = self.space.parse(arch)
        return a

    def _fill(self, arch: Arch) -> None:
        """Compute the calibrated contribution of each block slot of ``arch`` (cache miss)."""
        cal = self._calibration()
        arch = self.space.validate(arch)
        specs = self.space.block_specs(arch)
        slots = _slots(arch)
        if len(slots) != len(specs):
            raise TableError(f"arch {arch}: {len(specs)} blocks but {len(slots)} slots (a space this table cannot index)")
        for slot, spec in zip(slots, specs):
            self._lut[slot] = cal.block_ms(spec, self.block_ms(spec.key))

    def predict_many(self, archs) -> np.ndarray:
        """Predicted latency (ms) of many archs (``Arch`` or strings), as one array.

        Each block slot (stage, position, widths, layer choice) is looked up once and cached,
        so after warm-up a prediction is a dozen dictionary look-ups.
        """
        lut, out = self._lut, np.empty(len(archs))
        for n, a in enumerate(archs):
            a = self._arch(a)
            try:
                out[n] = _sum_slots(lut, a)
            except KeyError:
                self._fill(a)
                out[n] = _sum_slots(lut, a)
        return out + (self._calibration().intercept_ms if len(archs) else 0.0)

    def predict(self, arch) -> float:
        """Predicted latency (ms) of one arch."""
        return float(self.predict_many([arch])[0])

    def raw_sum(self, arch) -> float:
        """Uncalibrated sum of the block latencies (ms)."""
        return sum(self.block_ms(s.key) for s in self.space.block_specs(self.space.validate(self._arch(arch))))

    def breakdown(self, arch) -> dict:
        """Per-block latencies of ``arch``: measured alone and as calibrated, plus the total."""
        cal = self._calibration()
        arch = self.space.validate(self._arch(arch))
        rows = []
        for s in self.space.block_specs(arch):
            st = self.stats(s.key)
            rows.append({"key": s.key, "type": s.block, "ms": st.ms, "p90_ms": st.p90_ms,
                         "calibrated_ms": cal.block_ms(s, st.ms)})
        return {"arch": str(arch), "total_ms": cal.intercept_ms + sum(r["calibrated_ms"] for r in rows),
                "raw_sum_ms": sum(r["ms"] for r in rows), "intercept_ms": cal.intercept_ms, "blocks": rows}

    # ---- measurement ----------------------------------------------------------------
    def make_backend(self):
        """A backend with this table's own measurement settings (on this machine)."""
        from .backends import make_backend

        return make_backend(**self.backend_settings)

    def measure_arch(self, arch, space: SearchSpace | None = None, strict: bool = False) -> float:
        """Measure ``arch`` end to end here with the table's backend settings; ms (10th percentile)."""
        from .measure import measure_networks

        space = space or self.space
        self.check_space(space)
        self.check_machine(strict)
        arch = space.validate(self._arch(arch) if space is self.space else arch)
        return next(measure_networks(self.make_backend(), space, [arch]))[1].ms


def _slots(arch: Arch) -> list:
    """Identity of each block slot of ``arch``, aligned with ``SearchSpace.block_specs``: a
    block's spec depends only on the resolution, its stage, whether it is the stage's first
    layer, its input and output widths and its layer choice."""
    r, slots, prev = arch.resolution, [("stem", arch.resolution)], None
    for i, s in enumerate(arch.stages):
        for j, layer in enumerate(s.layers):
            slots.append((r, i, prev if j == 0 else -1.0, s.width, layer))
        prev = s.width
    slots.append(("head", r, prev))
    return slots


def _sum_slots(lut: dict, arch: Arch) -> float:
    """Sum of cached slot contributions (KeyError on the first uncached slot); the same walk as
    :func:`_slots`, written out because this runs for every arch the search scores."""
    r, prev = arch.resolution, None
    total = lut[("stem", r)]
    for i, s in enumerate(arch.stages):
        w = s.width
        first = True
        for layer in s.layers:
            total += lut[(r, i, prev, w, layer)] if first else lut[(r, i, -1.0, w, layer)]
            first = False
        prev = w
    return total + lut[("head", r, prev)]
