"""Latency tables: file format, errors, atomic writes, resume, calibration, a real tiny build."""

import json
import os
import time
import warnings

import numpy as np
import pytest

import latency_tables as lt
from hwnas.cli import main
from latency_tables.calibration import Calibration
from latency_tables.timing import time_interleaved
from search_space import SearchSpace, UserError

TINY = {
    "name": "tiny-lat", "in_channels": 3, "num_classes": 4, "resolutions": [8],
    "stem": {"channels": 8, "kernel": 3, "stride": 1},
    "defaults": {"widths": [0.5, 1.0], "blocks": ["mbconv", "resnet"], "kernels": [3],
                 "expansions": {"mbconv": [2], "resnet": [1]}},
    "stages": [{"channels": 16, "stride": 2, "depths": [1, 2]}],
}
# As short as timing can be while still going through every step (warm-up, rounds, stop rule).
FAST = dict(min_rounds=2, max_rounds=3, round_ms=0.3, warmup_ms=1.0, min_runs_per_round=2)


@pytest.fixture(scope="module")
def tiny():
    return SearchSpace.from_config(TINY)


@pytest.fixture(scope="module")
def cifar():
    return SearchSpace.from_config("cifar")


def synthetic_table(space, path=None):
    """A complete table with made-up block times (FLOPs-based), for format and prediction tests."""
    table = lt.LatencyTable.new(space, lt.make_backend("onnxruntime"), "cpu", command="hwnas latency build ...")
    for s in space.unique_block_specs():
        ms = 0.01 + s.flops() * 1e-9
        table.data["blocks"][s.key] = lt.TimingStats(ms * 1.1, ms * 1.3, 0.2, 30, ms).to_json()
    table.calibration = Calibration("per_type+weights", 0.05, {"mbconv": 1.2, "resnet": 0.9}, {"resnet": 0.01}, 0.02)
    if path is not None:
        table.save(path)
    return table


def test_round_trip_and_prediction_consistency(cifar, tmp_path):
    table = synthetic_table(cifar, tmp_path / "t.json")
    loaded = lt.LatencyTable.load(tmp_path / "t.json", space=cifar)
    assert loaded.data == json.loads(json.dumps(table.data))
    assert (loaded.device, loaded.backend_spec, loaded.batch_size, loaded.dtype) == \
        ("cpu", "onnxruntime:CPUExecutionProvider", 1, "fp32")
    assert loaded.space_fingerprint == cifar.fingerprint and loaded.is_complete
    rng = np.random.default_rng(0)
    archs = [cifar.sample(rng) for _ in range(50)]
    fast = loaded.predict_many(archs)
    slow = [loaded.breakdown(a)["total_ms"] for a in archs]
    np.testing.assert_allclose(fast, slow, rtol=1e-12)
    np.testing.assert_allclose(loaded.predict_many([str(a) for a in archs]), fast)
    bd = loaded.breakdown(archs[0])
    assert [r["key"] for r in bd["blocks"]] == [s.key for s in cifar.block_specs(archs[0])]
    # the space stored in the file rebuilds the same space when none is passed
    assert lt.LatencyTable.load(tmp_path / "t.json").space.fingerprint == cifar.fingerprint


def test_predict_many_is_fast(cifar):
    table = synthetic_table(cifar)
    rng = np.random.default_rng(1)
    archs = [cifar.sample(rng) for _ in range(4000)] * 5  # sampling is slower than predicting
    table.predict_many(archs[:4000])  # fills the slot cache
    best = min(_timed(table.predict_many, archs) for _ in range(3))
    assert len(archs) / best > 20000, f"{len(archs) / best:.0f} archs/s"


def _timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


