"""``hwnas status RUN_DIR``: stages, the progress of a running stage from its files and its study
storage, an unreachable storage in one line, the Ray cluster a run recorded; fast (no torch)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hwnas.cli import main
from hwnas.stages import STAGES, StageRunner, lock_run_dir
from search import run_search
from test_search import SPACE, toy_objectives

REPO = Path(__file__).resolve().parents[1]


def status(out, capsys):
    capsys.readouterr()  # what setting up the folder printed
    rc = main(["status", str(out)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def running_search(out, search_inputs):
    """A run folder whose train stage is done and whose search stage is running."""
    runner = StageRunner(out, STAGES)
    (out / "supernet").mkdir(parents=True)
    (out / "supernet" / "supernet.pt").write_text("weights")
    (out / "supernet" / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    runner.run("train", {"train": {"epochs": 2, "time_budget_min": None}}, [out / "supernet" / "supernet.pt"],
               lambda: {"epochs": 2})
    with pytest.raises(KeyboardInterrupt):  # recorded as running, as a live run's stage is
        runner.run("search", {"search": search_inputs}, [out / "search" / "pareto_a.json"],
                   lambda: (_ for _ in ()).throw(KeyboardInterrupt))


def test_status_of_a_run_in_flight_reads_the_search_study(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "search").mkdir(parents=True)
    run_search(SPACE, toy_objectives(), 20, storage=str(out / "search" / "study.journal"), progress=False)
    running_search(out, {"trials": 100})
    with lock_run_dir(out):
        rc, stdout, err = status(out, capsys)
    assert rc == 0 and not err
    lines = stdout.splitlines()
    assert lines[0].startswith(f"{out}: running (pid {os.getpid()} on ")
    row = {line.split()[0]: line for line in lines[3:] if line.split()}
    assert row["train"].split()[1:4] == ["done", "0.0", "supernet/supernet.pt"]
    assert "search     running" in row["search"] and "20 of 100 trials completed, 0 running" in row["search"]
    assert row["final"].split() == ["final", "pending"]
    run_search(SPACE, toy_objectives(), 7, storage=str(out / "search" / "study.journal"), study_name="later",
               progress=False)  # a storage with several studies: the latest one is shown, by name
    with lock_run_dir(out):
        assert "study 'later': 7 of 100 trials completed" in status(out, capsys)[1]
    rc, stdout, _ = status(out, capsys)  # the run was killed: its stage is interrupted
    assert rc == 0 and stdout.startswith(f"{out}: not running") and "search     interrupted" in stdout
    (out / "supernet" / "supernet.pt").unlink()
    assert "train      outputs gone" in status(out, capsys)[1]


def test_status_of_a_search_in_rounds_reads_its_measured_file(tmp_path, capsys):
    """A search in rounds has no study: status reads the round log it rewrites after every round."""
    out = tmp_path / "run"
    running_search(out, {"trials": 300, "rounds": 8, "queries": 200})
    with lock_run_dir(out):
        assert "in rounds: 0 of 200 subnets measured" in status(out, capsys)[1]
        log = [{"round": 0, "measured": 60, "total": 60}, {"round": 1, "measured": 18, "total": 78}]
        (out / "search").mkdir()
        (out / "search" / "measured.json").write_text(json.dumps({"run": {}, "log": log, "points": []}))
        assert "in rounds: round 1 of 8 done, 78 of 200 subnets measured" in status(out, capsys)[1]


def test_status_of_a_running_final_stage_counts_the_networks_trained(tmp_path, capsys):
    out = tmp_path / "run"
    runner = StageRunner(out, STAGES)
    with pytest.raises(KeyboardInterrupt):
        runner.run("final", {"final": {"epochs": 30}}, [out / "final" / "results.json"],
                   lambda: (_ for _ in ()).throw(KeyboardInterrupt))
    with lock_run_dir(out):
        assert "final      running" in status(out, capsys)[1] and "0 networks trained" in status(out, capsys)[1]
        models = {"a": {"role": "estimate", "label": "r32/x", "init": "inherited", "val": 0.81},
                  "b": {"role": "chosen", "label": "r32/y", "init": "scratch", "val": 0.875}}
        (out / "final").mkdir()
        (out / "final" / "results.json").write_text(json.dumps({"models": models}))
        line = status(out, capsys)[1]
    assert "2 networks trained (1 estimate, 1 chosen); last: chosen r32/y (scratch), val 0.8750" in line


def test_an_unreachable_storage_is_one_line_naming_the_redacted_url(tmp_path, capsys):
    out = tmp_path / "run"
    running_search(out, {"trials": 100, "storage": "postgresql://hwnas:s3cret@127.0.0.1:1/studies"})
    with lock_run_dir(out):
        rc, stdout, err = status(out, capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "cannot open storage 'postgresql://hwnas:***@127.0.0.1:1/studies'" in err and "s3cret" not in stdout + err
    assert "search     running" in stdout and "progress unknown (storage unreachable)" in stdout


def test_bad_run_folders_are_refused_in_one_line(tmp_path, capsys):
    for path, needle in [(tmp_path / "none", "does not exist"), (tmp_path, "is not an hwnas run folder")]:
        rc, _, err = status(path, capsys)
        assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_status_shows_the_recorded_ray_cluster_and_imports_no_torch(tmp_path):
    out = tmp_path / "run"
    running_search(out, {"trials": 10})
    (out / "search" / "ray.json").parent.mkdir(exist_ok=True)
    (out / "search" / "ray.json").write_text(json.dumps({
        "address": "10.0.0.5:6379", "dashboard_url": "http://127.0.0.1:1", "recorded": "2026-12-06 12:00:00",
        "nodes": [{"node_id": "abcdef0123", "host": "10.0.0.6", "alive": True, "devices": ["h100"], "cpus": 16,
                   "gpus": 1}]}))
    code = ("import sys; from hwnas.cli import main; rc = main(['status', sys.argv[1]]); "
            "assert 'torch' not in sys.modules and 'ray' not in sys.modules, 'heavy import'; sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH")] if p)}
    proc = subprocess.run([sys.executable, "-c", code, str(out)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Ray cluster 10.0.0.5:6379 (recorded 2026-12-06 12:00:00): dashboard http://127.0.0.1:1" in proc.stdout
    assert "node abcdef01 10.0.0.6: devices h100, 16 CPU, 1 GPU" in proc.stdout
    assert "tasks per node unknown (dashboard not answering: " in proc.stdout
