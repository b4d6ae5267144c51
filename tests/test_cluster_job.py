"""``hwnas run`` submitted as a Ray job, as the README shows it: ``ray job submit --working-dir
. -- hwnas run --config run.yaml --ray-address auto --out /abs/run``, against a head node started
here with ``ray start --head`` and its dashboard (the job server). Needs ``ray[default]``
(``pip install -e ".[cluster]"``, included in ``[dev]``); skipped without it."""

import json
import subprocess
import time
from pathlib import Path

import pytest

from ray_head import RayHead, job_deps_missing

pytestmark = pytest.mark.skipif(job_deps_missing() is not None, reason=str(job_deps_missing()))
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def head():
    """One head node owning device ``a``, two CPUs: two search workers, or the device's task."""
    with RayHead(num_cpus=2, resources={"device:a": 1}) as h:
        yield h


def submit(head: RayHead, job_id: str, *entrypoint: str) -> subprocess.CompletedProcess:
    """``ray job submit`` with the repository as working dir; waits for the job, as a user's
    shell would (the command tails the job's logs until it ends)."""
    return subprocess.run(["ray", "job", "submit", "--address", head.dashboard, "--submission-id", job_id,
                           "--working-dir", str(REPO), "--", *entrypoint],
                          env=head.env(), cwd=REPO, capture_output=True, text=True, timeout=580)


def job(head: RayHead, job_id: str):
    """The job's record (status, driver exit code, node) and its logs, from the job server."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(head.dashboard)
    deadline = time.monotonic() + 60  # `ray job submit` returns when the logs end, the status follows
    while not client.get_job_status(job_id).is_terminal() and time.monotonic() < deadline:
        time.sleep(1)
    return client.get_job_info(job_id), client.get_job_logs(job_id)


def test_hwnas_run_as_a_ray_job_fills_the_run_folder(head, tmp_path):
    """The digits quickstart-sized run of the cluster tests (one device, two search workers on a
    journal file): the job succeeds with exit code 0 and the run folder holds every stage's
    outputs, the table measured on the node that owns the device."""
    from test_cluster import cluster_run_config

    config, out = cluster_run_config(tmp_path, devices=("a",)), tmp_path / "run"
    done = submit(head, "hwnas-run-ok", "hwnas", "run", "--config", str(config), "--ray-address", "auto",
                  "--out", str(out))
    info, logs = job(head, "hwnas-run-ok")
    assert done.returncode == 0 and info.status == "SUCCEEDED" and info.driver_exit_code == 0, \
        (info.status, info.driver_exit_code, logs[-3000:], done.stderr[-2000:])
    assert "Ray cluster at auto: 1 nodes, devices a" in logs
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest) == {"train", "latency", "accuracy", "predictor", "search", "final", "export", "report"}
    table = json.loads((out / "tables" / "a.json").read_text())
    assert table["build"]["node"]["node_id"] == info.driver_node_id  # the head: the only node, owning device a
    assert json.loads((out / "search" / "pareto_a.json").read_text())["front"]
    assert (out / "search" / "study.journal").is_file() and (out / "final" / "results.json").is_file()
    assert (out / "models" / "a_rank00.onnx").is_file()
    assert "## Device `a`" in (out / "report.md").read_text()


def test_a_job_with_a_relative_run_folder_is_refused(head, tmp_path):
    """In a job, the driver runs in a temporary copy of --working-dir that Ray deletes: a relative
    --out would put the run there. Refused in one line, exit code 2, before any work."""
    from test_cluster import cluster_run_config

    config = cluster_run_config(tmp_path, devices=("a",))
    done = submit(head, "hwnas-run-relative", "hwnas", "run", "--config", str(config), "--ray-address", "auto",
                  "--out", "runs/r1")
    info, logs = job(head, "hwnas-run-relative")
    assert done.returncode != 0 and info.status == "FAILED" and info.driver_exit_code == 2, (info, logs)
    errors = [line for line in logs.splitlines() if "error" in line]
    assert errors == ["hwnas: error: --out 'runs/r1' is relative, but this Ray job runs in a temporary copy of its "
                      "--working-dir that Ray deletes: expected an absolute path (e.g. /data/runs/r1)"], logs
