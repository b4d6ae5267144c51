"""search: objectives, budgets, samplers, storages, exact trial counts, resume, fronts,
verification, reports, Ray workers. Uses a toy space with no supernet (the protocol only)."""

import itertools
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from search import (Budget, Objective, SearchError, SearchSpaceProtocol, Trials, device_fronts, format_fronts,
                    hypervolume_2d, hypervolume_history, make_sampler, open_storage, pareto_front_2d, parse_budget,
                    run_search, storage_url, verify_fronts, write_report)
from search._loop import DUPLICATE_ATTR, SURPLUS_ATTR
from search._samplers import _NSGAII

optuna.logging.set_verbosity(optuna.logging.WARNING)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


class ToySpace:
    """Six genes of five choices; no supernet. Archs are tuples of ints."""

    name, fingerprint = "toy", "toy-6x5"

    def __init__(self, n=6, k=5):
        self.n, self.k = n, k

    def suggest(self, trial):
        return tuple(trial.suggest_categorical(f"g{i}", list(range(self.k))) for i in range(self.n))

    def from_params(self, params):
        return tuple(params[f"g{i}"] for i in range(self.n))

    def encode_many(self, archs):
        return np.asarray(archs, float).reshape(len(archs), self.n)

    def flops(self, arch):
        return int(sum(arch) * 1e6)


SPACE = ToySpace()
W_A, W_B = np.arange(1, 7) / 10, np.arange(6, 0, -1) / 10


def toy_accuracy(archs):
    x = SPACE.encode_many(archs)
    return 1 - np.exp(-(x * np.linspace(1.2, 0.8, 6)).sum(1) / 8)


def toy_latency_a(archs):
    return SPACE.encode_many(archs) @ W_A


def toy_latency_b(archs):
    return 0.3 + SPACE.encode_many(archs) @ W_B


def toy_objectives():
    return [Objective("accuracy", "maximize", toy_accuracy),
            Objective("latency:a", "minimize", toy_latency_a, device="a", unit="ms"),
            Objective("latency:b", "minimize", toy_latency_b, device="b", unit="ms")]


ALL_ARCHS = list(itertools.product(range(5), repeat=6))


def true_hypervolume(latency, budget=None):
    """Hypervolume of the exact front of the whole toy space (15,625 archs)."""
    q, c = toy_accuracy(ALL_ARCHS), latency(ALL_ARCHS)
    ok = c <= budget if budget is not None else np.ones(len(c), bool)
    return q, c, ok


def test_toy_space_follows_the_protocol():
    assert isinstance(SPACE, SearchSpaceProtocol)


# ---- Pareto fronts and hypervolume ----------------------------------------------------------

def brute_front(q, c):
    return {i for i in range(len(q))
            if not any((q[j] >= q[i] and c[j] <= c[i]) and (q[j] > q[i] or c[j] < c[i]) for j in range(len(q)))}


def test_pareto_front_2d_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        q, c = rng.integers(0, 8, 40).astype(float), rng.integers(0, 8, 40).astype(float)
        front = pareto_front_2d(q, c)
        assert list(c[front]) == sorted(c[front])
        # the same set of (q, c) values (duplicates keep one representative)
        assert {(q[i], c[i]) for i in front} == {(q[i], c[i]) for i in brute_front(q, c)}
        assert len(front) == len({(q[i], c[i]) for i in front})


def test_hypervolume_2d_matches_grid_count():
    q, c = np.array([0.5, 0.8, 0.9, 0.3]), np.array([1.0, 2.0, 4.0, 3.0])
    # rectangles from the reference (0, 5): 1x0.5 + 2x0.8 + 1x0.9 minus overlaps = staircase area
    assert hypervolume_2d(q, c, 0.0, 5.0) == pytest.approx(1 * 0.5 + 2 * 0.8 + 1 * 0.9)
    assert hypervolume_2d(q, c, 0.0, 0.5) == 0.0  # nothing better than the reference
    rng = np.random.default_rng(1)
    q, c = rng.random(30), rng.random(30)
    xs, ys = np.meshgrid(np.linspace(0, 1, 801)[:-1] + 1 / 1600, np.linspace(0, 1, 801)[:-1] + 1 / 1600)
    dominated = ((ys.ravel()[:, None] <= q[None]) & (xs.ravel()[:, None] >= c[None])).any(1).mean()
    assert hypervolume_2d(q, c, 0.0, 1.0) == pytest.approx(dominated, abs=5e-3)


def test_hypervolume_history_grows_to_the_final_value():
    rng = np.random.default_rng(2)
    q, c = rng.random(500), rng.random(500)
    hist = hypervolume_history(q, c, 0.0, 1.0, points=50)
    hv = [h for _, h in hist]
    assert hist[-1][0] == 500 and np.all(np.diff(hv) >= 0)
    assert hv[-1] == pytest.approx(hypervolume_2d(q, c, 0.0, 1.0))


# ---- objectives, budgets, samplers, storages: clear errors --------------------------------

@pytest.mark.parametrize("kwargs,needle", [
    (dict(name="acc uracy", direction="maximize"), "objective name 'acc uracy' is invalid"),
    (dict(name="acc", direction="up"), "direction 'up' is invalid"),
])
def test_bad_objectives_are_named(kwargs, needle):
    with pytest.raises(SearchError, match=needle):
        Objective(score=toy_accuracy, **kwargs)


def test_objective_must_return_one_value_per_arch():
    bad = Objective("acc", "maximize", lambda archs: [0.5])
    with pytest.raises(SearchError, match="returned 1 values for 2 archs"):
        bad([(0,) * 6, (1,) * 6])


def test_objectives_score_each_distinct_arch_once_and_cache_when_asked():
    calls = []

    def counting(archs):
        calls.append(len(archs))
        return toy_latency_a(archs)

    a, b = (0,) * 6, (1,) * 6
    plain = Objective("latency:a", "minimize", counting)
    assert list(plain([a, b, a])) == list(toy_latency_a([a, b, a])) and calls == [2]
    plain([a])
    assert calls == [2, 1]  # no cache: scored again
    cached = Objective("latency:a", "minimize", counting, cache=True)
    cached([a, b])
    assert list(cached([b, a, b])) == list(toy_latency_a([b, a, b])) and calls == [2, 1, 2]


def test_a_full_cache_is_emptied_without_losing_values(monkeypatch):
    from search import _objectives

    monkeypatch.setattr(_objectives, "MEMO_LIMIT", 3)
    cached = Objective("latency:a", "minimize", toy_latency_a, cache=True)
    archs = [(i,) * 6 for i in range(5)]
    cached(archs[:3])
    assert list(cached(archs)) == list(toy_latency_a(archs))  # old hits and new values in one call
    assert set(cached._memo) == set(archs[3:])  # emptied, then refilled with the new values only


@pytest.mark.parametrize("text,ms", [("a=5ms", 5.0), ("a=2.5", 2.5), ("b = 500us", 0.5), ("a=0.01s", 10.0)])
def test_parse_budget(text, ms):
    b = parse_budget(text, ["a", "b"])
    assert b.limit == pytest.approx(ms) and b.objective.startswith("latency:")


@pytest.mark.parametrize("text,needle", [
    ("a5ms", "invalid budget 'a5ms': expected DEVICE=LIMIT"),
    ("a=fast", "invalid budget 'a=fast'"),
    ("a=5min", "invalid budget 'a=5min'"),
    ("h100=5ms", "names device 'h100', which has no latency table: expected one of \\['a', 'b'\\]"),
    ("a=0ms", "is not positive"),
])
def test_bad_budgets_fail_in_one_line(text, needle):
    with pytest.raises(SearchError, match=needle) as e:
        parse_budget(text, ["a", "b"])
    assert "\n" not in str(e.value)


