"""Resumable pipeline stages: a stage is skipped when its recorded inputs match and its
outputs still exist, so an interrupted ``hwnas run`` resumes where it stopped.

The manifest (``manifest.json`` in the run folder) holds one record per stage. A stage that
starts is recorded at once as ``running`` with its new key: an interrupted redo is then resumed
by the next call (its work kept) instead of being cleaned again, and it is never mistaken for
the finished record it replaces. Outputs are stored relative to the run folder, so a copied
folder checks its own files. :func:`lock_run_dir` keeps a second ``hwnas run`` out of a folder
in use."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

from search_space import locks
from search_space.errors import UserError
from search_space.io import atomic_write_json

MANIFEST, LOCK = "manifest.json", "run.lock"
# The stages of ``hwnas run`` (hwnas.pipeline), in order; here so that ``hwnas status`` needs no torch.
STAGES = ["train", "latency", "accuracy", "predictor", "search", "final", "export", "report"]
RUNNING = "running"


def digest(obj) -> str:
    """Stable short hash of plain data."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_manifest(out_dir: Path) -> dict:
    """The run folder's stage records ({} for a new folder)."""
    path = Path(out_dir) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def output_path(out_dir: Path, recorded: str) -> Path:
    """A recorded output as a path: relative ones (this version) are under ``out_dir``; absolute
    ones (manifests written before) are kept as they are."""
    return Path(out_dir) / recorded


def _relative(out_dir: Path, path: Path) -> str:
    """``path`` relative to the run folder where it lies inside it (a copied folder then finds
    its own files), else absolute."""
    try:
        return str(Path(os.path.abspath(path)).relative_to(os.path.abspath(out_dir)))
    except ValueError:
        return os.path.abspath(path)


def lock_holder(out_dir: Path) -> dict | None:
    """Who holds the run folder's lock ({pid, host, started, command}), or None when no live
    ``hwnas run`` does. The lock is the kernel's (``flock``): a killed run holds none."""
    return locks.lock_holder(Path(out_dir) / LOCK)


@contextlib.contextmanager
def lock_run_dir(out_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock while a run works in it; a second run gets a one-line
    :class:`UserError`. The kernel releases the lock when its process dies, so a killed run's
    folder is free at once (the file stays, naming the last holder). Re-entrant in one process."""
    key = os.path.realpath(out_dir)
    if key in _HELD:
        yield
        return
    try:
        with locks.file_lock(Path(out_dir) / LOCK):
            _HELD.add(key)
            try:
                yield
            finally:
                _HELD.discard(key)
    except locks.LockHeld as e:
        raise UserError(f"run folder {str(out_dir)!r} is in use by another hwnas run ({e}): wait for it "
                        f"to end (hwnas status {out_dir}) or pass another --out") from None


_HELD: set[str] = set()  # run folders this process holds (the same flock taken twice would refuse itself)


class StageRunner:
    """Runs named stages in order, recording each one's input hash, outputs, summary and time
    in ``out_dir/manifest.json``. A stage's hash chains its predecessor's, so changing an
    early stage's inputs redoes everything after it."""

    def __init__(self, out_dir: Path, stages: list[str], redo_from: str | None = None):
        if redo_from is not None and redo_from not in stages:
            raise UserError(f"--from {redo_from!r}: unknown stage, expected one of {stages}")
        self.out_dir, self.stages = out_dir, stages
        self.path = out_dir / MANIFEST
        self.manifest = read_manifest(out_dir)
        self.forced = set(stages[stages.index(redo_from):]) if redo_from else set()
        self.previous = ""
        self.ran, self.skipped = [], []  # stages of this invocation

    @contextlib.contextmanager
    def locked(self) -> Iterator["StageRunner"]:
        """Hold the run folder's lock (:func:`lock_run_dir`) and read the manifest under it: a run
        that ended while this one started has its last records seen."""
        with lock_run_dir(self.out_dir):
            self.manifest = read_manifest(self.out_dir)
            yield self

    def is_done(self, name: str, key: str) -> bool:
        """Whether stage ``name`` finished with inputs ``key`` and its outputs are all still there."""
        record = self.manifest.get(name)
        return bool(record and record.get("state") != RUNNING and record["key"] == key
                    and all(output_path(self.out_dir, p).exists() for p in record["outputs"]))

    def run(self, name: str, inputs: dict, outputs: list[Path], fn: Callable[[], dict],
            clean: Sequence[Path] = ()) -> dict:
        """Run ``fn`` (returns a JSON-able summary) unless its recorded run is still valid.

        ``clean`` lists work files and folders of the stage: removed before a finished stage is
        redone (its inputs changed, or ``--from``), kept when an interrupted one resumes (its
        ``running`` record has the same inputs)."""
        key = digest({"inputs": inputs, "previous": self.previous})
        self.previous = key
        record = self.manifest.get(name)
        n = self.stages.index(name) + 1
        if name not in self.forced and self.is_done(name, key):
            print(f"[{n}/{len(self.stages)}] {name}: up to date, skipped ({record['seconds']:.1f} s earlier)",
                  file=sys.stderr)
            self.skipped.append(name)
            return record["summary"]
        resuming = bool(record and record.get("state") == RUNNING and record["key"] == key and name not in self.forced)
        if record and not resuming:  # earlier work of other inputs (or --from) must not be resumed
            for path in map(Path, clean):
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        # Recorded before any work: an interrupted redo is never taken for the finished record it
        # replaces, and the next call resumes it (same key) rather than cleaning it again.
        rel_outputs = [_relative(self.out_dir, p) for p in outputs]
        self.manifest[name] = {"key": key, "state": RUNNING, "outputs": rel_outputs, "inputs": _shown(inputs),
                               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "started_unix": time.time()}
        atomic_write_json(self.path, self.manifest)
        print(f"[{n}/{len(self.stages)}] {name} {'(resuming) ' if resuming else ''}...", file=sys.stderr)
        start = time.perf_counter()
        self.ran.append(name)
        summary = fn()
        seconds = time.perf_counter() - start
        self.manifest[name] = {"key": key, "state": "done", "outputs": rel_outputs, "inputs": _shown(inputs),
                               "summary": summary, "seconds": seconds, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write_json(self.path, self.manifest)
        print(f"[{n}/{len(self.stages)}] {name}: done in {seconds:.1f} s", file=sys.stderr)
        return summary

    def seconds(self) -> dict[str, float]:
        """Recorded duration of every stage that finished (now or earlier)."""
        return {s: self.manifest[s]["seconds"] for s in self.stages if "seconds" in self.manifest.get(s, {})}


def _shown(inputs):
    """``inputs`` as the manifest keeps them (for ``hwnas status``): plain data, any password of a
    URL replaced by ``***``."""
    from search._urls import redact_url  # light: no Optuna (hwnas status imports this module)

    if isinstance(inputs, dict):
        return {str(k): _shown(v) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return [_shown(v) for v in inputs]
    if isinstance(inputs, str) and "://" in inputs:
        return redact_url(inputs)
    return inputs if inputs is None or isinstance(inputs, (bool, int, float, str)) else str(inputs)
