"""Which files a cluster's nodes must share, tested with a node that does not see the driver's
files: a Ray head with no CPU (no task runs there) and one node, started in a mount namespace of
its own where a folder of the driver is an empty tmpfs, as on another machine. Every task runs on
that node. Files that Ray tasks open by path (a journal or SQLite study, ``dataset.path``) are
refused there in one line before any work; everything else travels through Ray, so ``hwnas run``
with a PostgreSQL study completes with its run folder hidden from the node."""

import json
import sys
import time

import optuna
import pytest

from ray_head import RayHead, hiding_unavailable
from search import SearchError, open_storage, run_search
from test_cluster import SPACE, cluster_run_config, completed, objectives, pg, pg_env  # noqa: F401 - fixtures


class Far:
    """The cluster: ``address``, the far node's id (``node``), a folder it does not see
    (``hidden``) and one it does (``shown``)."""

    def __init__(self, head, node, hidden, shown):
        self.head, self.address, self.node, self.hidden, self.shown = head, head.address, node, hidden, shown


@pytest.fixture(scope="module")
def far(tmp_path_factory):
    why = hiding_unavailable()
    if why:
        pytest.skip(why)
    import ray

    hidden, shown = tmp_path_factory.mktemp("hidden"), tmp_path_factory.mktemp("shown")
    head = RayHead(num_cpus=0, dashboard=False).start()
    try:
        head.add_node(2, {"device:far": 1}, hide=hidden)
        ray.shutdown()  # a local instance left by another module would be used instead
        for module in map(sys.modules.get, (__name__, SPACE.__module__)):  # workers cannot import tests
            ray.cloudpickle.register_pickle_by_value(module)
        ray.init(address=head.address, configure_logging=False)
        nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")]
        assert len(nodes) == 1, ray.nodes()
        yield Far(head, nodes[0]["NodeID"], hidden, shown)
    finally:
        ray.shutdown()
        head.stop()


@pytest.mark.parametrize("kind,file", [("journal", "s.journal"), ("SQLite", "s.db")])
def test_a_file_storage_a_node_does_not_see_is_refused_before_any_trial(far, kind, file):
    path = far.hidden / file
    start = time.monotonic()
    with pytest.raises(SearchError) as e:
        run_search(SPACE, objectives(), 20, storage=str(path), study_name="hidden", workers=2,
                   ray_address=far.address, progress=False)
    message = str(e.value)
    assert "\n" not in message and time.monotonic() - start < 30
    assert f"storage '{'journal:' if kind == 'journal' else 'sqlite:///'}{path}' is " in message
    assert f"{kind} file that node {far.node[:8]} (host " in message and "does not see at that path" in message
    assert "use postgresql://USER@HOST:5432/DATABASE" in message and "needs a shared filesystem" in message
    assert not optuna.load_study(study_name="hidden", storage=open_storage(str(path))).trials
    assert not list(far.hidden.glob(".hwnas-shared-check-*"))  # the check leaves nothing behind


def test_an_sqlite_file_is_refused_when_workers_span_two_hosts(monkeypatch, tmp_path):
    """SQLite's locks do not hold over a network filesystem: two hosts are refused even where
    both would see the file (no node is asked)."""
    import ray

    from search import _shared_fs

    monkeypatch.setattr(_shared_fs, "task_nodes", lambda: [{"NodeID": "f" * 56, "NodeManagerAddress": "10.0.0.7"}])
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "10.0.0.5")
    monkeypatch.setattr(_shared_fs, "nodes_not_seeing", lambda *a, **k: pytest.fail("no node is asked"))
    url = f"sqlite:///{tmp_path / 's.db'}"
    with pytest.raises(SearchError) as e:
        _shared_fs.check_storage_shared(url, url, "cluster.storage")
    assert str(e.value) == (f"cluster.storage {url!r} is an SQLite file, which serves the processes of one host, but "
                            "the search workers run on 2 hosts (10.0.0.5, 10.0.0.7): use postgresql://USER@HOST:5432/"
                            "DATABASE (an SQLite file's locks do not hold over a network filesystem)")
    _shared_fs.check_storage_shared("postgresql://u@db:5432/hwnas", "postgresql://u@db:5432/hwnas")  # a server: no check


