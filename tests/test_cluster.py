"""Search on a cluster, for real: a PostgreSQL 15 server started in a temporary folder (study
storage, credentials), and a multi-node Ray cluster on this machine (device nodes)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from postgres_server import PostgresServer, find_bin_dir
from search import Budget, Objective, SearchError, open_storage, redact_url, run_search
from search._loop import DUPLICATE_ATTR, SURPLUS_ATTR
from cluster_kill import NodeOf, audit, search_killing_a_node
from test_search import DiesOnce, second_driver_is_refused

optuna.logging.set_verbosity(optuna.logging.WARNING)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
TESTS = Path(__file__).resolve().parent


class GridSpace:
    """Four genes of four choices; archs are tuples of ints (no supernet)."""

    name, fingerprint = "grid", "grid-4x4"

    def suggest(self, trial):
        return tuple(trial.suggest_categorical(f"g{i}", list(range(4))) for i in range(4))

    def from_params(self, params):
        return tuple(params[f"g{i}"] for i in range(4))

    def encode_many(self, archs):
        return np.asarray(archs, float).reshape(len(archs), 4)


SPACE = GridSpace()


def quality(archs):
    return 1 - np.exp(-SPACE.encode_many(archs).sum(1) / 6)


def cost(archs):
    return SPACE.encode_many(archs) @ np.array([0.4, 0.3, 0.2, 0.1])


def objectives(latency=cost, **kwargs):
    return [Objective("accuracy", "maximize", quality),
            Objective("latency:a", "minimize", latency, device="a", **kwargs)]


def completed(study, n, killed=()):
    """The study holds exactly ``n`` completed trials, none RUNNING or WAITING, and every failed
    one is accounted for (a surplus, a duplicate retry copy, a dead worker's trial redone, or one
    of ``killed``: RUNNING when its driver was killed)."""
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == n, states
    assert states.count(TrialState.RUNNING) == 0 and states.count(TrialState.WAITING) == 0
    redone = {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs}
    for t in trials:
        if t.state == TrialState.FAIL:
            assert (t.user_attrs.get(SURPLUS_ATTR) or t.user_attrs.get(DUPLICATE_ATTR) or t.number in redone
                    or t.number in killed), t
    copies = {}
    for t in trials:
        if "failed_trial" in t.system_attrs and t.state == TrialState.COMPLETE:
            copies.setdefault(t.system_attrs["failed_trial"], []).append(t.number)
    assert all(len(c) == 1 for c in copies.values()), copies  # a dead trial is redone once, not twice
    return trials


# ---- PostgreSQL ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pg():
    if find_bin_dir() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl, postgres) are not installed: apt-get install postgresql-15")
    with PostgresServer() as server:
        yield server


@pytest.fixture
def pg_env(pg, monkeypatch):
    """The server's password in the environment, as a deployment gives it; URLs carry none."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("HWNAS_STORAGE_PASSWORD", pg.password)
    return pg


def test_postgresql_url_takes_the_password_from_the_environment_and_never_shows_it(pg, monkeypatch):
    monkeypatch.delenv("HWNAS_STORAGE_PASSWORD", raising=False)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    assert redact_url(pg.url_with_password) == pg.url.replace("hwnas@", "hwnas:***@")
    with pytest.raises(SearchError) as e:  # no password anywhere: refused by the server, in one line
        open_storage(pg.url)
    assert "password" in str(e.value) and pg.url in str(e.value) and "\n" not in str(e.value)
    wrong = pg.url_with_password.replace(pg.password, "Wrong-pw-123")
    with pytest.raises(SearchError) as e:
        open_storage(wrong)
    assert "Wrong-pw-123" not in str(e.value) and "hwnas:***@" in str(e.value)
    for key in ("HWNAS_STORAGE_PASSWORD", "PGPASSWORD"):  # plain postgresql:// goes to psycopg 3
        with monkeypatch.context() as m:
            m.setenv(key, pg.password)
            storage = open_storage(pg.url)
            assert storage.engine.dialect.driver == "psycopg"
            storage.engine.dispose()
    assert open_storage(pg.url_with_password).engine.dialect.driver == "psycopg"