def test_budget_must_name_a_minimised_objective():
    with pytest.raises(SearchError, match="the objective is maximised"):
        run_search(SPACE, toy_objectives(), 10, budgets=[Budget("accuracy", 0.5)], progress=False)
    with pytest.raises(SearchError, match="names no objective"):
        run_search(SPACE, toy_objectives(), 10, budgets=[Budget("latency:zz", 0.5)], progress=False)


def test_samplers_are_pinned_and_seeded():
    assert isinstance(make_sampler(), optuna.samplers.NSGAIISampler)  # never Optuna 5's TPE default
    kinds = {"nsga2": optuna.samplers.NSGAIISampler, "nsga3": optuna.samplers.NSGAIIISampler,
             "tpe": optuna.samplers.TPESampler, "gp": optuna.samplers.GPSampler, "random": optuna.samplers.RandomSampler}
    for name, cls in kinds.items():
        assert isinstance(make_sampler(name, seed=1), cls)
    with pytest.raises(SearchError, match="unknown sampler 'cmaes': expected one of"):
        make_sampler("cmaes")


@pytest.mark.parametrize("spec,url", [(None, "memory"), ("memory", "memory"), ("postgresql://u@h/db", "postgresql://u@h/db")])
def test_storage_urls(spec, url):
    assert storage_url(spec) == url


def test_storage_paths_and_errors(tmp_path):
    assert storage_url(tmp_path / "s.journal") == f"journal:{tmp_path / 's.journal'}"
    assert storage_url(tmp_path / "s.db") == f"sqlite:///{tmp_path / 's.db'}"
    with pytest.raises(SearchError, match="storage '.*s.txt' is not recognised: expected"):
        storage_url(tmp_path / "s.txt")
    with pytest.raises(SearchError, match="scheme 'http'"):
        storage_url("http://example.org/db")
    with pytest.raises(SearchError, match="does not exist"):
        open_storage(tmp_path / "missing" / "s.journal")


def test_bad_counts_fail_before_work():
    for kwargs, needle in [(dict(n_trials=0), "number of trials 0"), (dict(n_trials=5, workers=0), "number of workers 0"),
                           (dict(n_trials=5, batch_size=-1), "batch size -1"), (dict(n_trials=5, sampler="x"), "unknown sampler 'x'")]:
        with pytest.raises(SearchError, match=needle):
            run_search(SPACE, toy_objectives(), progress=False, **kwargs)


def test_objective_for_another_encoding_fails_before_any_trial(tmp_path):
    def wrong_width(archs):
        x = SPACE.encode_many(archs)
        if x.shape[1] != 7:
            raise ValueError(f"encodings have shape {x.shape}: expected (n, 7)")
        return x.sum(1)

    storage = tmp_path / "s.journal"
    objs = [Objective("accuracy", "maximize", wrong_width), toy_objectives()[1]]
    with pytest.raises(SearchError, match=r"objective 'accuracy' fails on \(.*\): ValueError: encodings have shape \(1, 6\)"):
        run_search(SPACE, objs, 10, storage=str(storage), progress=False)
    assert not storage.exists() or not optuna.get_all_study_summaries(open_storage(storage))


def test_ray_workers_need_a_shared_storage():
    with pytest.raises(SearchError, match="Ray workers need a storage they can open themselves, got 'memory'"):
        run_search(SPACE, toy_objectives(), 10, workers=2, progress=False)


# ---- the search itself ---------------------------------------------------------------------

def test_search_is_exact_seeded_and_respects_budgets():
    budgets = [parse_budget("a=4ms", ["a", "b"])]
    s1 = run_search(SPACE, toy_objectives(), 350, budgets=budgets, seed=3, progress=False)
    s2 = run_search(SPACE, toy_objectives(), 350, budgets=budgets, seed=3, progress=False)
    assert len(s1.trials) == 350 and all(t.state == TrialState.COMPLETE for t in s1.trials)
    assert [t.params for t in s1.trials] == [t.params for t in s2.trials]
    trials = Trials.from_study(s1)
    assert np.array_equal(trials.feasible, trials.column("latency:a") <= 4.0)
    for t in s1.trials:  # budgets reach the sampler as Optuna constraints, not penalties
        assert t.constraints["latency:a"] == pytest.approx(t.values[1] - 4.0)
    fronts = device_fronts(trials, SPACE)
    assert set(fronts) == {"a", "b"}
    for f in fronts.values():
        assert f.points and all(p.predicted["latency:a"] <= 4.0 for p in f.points)


def test_incremental_nsga2_proposes_exactly_what_optunas_does():
    """Our generation bookkeeping is a speed-up only: same seed, same trials as stock NSGA-II."""
    from search._loop import optimize_batches

    params = []
    for cls in (optuna.samplers.NSGAIISampler, _NSGAII):
        sampler = cls(population_size=20, seed=7)
        study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=sampler)
        optimize_batches(study, SPACE, toy_objectives(), [Budget("latency:a", 4.0)], 200, 20)
        params.append([t.params for t in study.trials])
        gens = [t.system_attrs[optuna.samplers.NSGAIISampler._GENERATION_KEY] for t in study.trials]
        assert gens == sorted(gens) and max(gens) == 9
    assert params[0] == params[1]


def test_nsga2_finds_the_true_front_of_the_toy_space():
    budget = 4.0
    study = run_search(SPACE, toy_objectives(), 2000, budgets=[Budget("latency:a", budget)], seed=0, progress=False)
    fronts = device_fronts(Trials.from_study(study), SPACE)
    for dev, lat, b in (("a", toy_latency_a, budget), ("b", toy_latency_b, None)):
        q, c, ok = true_hypervolume(lat)
        feasible = toy_latency_a(ALL_ARCHS) <= budget
        ref = fronts[dev].reference
        best = hypervolume_2d(np.where(feasible, q, -np.inf), c, *ref)
        assert fronts[dev].hypervolume / best > 0.97, dev


@pytest.mark.parametrize("sampler", ["nsga3", "tpe", "gp", "random"])
def test_every_sampler_runs_with_budgets(sampler):
    n = 11 if sampler == "gp" else 40
    study = run_search(SPACE, toy_objectives(), n, budgets=[Budget("latency:a", 4.0)], sampler=sampler, seed=0,
                       progress=False)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == n and all("latency:a" in t.constraints for t in done)


def test_a_sampler_instance_is_used_as_it_is():
    """Any Optuna sampler, configured by the caller (here stock NSGA-II with a population of 10)."""
    sampler = optuna.samplers.NSGAIISampler(population_size=10, seed=0)
    study = run_search(SPACE, toy_objectives(), 30, budgets=[Budget("latency:a", 4.0)], sampler=sampler,
                       progress=False)
    assert study.sampler is sampler and len(study.get_trials(states=(TrialState.COMPLETE,))) == 30
    gens = {t.system_attrs[optuna.samplers.NSGAIISampler._GENERATION_KEY] for t in study.trials}
    assert gens == {0, 1, 2}  # its own population size, not the default 100
    with pytest.raises(SearchError, match="population size 20 was given with a sampler instance"):
        run_search(SPACE, toy_objectives(), 10, sampler=sampler, population_size=20, progress=False)
    with pytest.raises(SearchError, match="unknown sampler 42: expected one of .* or an Optuna sampler instance"):
        run_search(SPACE, toy_objectives(), 10, sampler=42, progress=False)


def test_resume_continues_the_same_study(tmp_path):
    storage = str(tmp_path / "s.journal")
    first = run_search(SPACE, toy_objectives(), 60, storage=storage, study_name="r", seed=0, population_size=20,
                       progress=False)
    before = [t.params for t in first.trials]
    again = run_search(SPACE, toy_objectives(), 100, storage=storage, study_name="r", seed=0, population_size=20,
                       progress=False)
    assert len(again.get_trials(states=(TrialState.COMPLETE,))) == 100
    assert [t.params for t in again.trials[:60]] == before
    with pytest.raises(SearchError, match="was run with objectives .* pass a new --study name"):
        run_search(SPACE, toy_objectives()[:2], 120, storage=storage, study_name="r", progress=False)
    with pytest.raises(SearchError, match="was run with budgets"):
        run_search(SPACE, toy_objectives(), 120, storage=storage, study_name="r", budgets=[Budget("latency:a", 3.0)],
                   progress=False)


