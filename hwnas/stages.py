"""Resumable pipeline stages: a stage is skipped when its recorded inputs match and its
outputs still exist, so an interrupted ``hwnas run`` resumes where it stopped."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from search_space.errors import UserError
from search_space.io import atomic_write_json


def digest(obj) -> str:
    """Stable short hash of plain data."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageRunner:
    """Runs named stages in order, recording each one's input hash, outputs, summary and time
    in ``out_dir/manifest.json``. A stage's hash chains its predecessor's, so changing an
    early stage's inputs redoes everything after it."""

    def __init__(self, out_dir: Path, stages: list[str], redo_from: str | None = None):
        if redo_from is not None and redo_from not in stages:
            raise UserError(f"--from {redo_from!r}: unknown stage, expected one of {stages}")
        self.out_dir, self.stages = out_dir, stages
        self.path = out_dir / "manifest.json"
        self.manifest = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.forced = set(stages[stages.index(redo_from):]) if redo_from else set()
        self.previous = ""
        self.ran, self.skipped = [], []  # stages of this invocation

    def run(self, name: str, inputs: dict, outputs: list[Path], fn: Callable[[], dict],
            clean: Sequence[Path] = ()) -> dict:
        """Run ``fn`` (returns a JSON-able summary) unless its recorded run is still valid.

        ``clean`` lists work files and folders of the stage: removed before a finished stage is
        redone (its inputs changed, or ``--from``), kept when an interrupted one resumes."""
        key = digest({"inputs": inputs, "previous": self.previous})
        self.previous = key
        record = self.manifest.get(name)
        n = self.stages.index(name) + 1
        if (name not in self.forced and record and record["key"] == key
                and all(Path(p).exists() for p in record["outputs"])):
            print(f"[{n}/{len(self.stages)}] {name}: up to date, skipped ({record['seconds']:.1f} s earlier)", file=sys.stderr)
            self.skipped.append(name)
            return record["summary"]
        print(f"[{n}/{len(self.stages)}] {name} ...", file=sys.stderr)
        if record:  # a finished stage is redone: its earlier work must not be resumed
            for path in map(Path, clean):
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        start = time.perf_counter()
        self.ran.append(name)
        summary = fn()
        seconds = time.perf_counter() - start
        self.manifest[name] = {"key": key, "outputs": [str(p) for p in outputs], "summary": summary,
                               "seconds": seconds, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write_json(self.path, self.manifest)
        print(f"[{n}/{len(self.stages)}] {name}: done in {seconds:.1f} s", file=sys.stderr)
        return summary

    def seconds(self) -> dict[str, float]:
        """Recorded duration of every stage that ran (now or earlier)."""
        return {s: self.manifest[s]["seconds"] for s in self.stages if s in self.manifest}