@pytest.mark.parametrize("sampler", ["nsga2", "tpe"])
def test_a_database_study_holds_what_an_in_memory_one_does(pg_env, sampler, tmp_path):
    """Trials asked and told a batch at a time in one transaction each (search/_batch_ask.py):
    the same proposals, values, constraints and GA generations as Optuna's own calls."""
    def run(storage):
        study = run_search(SPACE, objectives(), 120, budgets=[Budget("latency:a", 0.8)], sampler=sampler, seed=5,
                           population_size=20, storage=storage, study_name=f"same-{sampler}", progress=False)
        return [(t.number, t.state, t.params, t.values, t.constraints, t.system_attrs.get("nsga2:generation"))
                for t in study.trials]

    memory = run(None)
    assert run(pg_env.url) == memory
    assert run(f"sqlite:///{tmp_path / 's.db'}") == memory


def test_a_killed_driver_is_resumed_on_postgresql(pg_env):
    """SIGKILL the search process mid-run; a re-run keeps its trials and ends exactly."""
    code = ("import sys, time; sys.path.insert(0, sys.argv[1])\n"
            "from test_cluster import SPACE, objectives\n"
            "from search import run_search\n"
            "def slow(archs):\n"
            "    time.sleep(0.05)\n"
            "    return [sum(a) / 10 for a in archs]\n"
            "run_search(SPACE, objectives(slow), 400, storage=sys.argv[2], study_name='driver', batch_size=4,\n"
            "           seed=0, progress=False, heartbeat_interval=1)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(TESTS), pg_env.url], cwd=TESTS.parent)
    storage = open_storage(pg_env.url, heartbeat_interval=None)
    try:
        deadline = time.monotonic() + 60
        done = 0
        while done < 12 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            try:
                study = optuna.load_study(study_name="driver", storage=storage)
                done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
            except KeyError:
                pass  # not created yet
        assert proc.poll() is None and done >= 12, f"driver ended ({proc.returncode}) or stalled at {done} trials"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = optuna.load_study(study_name="driver", storage=storage).get_trials()
    before = {t.number: t.params for t in left if t.state == TrialState.COMPLETE}
    killed = {t.number for t in left if t.state == TrialState.RUNNING}
    study = run_search(SPACE, objectives(lambda archs: [sum(a) / 10 for a in archs]), len(before) + 30,
                       storage=pg_env.url, study_name="driver", batch_size=4, seed=0, progress=False,
                       heartbeat_interval=1)
    completed(study, len(before) + 30, killed)
    after = {t.number: t.params for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert all(after[n] == p for n, p in before.items())  # resumed, not restarted


def test_cli_reports_hold_no_password(pg, tmp_path, capsys, monkeypatch):
    import yaml

    from search_space import SearchSpace
    from test_search import TINY_SPACE, run_cli, stand_in_predictor, stand_in_table

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_SPACE))
    space = SearchSpace.from_config(config)
    table, pred = stand_in_table(space, "cpu", tmp_path / "cpu.json", {}), stand_in_predictor(space, tmp_path / "p.pt")
    monkeypatch.setenv("HWNAS_STORAGE_PASSWORD", pg.password)
    for url in (pg.url, pg.url_with_password):  # password from the environment, or in the URL
        out = tmp_path / f"run{len(url)}"
        rc, stdout, err = run_cli(["search", "--space", str(config), "--predictor", str(pred), "--table", f"cpu={table}",
                                   "--trials", "20", "--population", "10", "--storage", url, "--study", f"cli{len(url)}",
                                   "--no-verify", "--out", str(out), "--quiet"], capsys)
        assert rc == 0, err
        written = [stdout, err] + [f.read_text() for f in out.iterdir() if f.suffix in (".json", ".md")]
        assert all(pg.password not in text for text in written)
        assert json.loads((out / "pareto_cpu.json").read_text())["run"]["storage"] == redact_url(url)


# ---- a multi-node Ray cluster: a head and two device nodes ---------------------------------------