@pytest.mark.parametrize("name", ["s.db", "s.journal"])
def test_ctrl_c_leaves_a_resumable_storage(tmp_path, name):
    calls = {"n": 0}

    def interrupting(archs):
        calls["n"] += 1
        if calls["n"] == 4:  # the 1st call is the preflight (trial 0); interrupt the 3rd batch
            raise KeyboardInterrupt
        return toy_latency_a(archs)

    objs = toy_objectives()[:1] + [Objective("latency:a", "minimize", interrupting, device="a")]
    storage = str(tmp_path / name)
    with pytest.raises(KeyboardInterrupt):
        run_search(SPACE, objs, 24, storage=storage, study_name="c", batch_size=6, progress=False)
    study = optuna.load_study(study_name="c", storage=open_storage(storage))
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 13 and states.count(TrialState.RUNNING) == 0
    run_search(SPACE, toy_objectives()[:2], 24, storage=storage, study_name="c", batch_size=6, progress=False)
    study = optuna.load_study(study_name="c", storage=open_storage(storage))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 24


class Gate:
    """Latency of device a that holds its first batch (not the one-arch preflight) until ``go``."""

    def __init__(self, latency=None):
        self.started, self.go, self.latency = threading.Event(), threading.Event(), latency or toy_latency_a

    def __call__(self, archs):
        if len(archs) > 1:
            self.started.set()
            self.go.wait(60)
        return self.latency(archs)


def second_driver_is_refused(space, objectives, storage, needle):
    """A driver runs (held in its first batch) while a second one starts on the same study: the
    second is refused in one line naming ``needle``, the first ends with its exact total and no
    trial failed; another study of the same storage is not held."""
    gate = Gate(objectives[1].score)
    first_objs = [objectives[0], Objective(objectives[1].name, "minimize", gate, device="a")]
    result = {}
    first = threading.Thread(target=lambda: result.update(study=run_search(
        space, first_objs, 20, storage=storage, study_name="held", batch_size=5, seed=0, progress=False)))
    first.start()
    try:
        assert gate.started.wait(60)
        with pytest.raises(SearchError) as e:
            run_search(space, objectives, 20, storage=storage, study_name="held", progress=False)
        assert str(e.value).startswith("study 'held' in storage ") and "\n" not in str(e.value)
        assert needle in str(e.value) and "is in use by another hwnas search" in str(e.value)
        run_search(space, objectives, 5, storage=storage, study_name="other", progress=False)
    finally:
        gate.go.set()
        first.join(120)
    states = [t.state for t in result["study"].trials]
    assert states.count(TrialState.COMPLETE) == 20 and TrialState.FAIL not in states
    run_search(space, objectives, 25, storage=storage, study_name="held", seed=0, progress=False)  # free again


@pytest.mark.parametrize("name", ["s.journal", "s.db"])
def test_a_second_driver_on_a_study_in_use_is_refused(tmp_path, name):
    second_driver_is_refused(SPACE, toy_objectives()[:2], str(tmp_path / name), f"(pid {os.getpid()} on ")


def test_buffered_journal_writes_in_batches_and_reads_its_own_writes(tmp_path):
    from optuna.storages.journal import JournalFileBackend

    from search._storage import BufferedJournalFileBackend

    path = str(tmp_path / "b.journal")
    buffered = BufferedJournalFileBackend(path, flush_s=3600)
    buffered.append_logs([{"op": i} for i in range(3)])
    assert [l["op"] for l in buffered.read_logs(0)] == [0, 1, 2] and [l["op"] for l in buffered.read_logs(2)] == [2]
    assert list(JournalFileBackend(path).read_logs(0)) == []  # nothing on disk before a flush
    buffered.flush()
    buffered.append_logs([{"op": 3}])
    assert [l["op"] for l in JournalFileBackend(path).read_logs(0)] == [0, 1, 2]
    assert [l["op"] for l in buffered.read_logs(1)] == [1, 2, 3]  # file part, then buffered part
    buffered.flush()
    reopened = BufferedJournalFileBackend(path)
    reopened.append_logs([{"op": 4}])
    assert [l["op"] for l in reopened.read_logs(3)] == [3, 4]
    # the search loop flushes when it ends: every trial is on disk for another process
    storage = str(tmp_path / "s.journal")
    run_search(SPACE, toy_objectives(), 30, storage=storage, study_name="b", progress=False)
    study = optuna.load_study(study_name="b", storage=open_storage(storage))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 30


def test_a_killed_run_is_recovered_on_resume(tmp_path):
    """RUNNING trials of a killed (not interrupted) run are failed at start-up; the total stays exact."""
    storage = str(tmp_path / "s.journal")
    run_search(SPACE, toy_objectives(), 20, storage=storage, study_name="k", progress=False)
    study = optuna.load_study(study_name="k", storage=open_storage(storage))
    for _ in range(3):
        study.ask()  # as if a process died holding them
    run_search(SPACE, toy_objectives(), 30, storage=storage, study_name="k", progress=False)
    states = [t.state for t in optuna.load_study(study_name="k", storage=open_storage(storage)).trials]
    assert states.count(TrialState.COMPLETE) == 30 and states.count(TrialState.FAIL) == 3


def test_non_finite_values_fail_the_trial_not_the_run():
    def sometimes_nan(archs):
        v = toy_latency_a(archs)
        return np.where(np.asarray([a[0] for a in archs]) == 4, np.nan, v)

    objs = toy_objectives()[:1] + [Objective("latency:a", "minimize", sometimes_nan, device="a")]
    study = run_search(SPACE, objs, 80, sampler="random", seed=0, progress=False)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 80 and failed
    assert "non-finite" in failed[0].user_attrs["hwnas:error"]


# ---- verification and outputs ----------------------------------------------------------------

def test_verification_recomputes_the_front_on_measured_values(tmp_path):
    study = run_search(SPACE, toy_objectives(), 400, budgets=[Budget("latency:a", 4.0)], seed=0, progress=False)
    trials = Trials.from_study(study)
    fronts = device_fronts(trials, SPACE)
    # "measured" latency on a: 20% slower than the table; measured accuracy: lower for gene 0 = 4
    slow = Objective("latency:a", "minimize", lambda archs: toy_latency_a(archs) * 1.2, device="a", measured=True)
    real_acc = Objective("accuracy", "maximize",
                         lambda archs: toy_accuracy(archs) - 0.05 * (np.asarray([a[0] for a in archs]) == 4), measured=True)
    verify_fronts(fronts, measure={"a": slow}, evaluate=real_acc, max_candidates=8)
    fa, fb = fronts["a"], fronts["b"]
    measured = [p for p in fa.points if p.measured]
    assert len(measured) == min(8, len(fa.points))
    for p in measured:
        assert p.measured["latency:a"] == pytest.approx(1.2 * p.predicted["latency:a"])
    on = [fa.points[i] for i in fa.measured_front]
    assert on and all(p.measured["latency:a"] <= 4.0 for p in on)  # budget re-checked on measured latency
    q = np.asarray([p.value("accuracy") for p in on])
    c = np.asarray([p.value("latency:a") for p in on])
    assert len(pareto_front_2d(q, c)) == len(on)
    assert any("not reachable" in n for n in fb.notes)
    assert all("latency:b" not in p.measured for p in fb.points)
    assert any("accuracy" in p.measured for p in fb.points)

    files = write_report(tmp_path, trials, fronts, {"sampler": "nsga2", "trials": 400})
    names = sorted(f.name for f in files)
    assert names == ["front_a.png", "front_b.png", "hypervolume.png", "pareto_a.json", "pareto_b.json", "summary.md"]
    for f in files:
        if f.suffix == ".png":
            assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((tmp_path / "pareto_a.json").read_text())
    assert doc["format"] == "hwnas-pareto" and doc["budget"] == 4.0 and doc["run"]["trials"] == 400
    row = next(r for r in doc["front"] if "measured" in r["latency_ms"])
    assert set(row["latency_ms"]) == {"predicted", "measured"} and set(row["accuracy"]) == {"predicted", "measured"}
    assert row["flops"] == sum(SPACE.from_params({f"g{i}": v for i, v in enumerate(eval(row["arch"]))})) * 1e6
    assert doc["measured_front"] and doc["hypervolume"]["history"][-1][1] == pytest.approx(doc["hypervolume"]["value"])
    summary = (tmp_path / "summary.md").read_text()
    assert "## a (budget 4)" in summary and "front_a.png" in summary
    table = format_fronts(fronts)
    assert "== a:" in table and "not reachable" in table and " / " in table