@pytest.mark.parametrize("content, needle", [
    ('{"format": "hwnas-latency-table", "schema_ver', "corrupt: invalid JSON"),
    ('[1, 2]', "not a hwnas latency table"),
    ('{"format": "something-else"}', "not a hwnas latency table"),
])
def test_corrupt_files_give_one_line_errors(tmp_path, content, needle):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(lt.TableError, match=needle) as e:
        lt.LatencyTable.load(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_wrong_schema_version_and_missing_keys(cifar, tmp_path):
    data = synthetic_table(cifar).data
    p = tmp_path / "t.json"
    p.write_text(json.dumps({**data, "schema_version": 99}))
    with pytest.raises(lt.TableError, match="schema version 99, this hwnas reads version 1"):
        lt.LatencyTable.load(p)
    p.write_text(json.dumps({k: v for k, v in data.items() if k != "blocks"}))
    with pytest.raises(lt.TableError, match="key 'blocks' missing"):
        lt.LatencyTable.load(p)
    p.write_text(json.dumps({**data, "blocks": {"mbconv:x": {"median_ms": 1}}}))
    with pytest.raises(lt.TableError, match="bad statistics for block 'mbconv:x'"):
        lt.LatencyTable.load(p)
    with pytest.raises(lt.TableError, match="cannot read latency table"):
        lt.LatencyTable.load(tmp_path / "absent.json")


def test_missing_block_and_calibration_name_the_fix(cifar, tmp_path):
    table = synthetic_table(cifar)
    arch = cifar.sample(np.random.default_rng(2))
    key = cifar.block_specs(arch)[1].key
    del table.data["blocks"][key]
    table.save(tmp_path / "t.json")
    table = lt.LatencyTable.load(tmp_path / "t.json")
    with pytest.raises(lt.TableError, match=f"block '{key}' is missing.*hwnas latency build"):
        table.predict(arch)
    assert key in table.missing_keys() and not table.is_complete
    table.calibration = None
    with pytest.raises(lt.TableError, match="no calibration yet.*hwnas latency build"):
        table.predict(cifar.smallest())


def test_foreign_space_is_refused(cifar, tiny, tmp_path):
    synthetic_table(cifar, tmp_path / "t.json")
    with pytest.raises(lt.TableError, match="built for space 'cifar'.*not for space 'tiny-lat'"):
        lt.LatencyTable.load(tmp_path / "t.json", space=tiny)


def test_interrupted_write_leaves_old_file(cifar, tmp_path, monkeypatch):
    p = tmp_path / "t.json"
    table = synthetic_table(cifar, p)
    before = p.read_bytes()
    table.data["device"] = "changed"

    def crash(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", crash)  # dies after the new content is written, before the rename
    with pytest.raises(KeyboardInterrupt):
        table.save(p)
    monkeypatch.undo()
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["t.json"]
    assert lt.LatencyTable.load(p).device == "cpu"


def test_fingerprint_mismatch_warns_or_refuses(cifar, tmp_path):
    table = synthetic_table(cifar)
    table.data["fingerprint"]["cpu_model"] = "Some Other CPU"
    table.save(tmp_path / "t.json")
    with pytest.warns(lt.FingerprintWarning, match="cpu_model: 'Some Other CPU'"):
        lt.LatencyTable.load(tmp_path / "t.json")
    with pytest.raises(lt.TableError, match="measured on another machine.*strict"):
        lt.LatencyTable.load(tmp_path / "t.json", strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same machine: no warning
        synthetic_table(cifar, tmp_path / "same.json")
        lt.LatencyTable.load(tmp_path / "same.json")


def test_reading_another_machines_table_is_quiet(cifar, tmp_path, capsys):
    """Querying, showing and listing a table of a device you do not have is what shipped tables
    are for: no FingerprintWarning; --strict still refuses, and measuring still checks."""
    table = synthetic_table(cifar)
    table.data["fingerprint"]["cpu_model"] = "Some Other CPU"
    p = table.save(tmp_path / "t.json")
    arch = str(cifar.smallest())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lt.LatencyTable.load(p, check_machine=False).predict(arch) > 0
        assert main(["latency", "query", "--table", str(p), arch]) == 0
        assert main(["latency", "show", str(p)]) == 0
        assert main(["latency", "list"]) == 0
    capsys.readouterr()
    assert main(["latency", "query", "--strict", "--table", str(p), arch]) == 2
    assert "measured on another machine" in capsys.readouterr().err
    with pytest.warns(lt.FingerprintWarning):
        lt.LatencyTable.load(p, check_machine=False).check_machine()


def test_backend_errors_name_the_bad_value():
    for spec, kw, needle in [("tensorrt", {}, "backend 'tensorrt': expected"),
                             ("onnxruntime:NoSuchProvider", {}, "provider 'NoSuchProvider' is not available"),
                             ("onnxruntime", {"dtype": "bf16"}, "dtype 'bf16' is not supported by the onnxruntime"),
                             ("onnxruntime", {"batch_size": 0}, "batch size 0"),
                             ("onnxruntime", {"spin": True}, "unknown option 'spin'")]:
        with pytest.raises(lt.BackendError, match=needle):
            lt.make_backend(spec, **kw)
    with pytest.raises(lt.BackendError, match=r"input shape \(2, 3, 8, 8\)"):
        lt.make_backend("onnxruntime").prepare(None, (2, 3, 8, 8))


def test_timing_protocol_interleaves_and_uses_low_percentile():
    calls = []

    def make(name, base):
        def timer(k):
            calls.append(name)
            # 1 run in 4 is slowed down (another process took the core)
            return np.array([base * (3.0 if (len(calls) + i) % 4 == 0 else 1.0) for i in range(k)])
        return timer

    plan = lt.TimingPlan(min_rounds=4, max_rounds=6, round_ms=1.0, warmup_ms=0.0)
    a, b = time_interleaved([make("a", 0.5), make("b", 0.25)], plan)
    assert a.ms == pytest.approx(0.5) and b.ms == pytest.approx(0.25)
    assert a.p90_ms > a.ms and a.n >= plan.min_rounds * plan.min_runs_per_round
    rounds = calls[2:]  # after the warm-up (one call each with warmup_ms=0)
    assert rounds[:4] == ["a", "b", "b", "a"]  # alternating order between rounds
    assert lt.TimingStats.from_json(a.to_json()) == lt.TimingStats(**a.to_json())


def test_calibration_recovers_known_model(cifar):
    rng = np.random.default_rng(3)
    ms = {s: float(rng.uniform(0.01, 0.5)) for s in cifar.unique_block_specs()}
    scale = {"mbconv": 1.3, "resnet": 0.8}
    nets, y = [], []
    for _ in range(60):
        net = [(s, ms[s]) for s in cifar.block_specs(cifar.sample(rng))]
        nets.append(net)
        y.append(0.1 + sum(scale.get(s.block, 1.0) * m + 0.05 * s.params() / 1e6 for s, m in net))
    cal = lt.fit_calibration(nets, y)
    assert cal.model == "per_type_scale+weights" and cal.cv["mape"] < 1e-3
    assert cal.scale["mbconv"] == pytest.approx(1.3, rel=1e-2) and cal.scale["resnet"] == pytest.approx(0.8, rel=1e-2)
    assert cal.ms_per_mparam == pytest.approx(0.05, rel=1e-2)
    a, b = lt.fit_flops_proxy([1e9, 2e9, 4e9], [1.5, 2.5, 4.5])
    assert (a, b) == (pytest.approx(0.5), pytest.approx(1.0))


class Interrupt(Exception):
    pass


def test_build_resumes_then_validates_for_real(tiny, tmp_path, monkeypatch):
    """A real ORT build on a tiny space, interrupted after the first chunk, resumed, validated."""
    backend = lt.make_backend("onnxruntime", **FAST)
    out = tmp_path / "tiny.json"
    measured, calls = [], []
    real = backend.time_timers  # every timing goes through it: blocks, and nets prepared from their exports

    def spy(timers):
        measured.append(len(timers))
        calls.append(1)
        if len(calls) == 2:  # dies in the second chunk of the first build
            raise Interrupt
        return real(timers)

    monkeypatch.setattr(backend, "time_timers", spy)
    with pytest.raises(Interrupt):
        lt.build_table(tiny, backend, out, calibration_nets=5, block_chunk=4, calibration_passes=2)
    partial = lt.LatencyTable.load(out)
    n_blocks = len(tiny.unique_block_specs())
    assert len(partial.data["blocks"]) == 4 and not partial.is_complete
    measured.clear()
    table = lt.build_table(tiny, backend, out, calibration_nets=5, block_chunk=4, calibration_passes=2)
    assert sum(measured) == (n_blocks - 4) + 2 * 5  # only the missing blocks, then 2 passes of calibration nets
    assert table.is_complete and lt.LatencyTable.load(out).is_complete
    monkeypatch.undo()

    arch = tiny.largest()
    assert table.predict(arch) > 0 and table.measure_arch(arch) > 0
    s = lt.validate_table(table, n=4, out_dir=tmp_path / "report", command="pytest", chunk=4, passes=2)
    cal_archs = {c["arch"] for c in table.data["calibration_nets"]}
    rows = (tmp_path / "report" / "latency_tiny_validation.csv").read_text().splitlines()
    assert len(rows) == 5 and not cal_archs & {r.split(",")[0] for r in rows[1:]}
    assert (tmp_path / "report" / "latency_tiny_validation.png").read_bytes()[:4] == b"\x89PNG"
    report = (tmp_path / "report" / "latency_tiny_validation.md").read_text()
    assert "Measurement repeatability" in report and "FLOPs proxy" in report
    assert set(s["scores"]) == {"table", "raw block sum", "FLOPs proxy"}
    assert 0 <= s["repeatability"]["within_10"] <= 1
    assert lt.LatencyTable.load(out).data["validation"]["n"] == 4


def test_resume_refuses_other_settings(tiny, tmp_path):
    out = tmp_path / "t.json"
    lt.LatencyTable.new(tiny, lt.make_backend("onnxruntime"), "cpu").save(out)
    with pytest.raises(lt.TableError, match="built with threads=1, not 2"):
        lt.build_table(tiny, lt.make_backend("onnxruntime", threads=2), out)
    # a changed config (hwnas run): the old table is replaced by a new build with the new settings
    table = lt.build_table(tiny, lt.make_backend("onnxruntime", threads=2), out, device="cpu", calibration_nets=4,
                           calibration_passes=1, restart_changed=True)
    assert table.is_complete and lt.LatencyTable.load(out).backend_settings["threads"] == 2


def test_cli_show_query_and_errors(cifar, tmp_path, capsys):
    p = tmp_path / "t.json"
    synthetic_table(cifar, p)
    arch = str(cifar.smallest())
    assert main(["latency", "show", str(p)]) == 0
    assert "complete" in capsys.readouterr().out
    assert main(["latency", "query", "--table", str(p), arch]) == 0
    out = capsys.readouterr().out
    assert "predicted" in out and "stem:" in out
    assert main(["latency", "query", "--table", str(p), "r32/bad"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hwnas: error: malformed") and err.count("\n") == 1
    assert main(["latency", "show", str(tmp_path / "absent.json")]) == 2
    assert issubclass(lt.TableError, UserError)
    assert main(["latency", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[0] for line in listed] == [p.stem for p in lt.shipped_tables()]
    assert all("within ±10%" in line for line in listed)  # every shipped table was validated


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_cuda_backend_times_a_block(tiny):
    from search_space import build_block

    spec = tiny.unique_block_specs()[0]
    stats = lt.make_backend("cuda", dtype="bf16", **FAST).measure(build_block(spec), (spec.c_in, spec.size, spec.size))
    assert 0 < stats.ms <= stats.median_ms <= stats.p90_ms


@pytest.mark.parametrize("path", lt.shipped_tables(), ids=lambda p: p.stem)
def test_shipped_tables_cover_their_preset(path):
    """A shipped table loads by name, matches its preset's fingerprint (so a changed preset
    fails here, not in a user's search) and has every block of the space."""
    with warnings.catch_warnings():  # tables measured on other machines (the H200) warn here, rightly
        warnings.simplefilter("ignore", lt.FingerprintWarning)
        table = lt.LatencyTable.load(path.stem)
    space = SearchSpace.from_config(table.data["space"]["name"])
    table.check_space(space)
    assert table.is_complete, f"{path.name}: missing {table.missing_keys(space)[:3]}"
    assert table.predict(space.largest()) > table.predict(space.smallest()) > 0


def _summary(repeat_within_10, table_within_10, median_ratio):
    met = table_within_10 >= 0.95
    return {"repeatability": {"within_10": repeat_within_10},
            "scores": {"table": {"within_10": table_within_10, "median_ratio": median_ratio}},
            "targets": {"met": met}}


def test_validation_advice_tells_a_noisy_machine_from_a_stale_table():
    """The two ways the CPU table missed on 2026-11-30/12-01: measured under load (85% of nets
    repeat), and built under load but validated on a quiet machine (4.9% too high)."""
    from latency_tables.validate import advice

    noisy = advice(_summary(0.85, 0.905, 1.016))
    assert len(noisy) == 1 and "noisy" in noisy[0] and "85%" in noisy[0]
    stale = advice(_summary(1.0, 0.81, 1.049))
    assert len(stale) == 1 and "5% too high" in stale[0] and "rebuild" in stale[0]
    assert "too low" in advice(_summary(0.99, 0.80, 0.95))[0]
    assert advice(_summary(1.0, 1.0, 1.0)) == []  # met: nothing to say
    assert advice(_summary(1.0, 0.90, 1.01)) == []  # missed without bias: no rebuild would help


def test_busy_machine_is_warned_about_before_cpu_timing(monkeypatch, capsys):
    from latency_tables.fingerprint import busy_machine_warning, warn_if_busy

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.3, 0.2, 0.1))
    assert busy_machine_warning() is None
    monkeypatch.setattr(os, "getloadavg", lambda: (6.5, 4.0, 3.0))
    msg = busy_machine_warning()
    assert msg.startswith("warning:") and "load average 6.5 on 2 cores" in msg
    warn_if_busy("cuda")  # GPU timing: no warning
    assert capsys.readouterr().err == ""
    warn_if_busy("onnxruntime")
    assert capsys.readouterr().err.strip() == msg


def test_cpu_timing_waits_for_gpu_timing_on_the_host(tmp_path, monkeypatch, capsys):
    """GPU timing holds the host's timing lock shared, CPU timing exclusively: a CPU chunk starts
    only once no GPU chunk is being timed (another process would hold it the same way)."""
    import threading

    from latency_tables.timing import host_timing_lock

    monkeypatch.setenv("HWNAS_TIMING_LOCK", str(tmp_path / "timing.lock"))
    events, gpu_in = [], threading.Event()

    def gpu_job():
        with host_timing_lock(cpu=False), host_timing_lock(cpu=False):  # two GPUs may time at once
            gpu_in.set()
            time.sleep(0.4)
            events.append("gpu done")

    t = threading.Thread(target=gpu_job)
    t.start()
    gpu_in.wait()
    with host_timing_lock(cpu=True):
        events.append("cpu timing")
    t.join()
    assert events == ["gpu done", "cpu timing"]
    assert "waiting for GPU timing on this host" in capsys.readouterr().err


def test_cpu_timings_run_at_once_and_gpu_timing_waits_for_them(tmp_path, monkeypatch, capsys):
    """Two CPU devices of one host (on cores of their own) time at the same time; a GPU chunk
    waits until neither is timing."""
    import threading

    from latency_tables.timing import host_timing_lock

    monkeypatch.setenv("HWNAS_TIMING_LOCK", str(tmp_path / "timing.lock"))
    events, both_in, inside = [], threading.Barrier(2, timeout=5), threading.Event()

    def cpu_job(name):
        with host_timing_lock(cpu=True):
            both_in.wait()  # raises BrokenBarrierError if the other CPU job could not get in
            inside.set()
            time.sleep(0.3)
            events.append(f"{name} done")

    jobs = [threading.Thread(target=cpu_job, args=(n,)) for n in ("cpu0", "cpu1")]
    for j in jobs:
        j.start()
    inside.wait(5)
    with host_timing_lock(cpu=False):
        events.append("gpu timing")
    for j in jobs:
        j.join()
    assert sorted(events[:2]) == ["cpu0 done", "cpu1 done"] and events[2] == "gpu timing"
    assert "waiting for CPU timing on this host" in capsys.readouterr().err


def test_nets_are_exported_once_for_all_passes(tiny, monkeypatch):
    """ORT nets are exported once before the passes (not once per pass); the passes time them all."""
    from latency_tables import artifacts, measure
    from latency_tables.backends import OrtBackend

    backend = lt.make_backend("onnxruntime", **FAST)
    exports = []
    real = OrtBackend.artifact
    monkeypatch.setattr(OrtBackend, "artifact", lambda self, m, s: exports.append(1) or real(self, m, s))
    monkeypatch.setattr(artifacts, "default_workers", lambda n: 0)  # in this process, where the spy sees it
    archs = measure.sample_archs(tiny, 4, seed=1)
    done = measure.measure_passes(backend, tiny, archs, 3, {}, lambda: None, chunk=2)
    assert len(exports) == 4 and all(len(done[str(a)]) == 3 for a in archs)
    assert all(lt.TimingStats.from_json(p).ms > 0 for a in archs for p in done[str(a)])


def test_artifacts_made_in_worker_processes_and_kept(tiny, tmp_path):
    from latency_tables.artifacts import make_artifacts
    from latency_tables.measure import sample_archs

    backend = lt.make_backend("onnxruntime", **FAST)
    archs = sample_archs(tiny, 3, seed=2)
    paths = make_artifacts(backend, tiny, archs, tmp_path, workers=2)
    assert set(paths) == {str(a) for a in archs} and all(p.stat().st_size > 0 for p in paths.values())
    stamps = {a: p.stat().st_mtime_ns for a, p in paths.items()}
    # the same archs in another order: found again by name, nothing re-exported
    assert make_artifacts(backend, tiny, archs[::-1], tmp_path, workers=2) == paths
    assert {a: p.stat().st_mtime_ns for a, p in paths.items()} == stamps
    a = archs[0]
    timer = backend.prepare_artifact(paths[str(a)], (tiny.config.in_channels, a.resolution, a.resolution))
    assert len(timer(3)) == 3 and (timer(3) > 0).all()