SMALL_NODE = {"object_store_memory": 80 * 2**20, "include_dashboard": False}


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    for module in map(sys.modules.get, (__name__, DiesOnce.__module__, NodeOf.__module__)):  # workers cannot import tests
        ray.cloudpickle.register_pickle_by_value(module)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, **SMALL_NODE})
    # Two CPUs per device node: a search worker there must leave room for the node's device task.
    nodes = {d: c.add_node(num_cpus=2, resources={f"device:{d}": 1}, **SMALL_NODE) for d in ("a", "b")}
    c.wait_for_nodes()
    c.connect()
    yield Nodes(c, {d: n.node_id for d, n in nodes.items()})
    ray.shutdown()
    c.shutdown()


class Nodes(dict):
    """Device name -> node id of the cluster's device nodes; ``cluster`` is the Cluster, ``address``
    its head's."""

    def __init__(self, cluster, ids):
        super().__init__(ids)
        self.cluster, self.address = cluster, cluster.address


class NodeLog:
    """Latency of device a that records the Ray node it ran on."""

    def __init__(self, path):
        self.path = str(path)

    def __call__(self, archs):
        import ray

        with open(self.path, "a") as f:
            f.write(ray.get_runtime_context().get_node_id() + "\n")
        return cost(archs)


def test_two_workers_on_postgresql_with_device_tasks_on_their_nodes(cluster, pg_env, tmp_path):
    """2 workers over 3 nodes share a PostgreSQL study: the total is exact, no trial counted twice,
    and each device's latency is measured only on the node that owns the device."""
    log_a, log_b = tmp_path / "a.nodes", tmp_path / "b.nodes"
    objs = [Objective("accuracy", "maximize", quality),
            Objective("latency:a", "minimize", NodeLog(log_a), device="a", resources={"device:a": 1}),
            Objective("latency:b", "minimize", NodeLog(log_b), device="b", resources={"device:b": 1})]
    study = run_search(SPACE, objs, 50, storage=pg_env.url, study_name="placement", workers=2, batch_size=8,
                       seed=0, progress=False)
    completed(study, 50)
    assert set(log_a.read_text().split()) == {cluster["a"]}
    assert set(log_b.read_text().split()) == {cluster["b"]}


class LoggedQuality:
    """The quality as a slow measurement that logs each arch it measures (workers are other processes)."""

    def __init__(self, path):
        self.path = str(path)

    def __call__(self, archs):
        time.sleep(0.02 * len(archs))
        with open(self.path, "a") as f:
            f.writelines(f"{a}\n" for a in archs)
        return quality(archs)


def test_two_workers_share_max_evaluations_on_postgresql(cluster, pg_env, tmp_path):
    """max_evaluations with workers on PostgreSQL: claimed under an advisory lock, so together
    they measure exactly that many distinct archs, none twice."""
    from search._loop import evaluation_count

    log = tmp_path / "measured.txt"
    objs = [Objective("accuracy", "maximize", LoggedQuality(log), measured=True), objectives()[1]]
    study = run_search(SPACE, objs, max_evaluations=40, storage=pg_env.url, study_name="evaluations", workers=2,
                       batch_size=6, seed=0, progress=False)
    measured = log.read_text().splitlines()
    assert len(measured) == len(set(measured)) == 40 == evaluation_count(study)
    assert not study.get_trials(states=(TrialState.RUNNING,))


def test_the_cluster_is_recorded_for_hwnas_status(cluster, tmp_path):
    from hwnas.run_status import cluster_lines, record_cluster

    record_cluster(tmp_path)
    nodes = json.loads((tmp_path / "ray.json").read_text())["nodes"]
    assert {n["node_id"]: n["devices"] for n in nodes if n["devices"]} == {cluster["a"]: ["a"], cluster["b"]: ["b"]}
    lines = cluster_lines(tmp_path)
    assert "dashboard not running" in lines[0] and len(lines) == 1 + len(nodes)
    assert any(f"node {cluster['a'][:8]} " in line and "devices a, 2 CPU" in line for line in lines)


def test_a_device_no_node_owns_fails_before_any_trial(cluster, pg_env):
    objs = objectives(resources={"device:c": 1})
    start = time.monotonic()
    with pytest.raises(SearchError, match=r"objective 'latency:a' needs Ray resource 'device:c': 1, which no node of "
                                          r"the cluster has \(devices on nodes: \['a', 'b'\]\)") as e:
        run_search(SPACE, objs, 30, storage=pg_env.url, study_name="nowhere", workers=2, progress=False)
    assert "\n" not in str(e.value) and time.monotonic() - start < 20
    assert not optuna.load_study(study_name="nowhere", storage=open_storage(pg_env.url)).trials