# ---- Ray: workers sharing a storage, device tasks, a killed worker ----------------------------

@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    from search._ray import init_ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    init_ray(num_cpus=2, local_devices=["a"])
    yield ray
    ray.shutdown()


def pid_latency(archs):
    """Latency of device a, plus the process that computed it (in the values' fractional digits)."""
    return toy_latency_a(archs) + (os.getpid() % 1000) * 1e-9


def test_ray_workers_share_a_journal_with_an_exact_total(ray_instance, tmp_path):
    storage = str(tmp_path / "s.journal")
    study = run_search(SPACE, toy_objectives(), 75, storage=storage, workers=2, batch_size=10, seed=0,
                       progress=False)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 75 and states.count(TrialState.RUNNING) == 0
    surplus = [t for t in study.trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs.get("hwnas:surplus") for t in surplus)


class LoggedAccuracy:
    """The toy accuracy as a slow measurement that logs every arch it measures to a file (Ray
    workers are other processes), one line each."""

    def __init__(self, path, delay=0.02):
        self.path, self.delay = str(path), delay

    def __call__(self, archs):
        time.sleep(self.delay * len(archs))
        with open(self.path, "a") as f:
            f.writelines(f"{a}\n" for a in archs)
        return toy_accuracy(archs)


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_ray_workers_share_max_evaluations(ray_instance, tmp_path, kind):
    """Workers sharing an evaluation budget: together exactly max_evaluations distinct archs
    measured, none twice (claimed under the study's evaluation lock), on resume too."""
    from search._loop import CLAIM_ATTR, evaluation_count

    log = tmp_path / "measured.txt"
    objs = [Objective("accuracy", "maximize", LoggedAccuracy(log), measured=True)] + toy_objectives()[1:]
    storage = str(tmp_path / "s.journal") if kind == "journal" else f"sqlite:///{tmp_path / 's.db'}"
    study = run_search(SPACE, objs, max_evaluations=36, storage=storage, study_name="e", workers=2, batch_size=6,
                       seed=0, progress=False)
    measured = log.read_text().splitlines()
    assert len(measured) == len(set(measured)) == 36 == evaluation_count(study)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    claimed = [t for t in study.trials if t.user_attrs.get(CLAIM_ATTR)]
    assert len({str(SPACE.from_params(t.params)) for t in claimed}) == len(claimed) == 36 - 1  # all but the pre-flight's
    study = run_search(SPACE, objs, max_evaluations=50, storage=storage, study_name="e", workers=2, batch_size=6,
                       seed=0, progress=False)
    measured = log.read_text().splitlines()
    assert len(measured) == len(set(measured)) == 50 == evaluation_count(study)


def test_device_objectives_run_as_ray_tasks_on_the_device_node(ray_instance, tmp_path):
    from search._ray import cluster_devices

    assert "a" in cluster_devices()
    on_device = Objective("latency:a", "minimize", pid_latency, device="a", measured=True, resources={"device:a": 1})
    study = run_search(SPACE, [toy_objectives()[0], on_device], 40, storage=str(tmp_path / "s.journal"),
                       workers=2, batch_size=10, seed=0, progress=False)
    pids = {round((t.values[1] - toy_latency_a([SPACE.from_params(t.params)])[0]) * 1e9) for t in study.trials
            if t.state == TrialState.COMPLETE}
    assert pids and os.getpid() % 1000 not in pids  # measured in Ray task processes, not here


class DiesOnce:
    """Latency of device a (``latency``) that kills its (Ray worker) process the first time it runs there."""

    def __init__(self, marker, driver_pid, latency=None):
        self.marker, self.driver_pid, self.latency = str(marker), driver_pid, latency or toy_latency_a

    def __call__(self, archs):
        if os.getpid() != self.driver_pid and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)  # abrupt: no exception handler runs, the trials stay RUNNING
        return self.latency(archs)