def test_a_journal_every_node_sees_is_shared_by_workers_there(far):
    """A file the far node does see (the same file: a shared filesystem) is not refused."""
    study = run_search(SPACE, objectives(), 40, storage=str(far.shown / "s.journal"), study_name="shown", workers=2,
                       ray_address=far.address, batch_size=5, seed=0, progress=False)
    completed(study, 40)


@pytest.mark.parametrize("case", ["storage null", "sqlite", "dataset.path"])
def test_pipeline_refuses_files_a_node_does_not_see_before_training(far, case, tmp_path, capsys):
    import yaml

    from hwnas.cli import main

    config = cluster_run_config(tmp_path, devices=("far",))
    cfg = yaml.safe_load(config.read_text())
    out = far.hidden / f"run-{case.split()[0]}"
    if case == "sqlite":
        cfg["cluster"]["storage"] = str(far.hidden / "s.db")
        needle = f"cluster.storage 'sqlite:///{far.hidden / 's.db'}' is an SQLite file that node {far.node[:8]}"
    elif case == "storage null":
        needle = (f"cluster.storage is null, so the study 'journal:{out / 'search' / 'study.journal'}' is a journal "
                  f"file that node {far.node[:8]}")
    else:
        cfg["cluster"]["storage"], out = str(far.shown / "run.journal"), far.shown / "run-dataset"
        data = far.hidden / "digits.npz"
        data.write_bytes(b"")
        cfg["dataset"]["path"] = str(data)
        needle = f"dataset.path '{data}' is missing on node {far.node[:8]} (host "
    config.write_text(yaml.safe_dump(cfg))
    start = time.monotonic()
    rc = main(["run", "--config", str(config), "--out", str(out), "--ray-address", far.address])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("hwnas: error")]
    assert rc == 2 and len(errors) == 1 and needle in errors[0], err
    assert not (out / "supernet").exists() and time.monotonic() - start < 30


def test_pipeline_needs_no_shared_filesystem_with_a_postgresql_study(far, pg_env, tmp_path, capsys):
    """hwnas run with its run folder hidden from the only node that runs tasks: tables, accuracy
    shards, search workers, the verification (checkpoint and all) and the final timings run
    there, and every output lands in the driver's run folder."""
    from hwnas.cli import main
    from predictors import AccuracyDataset

    out = far.hidden / "run"
    config = cluster_run_config(tmp_path, storage=pg_env.url, devices=("far",))
    assert main(["run", "--config", str(config), "--out", str(out), "--ray-address", far.address]) == 0, \
        capsys.readouterr().err
    table = json.loads((out / "tables" / "far.json").read_text())
    assert table["build"]["node"]["node_id"] == far.node
    assert len(AccuracyDataset.load(out / "predictor" / "accuracy_fit.jsonl")) == 30
    storage = open_storage(pg_env.url)
    studies = [s for s in optuna.get_all_study_names(storage) if s.startswith("hwnas-tiny-")]
    assert len(studies) == 1
    completed(optuna.load_study(study_name=studies[0], storage=storage), 120)
    front = json.loads((out / "search" / "pareto_far.json").read_text())["front"]
    verified = [r for r in front if "measured" in r["accuracy"]]
    assert verified and all("measured" in r["latency_ms"] for r in verified)
    records = AccuracyDataset.load(out / "search" / "verified_accuracy.jsonl").records  # measured there, kept here
    assert {r["arch"] for r in records} == {r["arch"] for r in verified}
    final = json.loads((out / "final" / "results.json").read_text())
    assert all(set(m["latency"]) == {"far"} for m in final["models"].values())
    assert "## Device `far`" in (out / "report.md").read_text()