def test_a_killed_worker_loses_no_trial_on_postgresql(cluster, pg_env, tmp_path):
    """The dead worker's trials stop beating, are failed after the grace period and redone once."""
    marker = tmp_path / "died"
    study = run_search(SPACE, objectives(DiesOnce(marker, os.getpid(), cost)), 40, storage=pg_env.url, study_name="killed",
                       workers=2, batch_size=5, seed=0, progress=False, heartbeat_interval=1, grace_period=2)
    assert marker.exists()  # a worker did die
    trials = completed(study, 40)
    assert any("failed_trial" in t.system_attrs for t in trials)  # its trials were re-queued and redone


def test_a_second_driver_on_a_study_in_use_is_refused_on_postgresql(pg_env):
    second_driver_is_refused(SPACE, objectives(), pg_env.url, "(server session ")


def test_a_killed_worker_node_loses_no_trial_and_does_not_hang(cluster, pg_env, tmp_path):
    """A node running search workers dies mid-search (raylet and workers killed, no graceful stop):
    Ray re-runs its workers on the other nodes, its workers' trials stop beating and are redone
    once; the total is exact and the search ends (the stall timeout is the backstop)."""
    import ray

    log = tmp_path / "nodes"
    result = search_killing_a_node(cluster.cluster, lambda: run_search(
        SPACE, objectives(NodeOf(log, cost)), 120, storage=pg_env.url, study_name="node-killed", workers=3,
        batch_size=4, seed=0, progress=False, heartbeat_interval=1, grace_period=2, stall_timeout=60), log)
    killed = result["killed"].get("node")
    for device, node_id in list(cluster.items()):  # the fixture's device node comes back for later tests
        if node_id == killed:
            cluster[device] = cluster.cluster.add_node(num_cpus=2, resources={f"device:{device}": 1},
                                                       **SMALL_NODE).node_id
    cluster.cluster.wait_for_nodes()
    assert killed and not any(n["NodeID"] == killed and n["Alive"] for n in ray.nodes()), result["killed"]
    completed(result["study"], 120)
    assert audit(result["study"], 120)["duplicates"] == 0 and result["wall_s"] < 60


# ---- Ray addresses -------------------------------------------------------------------------------

@pytest.mark.parametrize("address,needle", [("127.0.0.1:1", "cannot reach a Ray cluster at '127.0.0.1:1'"),
                                            ("ray://127.0.0.1:1", "cannot reach a Ray cluster at 'ray://127.0.0.1:1'"),
                                            ("headnode", "Ray address 'headnode' is malformed")])