def test_a_killed_worker_loses_no_trial(ray_instance, tmp_path):
    """RDB + heartbeat: the dead worker's trials are failed as stale, retried, and the run
    finishes with exactly the requested number of completed trials."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    marker = tmp_path / "died"
    objs = [toy_objectives()[0], Objective("latency:a", "minimize", DiesOnce(marker, os.getpid()), device="a")]
    study = run_search(SPACE, objs, 30, storage=f"sqlite:///{tmp_path / 's.db'}", workers=2, batch_size=5, seed=0,
                       progress=False, heartbeat_interval=1, grace_period=2)
    states = [t.state for t in study.trials]
    assert marker.exists()  # a worker did die
    assert states.count(TrialState.COMPLETE) == 30 and states.count(TrialState.RUNNING) == 0
    copies = {}  # original trial number -> its re-queued copies
    for t in study.trials:
        if "failed_trial" in t.system_attrs:
            copies.setdefault(t.system_attrs["failed_trial"], []).append(t)
    assert copies
    # dead trials are redone (a copy completes) unless the total was reached first, which fails the copy as a
    # surplus; a loaded machine can also find a slow live worker's copy stale, which is then retried in turn (a
    # later copy names it in its retry history); no copy is left waiting or unexplained
    assert any(t.state == TrialState.COMPLETE for same in copies.values() for t in same)
    retried = {n for t in study.trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    for same in copies.values():
        assert all(t.state == TrialState.COMPLETE or t.state == TrialState.FAIL and
                   (t.user_attrs.get(DUPLICATE_ATTR) or t.user_attrs.get(SURPLUS_ATTR) or t.number in retried)
                   for t in same)


class HangsInWorkers:
    """Latency of device a that never returns in a Ray worker (a wedged device driver, say)."""

    def __init__(self, driver_pid):
        self.driver_pid = driver_pid

    def __call__(self, archs):
        while os.getpid() != self.driver_pid:
            time.sleep(0.1)  # short sleeps: Ray's cancel interrupts between them
        return toy_latency_a(archs)


def test_a_search_that_makes_no_progress_stops_after_the_stall_timeout(ray_instance, tmp_path):
    objs = [toy_objectives()[0], Objective("latency:a", "minimize", HangsInWorkers(os.getpid()), device="a")]
    start = time.monotonic()
    # 1 completed: the pre-flight check, scored by the driver, is the first trial
    with pytest.raises(SearchError, match=r"search stalled: study 'stuck' made no progress for 3 s \([01] of 20 trials "
                                          r"completed, \d+ running, 0 waiting\); its workers were stopped") as e:
        run_search(SPACE, objs, 20, storage=str(tmp_path / "s.journal"), study_name="stuck", workers=2, batch_size=5,
                   progress=False, stall_timeout=3)
    assert "\n" not in str(e.value) and time.monotonic() - start < 60
    with pytest.raises(SearchError, match="stall timeout 0 is invalid: expected a positive number of seconds"):
        run_search(SPACE, objs, 20, stall_timeout=0)


def always_dies_in_workers(archs):
    if os.environ.get("HWNAS_TEST_DRIVER") != str(os.getpid()):
        os._exit(1)  # every worker process, every retry
    return toy_latency_a(archs)


def test_workers_lost_beyond_rays_retries_end_in_one_line(ray_instance, tmp_path, monkeypatch):
    monkeypatch.setenv("HWNAS_TEST_DRIVER", str(os.getpid()))  # Ray workers start with the driver's environment
    objs = [toy_objectives()[0], Objective("latency:a", "minimize", always_dies_in_workers, device="a")]
    with pytest.raises(SearchError, match=r"search workers of study 'lost' were lost \(\w+: .*\) after 2 retries "
                                          r"each: re-run to resume") as e:
        run_search(SPACE, objs, 20, storage=str(tmp_path / "s.journal"), study_name="lost", workers=2, batch_size=5,
                   progress=False)
    assert "\n" not in str(e.value)


def test_a_trial_told_by_another_worker_is_skipped_not_counted(tmp_path):
    """Two workers can pop the same re-queued trial from SQLite; the second to finish must
    neither crash ("Cannot tell a COMPLETE trial") nor count it again."""
    from search._loop import _tell_batch

    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    other = optuna.load_study(study_name=study.study_name, storage=storage)
    mine, fresh = study.ask(), study.ask()
    other.tell(mine.number, [0.5, 1.0])  # the other worker was faster
    values = np.array([[0.9, 2.0], [0.7, 3.0]])
    done = _tell_batch(study, [mine, fresh], values, np.zeros((2, 0)), toy_objectives(), [])
    assert done == 1
    trials = {t.number: t for t in study.get_trials()}
    assert trials[mine.number].values == [0.5, 1.0]  # the first tell stands
    assert trials[fresh.number].state == TrialState.COMPLETE and trials[fresh.number].values == [0.7, 3.0]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_dead_workers_trial_requeued_twice_runs_once(tmp_path):
    """Two workers can both fail the same stale trial (SQLite cannot lock the row) and each
    re-queue a copy: the extra WAITING copy is failed as a duplicate, keeping the lowest, or a
    copy that already runs."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    from search._loop import _fail_stale_once

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", directions=["maximize", "minimize"])
    dead = [study.ask({"g0": optuna.distributions.CategoricalDistribution([0, 1])}) for _ in range(2)]
    retry = RetryHeartbeatStaleTrialCallback()
    for t in dead:
        study.tell(t, state=TrialState.FAIL)
        for _ in range(2):  # two workers each re-queue it
            retry(study, study._storage.get_trial(t._trial_id))
    running = study.ask()  # the lowest copy of dead[0] is already being scored by a worker
    _fail_stale_once(study)
    by_origin = {}
    for t in study.get_trials():
        if "failed_trial" in t.system_attrs:
            by_origin.setdefault(t.system_attrs["failed_trial"], []).append(t)
    first, second = (sorted(by_origin[t.number], key=lambda t: t.number) for t in dead)
    assert running.number == first[0].number and first[0].state == TrialState.RUNNING
    assert first[1].state == TrialState.FAIL and first[1].user_attrs[DUPLICATE_ATTR]
    assert second[0].state == TrialState.WAITING and DUPLICATE_ATTR not in second[0].user_attrs
    assert second[1].state == TrialState.FAIL and second[1].user_attrs[DUPLICATE_ATTR]
    _fail_stale_once(study)  # idempotent
    assert [t.state for t in study.get_trials()].count(TrialState.WAITING) == 1


# ---- the command line, on the cifar space with stand-in tables and a fitted predictor ---------

TINY_SPACE = {
    "name": "tiny", "in_channels": 3, "num_classes": 10, "resolutions": [8],
    "stem": {"channels": 8, "kernel": 3, "stride": 1},
    "defaults": {"widths": [0.5, 1.0], "blocks": ["mbconv", "resnet"], "kernels": [3],
                 "expansions": {"mbconv": [2], "resnet": [1]}},
    "stages": [{"channels": 16, "stride": 2, "depths": [1, 2]}],
}


def stand_in_table(space, device, path, ms_per_mflop, remote=False):
    """A complete latency table whose block latencies come from FLOPs (not measured): enough
    for the CLI's plumbing; ``remote`` gives it another machine's fingerprint."""
    from latency_tables import Calibration, LatencyTable, TimingStats, make_backend

    table = LatencyTable.new(space, make_backend("onnxruntime", batch_size=1, threads=1), device)
    for spec in space.unique_block_specs():
        ms = 0.005 + spec.flops() / 1e6 * ms_per_mflop.get(spec.block, 0.002)
        table.data["blocks"][spec.key] = TimingStats(ms, 1.1 * ms, 0.1, 10, ms).to_json()
    table.calibration = Calibration()
    if remote:
        table.data["fingerprint"]["cpu_model"] = "some other machine"
    return table.save(path)


def stand_in_predictor(space, path):
    from predictors import make_predictor

    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(60)]
    flops = np.log([space.flops(a) for a in archs])
    acc = 0.6 + 0.3 * (flops - flops.min()) / np.ptp(flops)
    make_predictor("gp", space).fit(space.encode_many(archs), acc).save(path)
    return path


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    from search_space import SearchSpace

    d = tmp_path_factory.mktemp("cli")
    cifar, tiny = SearchSpace.from_config("cifar"), SearchSpace.from_config(TINY_SPACE)
    return {
        "cpu": stand_in_table(cifar, "cpu", d / "cpu.json", {"mbconv": 0.004, "pconv": 0.003}),
        "gpu": stand_in_table(cifar, "gpu", d / "gpu.json", {"mbconv": 0.002, "resnet": 0.0005}, remote=True),
        "tiny_table": stand_in_table(tiny, "cpu", d / "tiny.json", {}),
        "predictor": stand_in_predictor(cifar, d / "pred.pt"),
        "tiny_predictor": stand_in_predictor(tiny, d / "tiny_pred.pt"),
    }


def run_cli(argv, capsys):
    from hwnas.cli import main

    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_help(capsys):
    from hwnas.cli import main

    with pytest.raises(SystemExit) as e:
        main(["search", "--help"])
    assert e.value.code == 0 and "--budget DEVICE=LIMIT" in capsys.readouterr().out


