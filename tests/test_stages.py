"""The run folder after crashes: a stage's record is replaced when its redo starts (an interrupted
redo resumes, it is never reported up to date), outputs are recorded relative to the folder and
checked before a skip, and one ``hwnas run`` at a time holds the folder."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hwnas.cli import main
from hwnas.stages import LOCK, StageRunner, lock_holder, lock_run_dir

REPO = Path(__file__).resolve().parents[1]
STAGES = ["train", "search"]


def stage(out, name, inputs, *, fail=False, redo_from=None, log=None):
    """Run stages up to ``name`` (the earlier one with fixed inputs); ``fail`` interrupts ``name``
    after it wrote half its work. Returns what each stage's function saw at its start."""
    runner, seen = StageRunner(out, STAGES, redo_from), {}

    def work(stage_name):
        def fn():
            folder = out / stage_name
            seen[stage_name] = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
            folder.mkdir(exist_ok=True)
            (folder / "partial").write_text("half")
            if fail and stage_name == name:
                raise KeyboardInterrupt
            (folder / "result").write_text(json.dumps(inputs))
            return {"inputs": inputs}
        return fn

    for s in STAGES[:STAGES.index(name) + 1]:
        runner.run(s, inputs if s == name else {}, [out / s / "result"], work(s), [out / s])
    return seen, runner


def test_an_interrupted_redo_resumes_its_own_work_and_is_never_up_to_date(tmp_path, capsys):
    stage(tmp_path, "search", {"trials": 100})
    with pytest.raises(KeyboardInterrupt):  # a config change, and the redo is killed mid-way
        stage(tmp_path, "search", {"trials": 200}, fail=True)
    record = json.loads((tmp_path / "manifest.json").read_text())["search"]
    assert record["state"] == "running" and record["inputs"] == {"trials": 200}
    capsys.readouterr()
    seen, _ = stage(tmp_path, "search", {"trials": 200})  # resumed: the redo's work kept, not wiped again
    err = capsys.readouterr().err
    assert seen["search"] == ["partial"] and "search (resuming) ..." in err and "search: up to date" not in err
    assert json.loads((tmp_path / "manifest.json").read_text())["search"]["state"] == "done"
    seen, _ = stage(tmp_path, "search", {"trials": 200})
    assert "search" not in seen  # up to date now


def test_an_interrupted_from_is_redone_not_reported_up_to_date(tmp_path, capsys):
    stage(tmp_path, "search", {"trials": 100})
    with pytest.raises(KeyboardInterrupt):
        stage(tmp_path, "search", {"trials": 100}, fail=True, redo_from="search")
    seen, _ = stage(tmp_path, "search", {"trials": 100})
    assert seen == {"search": ["partial"]}  # train skipped; search resumed, not skipped
    seen, _ = stage(tmp_path, "search", {"trials": 100}, redo_from="search")
    assert seen == {"search": []}  # --from again: its earlier work is cleaned


def test_outputs_are_recorded_relative_and_checked_before_a_skip(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    stage(run, "search", {"trials": 100})
    assert json.loads((run / "manifest.json").read_text())["train"]["outputs"] == [os.path.join("train", "result")]
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    seen, _ = stage(copy, "search", {"trials": 100})
    assert seen == {}  # a copied folder is up to date with its own files
    (copy / "train" / "result").unlink()  # the copy's checkpoint is gone: train is redone, and so is search
    seen, _ = stage(copy, "search", {"trials": 100})
    assert set(seen) == {"train"} and (run / "train" / "result").exists()
    # a manifest of an older version (absolute paths) is still read
    manifest = json.loads((run / "manifest.json").read_text())
    for record in manifest.values():
        record["outputs"] = [str(run / p) for p in record["outputs"]]
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert stage(run, "search", {"trials": 100})[0] == {}


def _hold_lock(out):
    """A process holding the run folder's lock, as a live ``hwnas run`` does."""
    code = "import sys, time; from hwnas.stages import lock_run_dir\nwith lock_run_dir(sys.argv[1]):\n" \
           "    print('locked', flush=True); time.sleep(120)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH")] if p)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_on_a_folder_in_use_is_refused_and_a_killed_runs_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    holder = _hold_lock(out)
    try:
        assert lock_holder(out)["pid"] == holder.pid
        rc = main(["run", "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert f"run folder {str(out)!r} is in use by another hwnas run (pid {holder.pid} on " in err
        assert sorted(p.name for p in out.iterdir()) == sorted([LOCK, "manifest.json"])  # nothing written
        assert (out / "manifest.json").read_text() == "{}"
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed run: the kernel drops its lock
        holder.wait()
    assert lock_holder(out) is None
    with lock_run_dir(out):
        assert lock_holder(out) is None or lock_holder(out)["pid"] == os.getpid()