def test_a_ray_address_with_nothing_there_fails_in_seconds(address, needle, capsys, tmp_path):
    from hwnas.cli import main

    start = time.monotonic()
    rc = main(["search", "--ray-address", address, "--predictor", "missing.pt", "--table", "cpu=missing.json",
               "--trials", "10", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert time.monotonic() - start < 15  # checked before anything is loaded, and without waiting on Ray
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err


# ---- the whole pipeline on the cluster ------------------------------------------------------------

def cluster_run_config(tmp_path, storage=None, devices=("a", "b")):
    """The tests' tiny digits run, one CPU device per device node, searched by 2 workers."""
    import yaml

    from test_pipeline import TINY_RUN

    run = {**TINY_RUN, "latency": {**TINY_RUN["latency"], "devices": [
               {"name": d, "backend": "onnxruntime", "threads": 1} for d in devices]},
           "search": {**TINY_RUN["search"], "trials": 120, "budgets": {}},
           "final": {**TINY_RUN["final"], "epochs": 1, "ranking": 0},
           "cluster": {"workers": 2, "storage": storage, "shards": 2}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    return path


def test_pipeline_on_the_cluster_builds_tables_on_their_nodes(cluster, pg_env, tmp_path, capsys):
    """hwnas run --ray-address: each device's table is built and validated on the node that owns
    it, the accuracy datasets are measured in shards, the search runs 2 workers on PostgreSQL;
    everything lands in the driver's run folder, with the report of a local run."""
    from hwnas.cli import main
    from hwnas.cluster import measure_accuracy_on_cluster
    from hwnas.pipeline import Pipeline
    from predictors import AccuracyDataset

    out = tmp_path / "run"
    config = cluster_run_config(tmp_path, storage=pg_env.url)
    assert main(["run", "--config", str(config), "--out", str(out), "--ray-address", cluster.address]) == 0, \
        capsys.readouterr().err
    printed = capsys.readouterr()
    summary = json.loads((out / "manifest.json").read_text())["latency"]["summary"]
    for d in ("a", "b"):  # measured where the device is, recorded in the table and the manifest
        table = json.loads((out / "tables" / f"{d}.json").read_text())
        assert table["build"]["node"]["node_id"] == cluster[d] == summary[d]["node"]["node_id"]
        assert table["validation"]["n"] == 6 and (out / "tables" / f"{d}_validation.md").exists()
    fit = AccuracyDataset.load(out / "predictor" / "accuracy_fit.jsonl")
    assert len(fit) == 30 and len({r["arch"] for r in fit.records}) == 30
    assert len(AccuracyDataset.load(out / "predictor" / "accuracy_holdout.jsonl")) == 10
    storage = open_storage(pg_env.url)
    studies = [s for s in optuna.get_all_study_names(storage) if s.startswith("hwnas-tiny-")]
    assert len(studies) == 1
    completed(optuna.load_study(study_name=studies[0], storage=storage), 120)
    final = json.loads((out / "final" / "results.json").read_text())  # models timed on both device nodes
    assert all(set(m["latency"]) == {"a", "b"} for m in final["models"].values())
    report = (out / "report.md").read_text()
    assert "## Device `a`" in report and "## Device `b`" in report and "Built and validated on Ray nodes" in report
    for path in out.rglob("*"):  # the database password reaches no output
        if path.is_file() and path.suffix in (".json", ".md", ".jsonl", ".csv"):
            assert pg_env.password not in path.read_text(), path
    assert pg_env.password not in printed.out + printed.err
    # a device reusing a table (the driver's file, sent to the node) is validated on its node; a device
    # finished by an earlier call with the same settings is not redone
    from hwnas.cluster import build_tables_on_cluster
    from hwnas.run_config import load_run_config

    lat, reuse = load_run_config(config)["latency"], tmp_path / "reuse"
    device = {**lat["devices"][1], "table": str(out / "tables" / "b.json")}
    first = build_tables_on_cluster(Pipeline(config, out).space, [device], lat, 0, reuse, run_id="reuse")["b"]
    assert first["reused"] == device["table"] and first["node"]["node_id"] == cluster["b"]
    assert json.loads((reuse / "b.json").read_text())["blocks"] == json.loads((out / "tables" / "b.json").read_text())["blocks"]
    mtime = (reuse / "b.json").stat().st_mtime_ns
    assert build_tables_on_cluster(Pipeline(config, out).space, [device], lat, 0, reuse, run_id="reuse")["b"] == first
    assert (reuse / "b.json").stat().st_mtime_ns == mtime
    # resumable accuracy: records of finished shards are kept, only the missing ones measured again
    path = out / "predictor" / "accuracy_fit.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-5]) + "\n")
    pipeline = Pipeline(config, out)
    settings = {k: pipeline.cfg["predictor"][k] for k in ("calib_batches", "calib_batch_size", "eval_batch_size")}
    assert measure_accuracy_on_cluster(pipeline.space, out / "supernet" / "supernet.pt", 30, path, seed=0,
                                       extremes=True, gpu=False, settings=settings, shards=2) == 5
    again = AccuracyDataset.load(path)
    assert again.records[:25] == fit.records[:25] and {r["arch"] for r in again.records} == {r["arch"] for r in fit.records}


def test_pipeline_refuses_a_device_no_node_owns_before_training(cluster, tmp_path, capsys):
    from hwnas.cli import main

    start = time.monotonic()
    rc = main(["run", "--config", str(cluster_run_config(tmp_path, devices=("a", "c"))), "--out", str(tmp_path / "run"),
               "--ray-address", cluster.address])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "latency device 'c' needs Ray resource 'device:c': 1, which no node of the cluster has" in err
    assert not (tmp_path / "run" / "supernet").exists() and time.monotonic() - start < 20