def test_cli_searches_verifies_and_writes_fronts(cli_files, tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, err = run_cli(["search", "--predictor", str(cli_files["predictor"]), "--table", f"cpu={cli_files['cpu']}",
                               "--table", f"gpu={cli_files['gpu']}", "--budget", "cpu=3ms", "--trials", "200",
                               "--population", "40", "--verify-top", "2", "--out", str(out), "--quiet"], capsys)
    assert rc == 0, err
    assert "== cpu:" in stdout and "== gpu:" in stdout and "not reachable" in stdout
    doc = json.loads((out / "pareto_cpu.json").read_text())
    assert doc["budget"] == 3.0 and doc["run"]["trials"] == 200
    measured = [r for r in doc["front"] if "measured" in r["latency_ms"]]
    assert len(measured) == 2 and all(r["latency_ms"]["measured"] > 0 for r in measured)  # measured with ORT here
    gpu = json.loads((out / "pareto_gpu.json").read_text())
    assert all("measured" not in r["latency_ms"] for r in gpu["front"]) and gpu["front"]
    for name in ("front_cpu.png", "front_gpu.png", "hypervolume.png", "summary.md"):
        assert (out / name).stat().st_size > 0


@pytest.mark.parametrize("change,needle", [
    ({"--budget": "cpu=fast"}, "invalid budget 'cpu=fast'"),
    ({"--budget": "h100=2ms"}, "names device 'h100', which has no latency table: expected one of ['cpu']"),
    ({"--table": "x y=z.json"}, "device name 'x y' is invalid"),
    ({"--trials": "0"}, "--trials 0 is invalid"),
    ({"--storage": "s.txt"}, "storage 's.txt' is not recognised"),
    ({"--table": "tiny_table"}, "was built for space 'tiny'"),
    ({"--predictor": "tiny_predictor"}, "space 'tiny'"),
])
def test_cli_rejects_bad_input_before_any_work(cli_files, tmp_path, capsys, change, needle):
    out = tmp_path / "run"
    opts = {"--predictor": str(cli_files["predictor"]), "--table": f"cpu={cli_files['cpu']}", "--trials": "50"}
    opts.update({k: str(cli_files[v]) if v in cli_files else v for k, v in change.items()})
    rc, _, err = run_cli(["search", *[x for kv in opts.items() for x in kv], "--out", str(out), "--quiet"], capsys)
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()  # nothing ran


def test_cli_verifies_accuracy_on_the_supernet(tmp_path, capsys):
    """--checkpoint: the fronts' accuracy is re-evaluated on the supernet (BN recalibrated), as
    'hwnas predictor dataset' measures it, and reported next to the prediction."""
    from search_space import SearchSpace, Supernet, save_supernet

    config = Path(__file__).resolve().parents[1] / "hwnas" / "configs" / "space_digits.yaml"
    space = SearchSpace.from_config(config)
    __import__("torch").manual_seed(0)
    ckpt = save_supernet(tmp_path / "supernet.pt", Supernet(space), meta={"dataset": "digits"})
    table = stand_in_table(space, "cpu", tmp_path / "cpu.json", {})
    pred = stand_in_predictor(space, tmp_path / "pred.pt")
    out = tmp_path / "run"
    rc, stdout, err = run_cli(["search", "--space", str(config), "--predictor", str(pred), "--table", f"cpu={table}",
                               "--trials", "60", "--population", "20", "--verify-top", "2", "--checkpoint", str(ckpt),
                               "--eval-device", "cpu", "--eval-limit", "100", "--out", str(out), "--quiet"], capsys)
    assert rc == 0, err
    doc = json.loads((out / "pareto_cpu.json").read_text())
    verified = [r for r in doc["front"] if "measured" in r["accuracy"]]
    assert len(verified) == min(2, len(doc["front"]))
    assert all(0 <= r["accuracy"]["measured"] <= 1 and "measured" in r["latency_ms"] for r in verified)
    lines = (out / "verified_accuracy.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["dataset"] == "digits" and len(lines) == 1 + len({r["arch"] for r in verified})
    assert doc["measured_front"]


def test_single_process_search_needs_no_ray():
    import subprocess

    code = ("import sys; sys.modules['ray'] = None  # any 'import ray' now fails\n"
            "from search import Objective, run_search\n"
            "class S:\n"
            "    def suggest(self, t): return t.suggest_categorical('g', [0, 1, 2])\n"
            "    def from_params(self, p): return p['g']\n"
            "    def encode_many(self, a): return a\n"
            "objs = [Objective('q', 'maximize', lambda a: [float(x) for x in a]), Objective('c', 'minimize', lambda a: [x * x for x in a])]\n"
            "print(len(run_search(S(), objs, 30, progress=False).trials))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and done.stdout.strip() == "30", done.stderr


# ---- search rounds, sampler sizing ----------------------------------------------------------

class CountingAccuracy:
    """The toy accuracy as an expensive measurement: counts every arch it is asked to measure."""

    def __init__(self, fn=toy_accuracy):
        self.calls, self.fn = [], fn

    def __call__(self, archs):
        self.calls += list(archs)
        return self.fn(archs)


def small_gbt(space):
    from predictors import make_predictor

    return make_predictor("gbt", space, members=2, n_estimators=40)


def test_search_rounds_spends_the_budget_on_distinct_archs_and_beats_random():
    from search import search_rounds

    acc = CountingAccuracy()
    measure = [Objective("accuracy", "maximize", acc, measured=True)]
    costs = toy_objectives()[1:]
    known = {(0,) * 6: (float(toy_accuracy([(0,) * 6])[0]),)}
    result = search_rounds(SPACE, measure, costs, 40, seed_size=16, rounds=3, inner_trials=150, predictor=small_gbt,
                           seed=0, known=known)
    assert len(acc.calls) == len(set(acc.calls)) == 40  # each measured once, the known arch never
    assert (0,) * 6 not in acc.calls and (result.round_of == -1).sum() == 1 and len(result) == 41
    assert sorted(set(result.round_of.tolist())) == [-1, 0, 1, 2, 3] and len(result.log) == 4
    fronts = result.fronts(SPACE)
    measured = set(result.archs)
    ours, rand = [], []
    rng = np.random.default_rng(0)
    sample = [ALL_ARCHS[i] for i in rng.choice(len(ALL_ARCHS), 40, replace=False)]
    for device, latency in (("a", toy_latency_a), ("b", toy_latency_b)):
        front = fronts[device]
        assert front.points and all(p.arch in measured and "accuracy" in p.measured for p in front.points)
        q_all, c_all, _ = true_hypervolume(latency)
        ref = (float(q_all.min()), float(c_all.max()))
        true_hv = hypervolume_2d(q_all, c_all, *ref)
        ours.append(hypervolume_2d(toy_accuracy(result.archs), latency(result.archs), *ref) / true_hv)
        rand.append(hypervolume_2d(toy_accuracy(sample), latency(sample), *ref) / true_hv)
    # this toy front is easy for random sampling too (0.81, 0.87): rounds beat it on average, near 0.87 on each
    assert min(ours) > 0.85 and np.mean(ours) > np.mean(rand)
    assert result.records()[0]["round"] == -1 and set(result.records()[1]) >= {"arch", "accuracy", "latency:a"}


def test_search_rounds_rejects_bad_budgets():
    from search import search_rounds

    measure = [Objective("accuracy", "maximize", toy_accuracy, measured=True)]
    with pytest.raises(SearchError, match="seed size 50 is above the query budget 40"):
        search_rounds(SPACE, measure, toy_objectives()[1:], 40, seed_size=50)
    with pytest.raises(SearchError, match="query budget 0 is invalid"):
        search_rounds(SPACE, measure, toy_objectives()[1:], 0)
    with pytest.raises(SearchError, match="no objective to measure"):
        search_rounds(SPACE, [], toy_objectives(), 10)
    with pytest.raises(SearchError, match=r"improve share 1.5 is invalid: expected a number in \[0, 1\]"):
        search_rounds(SPACE, measure, toy_objectives()[1:], 10, improve_share=1.5)
    with pytest.raises(SearchError, match=r"local share -0.1 is invalid: expected a number in \[0, 1\]"):
        search_rounds(SPACE, measure, toy_objectives()[1:], 10, local_share=-0.1)
    with pytest.raises(SearchError, match="improve share 0.6 \\+ local share 0.6 is above 1"):
        search_rounds(SPACE, measure, toy_objectives()[1:], 10, improve_share=0.6, local_share=0.6)


class MutableToySpace(ToySpace):
    """The toy space with ``mutate``: what local search needs."""

    def mutate(self, arch, rng, prob=0.1):
        genes = list(arch)
        for i in range(self.n):
            if rng.random() < prob:
                genes[i] = int(rng.integers(self.k))
        return tuple(genes)


def test_local_mutants_come_from_the_measured_top():
    from search._rounds import _Measured, local_mutants

    space, cache = MutableToySpace(), _Measured(3)
    archs = ALL_ARCHS[::97]
    objectives = [Objective("accuracy", "maximize", toy_accuracy), *toy_objectives()[1:]]
    cache.add(archs, np.column_stack([toy_accuracy(archs), toy_latency_a(archs), toy_latency_b(archs)]), 0)
    top = [archs[i] for i in np.argsort(-toy_accuracy(archs))[:2]]
    mutants = local_mutants(space, cache, objectives, [], np.random.default_rng(0), top=2, per=30, prob=0.2)
    assert len(mutants) == 60
    assert all(min(sum(a != b for a, b in zip(m, t)) for t in top) <= 3 for m in mutants)  # near the top
    assert any(m not in top for m in mutants)
    assert local_mutants(SPACE, cache, objectives, [], np.random.default_rng(0)) == []  # no mutate: no local search


def test_search_rounds_measures_mutants_of_the_top_with_a_local_share(monkeypatch):
    import search._rounds as rounds
    from search import search_rounds

    offered = []

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        offered.append(set(out))
        return out

    real = rounds.local_mutants
    monkeypatch.setattr(rounds, "local_mutants", spy)
    measure = [Objective("accuracy", "maximize", toy_accuracy, measured=True)]
    result = search_rounds(MutableToySpace(), measure, toy_objectives()[1:], 40, seed_size=16, rounds=3,
                           inner_trials=150, predictor=small_gbt, local_share=0.5, seed=0)
    assert len(result) == 40 and len(offered) == 3
    for r, mutants in enumerate(offered, start=1):  # a batch of 8: at least 4 from the mutants of the top
        batch = {a for a, n in zip(result.archs, result.round_of) if n == r}
        assert len(batch & mutants) >= 4


def test_select_by_improvement_fills_the_fronts_gaps_first():
    from search._select import front_improvement, select_by_improvement

    # measured front: (0.5, 1), (0.9, 10); reference (0.5, 10)
    fq, fc = np.array([0.5, 0.9]), np.array([1.0, 10.0])
    gain = front_improvement(np.array([0.8, 0.8, 0.4, 0.95]), np.array([2.0, 9.0, 0.5, 11.0]), fq, fc, 0.5, 10.0)
    assert gain == pytest.approx([8 * 0.3, 1 * 0.3, 0.0, 0.0])  # the last is beyond the reference cost
    q = np.array([0.5, 0.9, 0.8, 0.79, 0.6, 0.4])
    c = np.array([1.0, 10.0, 2.0, 2.1, 1.5, 0.5])
    measured = np.array([True, True, False, False, False, False])
    # the second pick is believed at 0.7, below its hope: the believed front makes 0.79 @ 2.1 add little
    believed = np.array([0.5, 0.9, 0.7, 0.7, 0.6, 0.4])
    picked = select_by_improvement(q, believed, c[:, None], measured, 4)
    assert picked[0] == 2 and 5 not in picked and len(picked) == 3


def test_expected_improvement_counts_dominated_hopes_and_picks_where_the_front_gains_most():
    from search._select import expected_front_improvement, front_improvement, select_by_expected_improvement

    fq, fc = np.array([0.5, 0.9]), np.array([1.0, 10.0])
    q, c = np.array([0.8, 0.8, 0.4, 0.95]), np.array([2.0, 9.0, 0.5, 11.0])
    exact = front_improvement(q, c, fq, fc, 0.5, 10.0)
    assert expected_front_improvement(q, np.zeros(4), c, fq, fc, 0.5, 10.0) == pytest.approx(exact)
    # uncertain: a dominated point may still improve the front, the more so the more uncertain
    low = expected_front_improvement(np.array([0.45, 0.45]), np.array([0.01, 0.1]), np.array([2.0, 2.0]), fq, fc, 0.5, 10.0)
    assert 0 < low[0] < low[1]
    # the front (0.5 @ 1, 0.9 @ 10) has its widest gap just after 1 ms: the first pick goes there;
    # believed at its mean, it leaves little to a slightly worse point beside it, so the next goes
    # to the gap's other end; a point past the largest measured cost adds nothing
    mean = np.array([0.5, 0.9, 0.7, 0.65, 0.7, 0.6])
    cost = np.array([1.0, 10.0, 1.5, 1.6, 8.0, 11.0])
    measured = np.array([True, True, False, False, False, False])
    picked = select_by_expected_improvement(mean, np.full(6, 0.02), cost[:, None], measured, 3)
    assert picked[0] == 2 and picked[1] == 4 and 5 not in picked


def test_search_rounds_picks_by_expected_improvement():
    from search import search_rounds

    acc = CountingAccuracy()
    measure = [Objective("accuracy", "maximize", acc, measured=True)]
    costs = toy_objectives()[1:]
    result = search_rounds(SPACE, measure, costs, 40, seed_size=16, rounds=3, inner_trials=150, predictor=small_gbt,
                           seed=0, pick="ehvi")
    assert len(acc.calls) == len(set(acc.calls)) == 40
    rmse = [r["prediction_rmse"][0] for r in result.log[1:]]
    assert len(rmse) == 3 and all(0 < x < 0.5 for x in rmse)  # cross-validated first, then the batches' own errors
    ours = []
    for latency in (toy_latency_a, toy_latency_b):
        q_all, c_all, _ = true_hypervolume(latency)
        ref = (float(q_all.min()), float(c_all.max()))
        ours.append(hypervolume_2d(toy_accuracy(result.archs), latency(result.archs), *ref)
                    / hypervolume_2d(q_all, c_all, *ref))
    assert min(ours) > 0.85
    with pytest.raises(SearchError, match=r"unknown batch pick 'best': expected one of \['layers', 'ehvi'\]"):
        search_rounds(SPACE, measure, costs, 10, pick="best")


def test_bootstrap_gbt_members_disagree_where_data_is_thin():
    from predictors import make_predictor

    rng = np.random.default_rng(0)
    X = SPACE.encode_many([tuple(rng.integers(0, 5, 6)) for _ in range(60)])
    y = toy_accuracy([tuple(x) for x in X.astype(int)])
    plain = make_predictor("gbt", SPACE, members=3, n_estimators=40).fit(X, y)
    boot = make_predictor("gbt", SPACE, members=3, n_estimators=40, bootstrap=True).fit(X, y)
    assert boot.predict(X)[1].mean() > 3 * plain.predict(X)[1].mean()


def test_select_batch_walks_layers_and_spreads_along_each_device():
    from search import pareto_layers_2d, select_batch

    q = np.array([0.9, 0.8, 0.7, 0.6, 0.85, 0.75, 0.5])
    c = np.array([5.0, 4.0, 3.0, 2.0, 5.5, 4.5, 1.0])
    layers = pareto_layers_2d(q, c)
    assert [sorted(l.tolist()) for l in layers] == [[0, 1, 2, 3, 6], [4, 5]]
    measured = np.array([True, False, False, False, False, False, True])
    picked = select_batch(q, c[:, None], measured, 2)
    assert picked == [3, 1]  # spread over the unmeasured front points {1, 2, 3}: both ends
    both = select_batch(q, np.stack([c, -c], 1), measured, 4)  # the second device ranks costs the other way
    assert len(set(both)) == 4 and not measured[both].any()


def test_samplers_are_sized_to_the_budget_and_can_be_passed_in():
    from search._samplers import budget_population

    assert [budget_population(n) for n in (None, 50, 200, 500, 5000)] == [100, 10, 20, 50, 100]
    objs = toy_objectives()
    study = run_search(SPACE, objs, 60, seed=0, progress=False)
    assert study.sampler.population_size == 10 and study.user_attrs["hwnas:population"] == 10
    own = optuna.samplers.RandomSampler(seed=1)
    assert run_search(SPACE, objs, 20, sampler=own, progress=False).sampler is own
    with pytest.raises(SearchError, match="mutation probability 2"):
        make_sampler("nsga2", mutation_prob=2)


def test_resumed_study_keeps_its_population(tmp_path):
    storage = str(tmp_path / "s.journal")
    run_search(SPACE, toy_objectives(), 120, storage=storage, seed=0, progress=False)  # population 12
    study = run_search(SPACE, toy_objectives(), 400, storage=storage, seed=0, progress=False)
    assert study.sampler.population_size == 12


def test_preflight_spends_no_measurement():
    acc = CountingAccuracy()
    objs = [Objective("accuracy", "maximize", acc, measured=True, cache=True)] + toy_objectives()[1:]
    run_search(SPACE, objs, 30, seed=0, progress=False)
    assert len(acc.calls) == len(set(acc.calls)) <= 30  # no pre-flight arch, no arch measured twice


def test_cli_search_in_rounds_measures_on_the_supernet(tmp_path, capsys):
    """--rounds: accuracy measured on the supernet in rounds; every measured subnet reported,
    the fronts made of them."""
    from search_space import SearchSpace, Supernet, save_supernet

    config = Path(__file__).resolve().parents[1] / "hwnas" / "configs" / "space_digits.yaml"
    space = SearchSpace.from_config(config)
    __import__("torch").manual_seed(0)
    ckpt = save_supernet(tmp_path / "supernet.pt", Supernet(space), meta={"dataset": "digits"})
    table = stand_in_table(space, "cpu", tmp_path / "cpu.json", {})
    out = tmp_path / "run"
    argv = ["search", "--space", str(config), "--table", f"cpu={table}", "--rounds", "2", "--queries", "7",
            "--seed-size", "4", "--trials", "60", "--model", "gp", "--checkpoint", str(ckpt), "--eval-device", "cpu",
            "--eval-limit", "50", "--calib-batches", "1", "--calib-batch-size", "32", "--no-verify", "--out", str(out), "--quiet"]
    rc, stdout, err = run_cli(argv, capsys)
    assert rc == 0, err
    doc = json.loads((out / "measured.json").read_text())
    archs = {p["arch"] for p in doc["points"]}
    assert len(doc["points"]) == len(archs) == 7 and [r["round"] for r in doc["log"]] == [0, 1, 2]
    front = json.loads((out / "pareto_cpu.json").read_text())["front"]
    assert front and all(r["arch"] in archs and "measured" in r["accuracy"] for r in front)
    lines = (out / "measured_accuracy.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 7
    rc, _, err = run_cli(["search", "--space", str(config), "--table", f"cpu={table}", "--rounds", "2",
                          "--predictor", "p.pt", "--checkpoint", str(ckpt), "--queries", "5", "--out", str(out)], capsys)
    assert rc == 2 and "--predictor and --rounds exclude each other" in err
    rc, _, err = run_cli(["search", "--table", f"cpu={table}", "--trials", "5", "--out", str(out)], capsys)
    assert rc == 2 and "--predictor is missing" in err


def test_readme_bring_your_own_space_example_runs(capsys):
    """The README's worked example of a user-defined space and objectives runs as written."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Bring your own space and objectives", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result, fronts = namespace["result"], namespace["fronts"]
    assert len(result) == 40 and (16,) * 4 in result.archs and (128,) * 4 in result.archs  # the extremes are seeded
    measured = set(result.archs)
    assert fronts["params"].points and all(p.arch in measured for p in fronts["params"].points)
    assert "40 architectures measured" in capsys.readouterr().out


def test_an_arch_failed_by_one_objective_is_not_scored_by_the_next():
    from search import score_batch

    acc = CountingAccuracy()
    first = Objective("q", "maximize", lambda archs: [np.nan if a[0] == 0 else 1.0 for a in archs])
    values = score_batch([first, Objective("accuracy", "maximize", acc, measured=True)], [(0,) * 6, (1,) * 6])
    assert acc.calls == [(1,) * 6] and np.isnan(values[0]).all() and np.isfinite(values[1]).all()



def test_each_distinct_arch_is_evaluated_once_and_the_sampler_told_from_the_cache(tmp_path):
    """A GA re-proposes archs: they are answered from the cache (marked), not scored again; a
    resumed study rebuilds the cache from the storage and spends no extra evaluation."""
    from search._loop import CACHED_ATTR, evaluation_count

    small = ToySpace(n=3, k=3)  # 27 archs
    acc = CountingAccuracy(lambda a: small.encode_many(a) @ [0.3, 0.2, 0.1])
    objs = [Objective("accuracy", "maximize", acc), Objective("latency:a", "minimize", lambda a: small.encode_many(a).sum(1))]
    storage = str(tmp_path / "s.journal")
    study = run_search(small, objs, 150, seed=0, storage=storage, study_name="c", progress=False)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 150 and len(acc.calls) == len(set(acc.calls)) <= 27  # one call per distinct arch
    assert sum(not t.user_attrs.get(CACHED_ATTR) for t in done) == len(acc.calls) == evaluation_count(study)
    again = CountingAccuracy(acc.fn)
    objs[0] = Objective("accuracy", "maximize", again)
    run_search(small, objs, 200, seed=0, storage=storage, study_name="c", progress=False)
    assert not set(again.calls) & set(acc.calls) and len(again.calls) == len(set(again.calls))


def test_max_evaluations_counts_distinct_archs_and_resumes(tmp_path):
    from search._loop import evaluation_count

    acc = CountingAccuracy()
    objs = [Objective("accuracy", "maximize", acc)] + toy_objectives()[1:]
    storage = str(tmp_path / "s.journal")
    study = run_search(SPACE, objs, max_evaluations=40, seed=0, storage=storage, study_name="e", progress=False)
    assert len(acc.calls) == len(set(acc.calls)) == 40 == evaluation_count(study)
    assert study.sampler.population_size == 10  # sized to the 40 evaluations, not to the trial cap
    acc.calls.clear()
    study = run_search(SPACE, objs, max_evaluations=55, seed=0, storage=storage, study_name="e", progress=False)
    assert len(acc.calls) == len(set(acc.calls)) == 15 and evaluation_count(study) == 55  # no pre-flight query
    # n_trials and max_evaluations together: whichever comes first
    few = run_search(SPACE, objs, 12, max_evaluations=1000, seed=0, progress=False)
    assert len(few.get_trials(states=(TrialState.COMPLETE,))) == 12
    with pytest.raises(SearchError, match="no budget: expected a number of trials"):
        run_search(SPACE, objs, progress=False)
    with pytest.raises(SearchError, match="number of evaluations 0 is invalid"):
        run_search(SPACE, objs, max_evaluations=0, progress=False)


def test_preflight_is_the_first_trial_and_a_nan_stops_the_later_objectives():
    """An expensive objective the user did not mark as measured: the pre-flight arch is the
    study's first trial (no extra call); an arch whose first objective is NaN is not scored
    by the later ones."""
    acc, lat = CountingAccuracy(), CountingAccuracy()

    def nan_for_zero(archs):
        return np.where(np.asarray([a[0] for a in archs]) == 0, np.nan, acc(archs))

    objs = [Objective("accuracy", "maximize", nan_for_zero), Objective("latency:a", "minimize", lat)]
    study = run_search(SPACE, objs, 40, seed=0, progress=False)
    first = study.trials[0]
    assert acc.calls[0] == SPACE.from_params(first.params) and len(acc.calls) == len(set(acc.calls))
    assert any(a[0] == 0 for a in acc.calls) and not any(a[0] == 0 for a in lat.calls)
    assert set(lat.calls) == {a for a in acc.calls if a[0] != 0}

    def broken(archs):
        raise ZeroDivisionError("boom")

    with pytest.raises(SearchError, match=r"objective 'latency:a' fails on \(.*\): ZeroDivisionError: boom"):
        run_search(SPACE, [toy_objectives()[0], Objective("latency:a", "minimize", broken)], 5, seed=0, progress=False)


def test_search_rounds_explores_with_bootstrap_members_and_improvement_picks():
    from search import search_rounds

    acc = CountingAccuracy()
    result = search_rounds(SPACE, [Objective("accuracy", "maximize", acc, measured=True)], toy_objectives()[1:], 16,
                           seed_size=10, rounds=1, inner_trials=30, bootstrap=True, improve_share=0.5, seed=0)
    assert len(acc.calls) == len(set(acc.calls)) == 16 == len(result)
    model = result.predictors["accuracy"]
    assert model.hparams["bootstrap"] and model.predict(SPACE.encode_many(result.archs))[1].mean() > 1e-4
