"""A latency backend registered in one place (``register_backend`` plus its Backend subclass)
works end to end: a table is built with it, queried, validated, re-measured, checked against
this machine's fingerprint, and accepted by a run config and the pipeline's latency stage; bad
settings fail in one line naming the value."""

import copy
import json
import warnings
from time import perf_counter_ns

import numpy as np
import pytest
import torch
import yaml

import latency_tables as lt
from hwnas.cli import main
from hwnas.run_config import RunConfigError, parse_run_config
from latency_tables.backends import Backend, full_shape
from latency_tables.registry import backend_unavailable, timed_on_cpu
from search_space import SearchSpace
from test_latency_tables import FAST, TINY

class EagerCPU(Backend):
    """Plain PyTorch eager on the CPU, timed with ``perf_counter_ns``: the toy backend."""

    def __init__(self, batch_size, dtype, threads, plan, channels_last):
        super().__init__(batch_size, dtype, 1 if threads is None else threads, plan)
        self.channels_last = channels_last

    def prepare(self, module, input_shape):
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        m = copy.deepcopy(module).eval().to(memory_format=fmt)
        x = torch.randn(full_shape(input_shape, self.batch_size)).contiguous(memory_format=fmt)

        def timer(k: int) -> np.ndarray:
            out = np.empty(k)
            with torch.inference_mode():
                for i in range(k):
                    t0 = perf_counter_ns()
                    m(x)
                    out[i] = perf_counter_ns() - t0
            return out / 1e6

        return timer


@pytest.fixture(scope="module")
def eager():
    lt.register_backend("eager_cpu", EagerCPU, options={"channels_last": False},
                        fingerprint_fields=("cpu_model", "cpu_cores", "torch", "threads", "torch_threads"),
                        machine_info=lambda: {"torch_threads": torch.get_num_threads()})
    yield SearchSpace.from_config(TINY)
    lt.unregister_backend("eager_cpu")


def test_registered_backend_builds_queries_and_validates_a_table(eager, tmp_path, capsys):
    out = tmp_path / "eager.json"
    backend = lt.make_backend("eager_cpu", channels_last=True, **FAST)
    assert backend.spec == "eager_cpu" and backend.options() == {"channels_last": True}
    table = lt.build_table(eager, backend, out, calibration_nets=4, calibration_passes=1)
    assert table.is_complete and table.device == "cpu"  # times on the host CPU: labelled like one
    assert table.fingerprint["torch_threads"] == torch.get_num_threads()  # the backend's own field is recorded
    arch = str(eager.largest())
    assert main(["latency", "query", "--table", str(out), arch]) == 0
    assert "predicted" in capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same machine: no FingerprintWarning
        loaded = lt.LatencyTable.load(out)
    assert loaded.make_backend().settings() == backend.settings()  # the table re-creates its backend
    assert loaded.measure_arch(arch) > 0
    s = lt.validate_table(loaded, n=4, out_dir=tmp_path / "report", chunk=4, passes=2)
    assert set(s["scores"]) == {"table", "raw block sum", "FLOPs proxy"}
    assert json.loads(out.read_text())["validation"]["n"] == 4
    # a field the backend declared relevant differs: another machine (warned when measuring, refused with strict)
    data = json.loads(out.read_text())
    data["fingerprint"]["torch_threads"] = 999
    out.write_text(json.dumps(data))
    with pytest.warns(lt.FingerprintWarning, match="torch_threads: 999"):
        lt.LatencyTable.load(out)
    with pytest.raises(lt.TableError, match="torch_threads"), pytest.warns(lt.FingerprintWarning):
        lt.build_table(eager, backend, out)  # nor would a partial build resume here


def test_run_config_and_pipeline_take_a_registered_backend(eager, tmp_path):
    from hwnas.pipeline import Pipeline

    run = {"name": "reg", "space": TINY, "dataset": {"name": "digits"},
           "latency": {"devices": [{"name": "eager", "backend": "eager_cpu", "options": {"channels_last": True, **FAST}}],
                       "calibration": 4, "validate": 4}}
    cfg = parse_run_config(copy.deepcopy(run))
    assert cfg["latency"]["devices"][0]["options"]["channels_last"] is True
    assert "options" not in parse_run_config({**run, "latency": {"devices": [{"name": "c"}]}})["latency"]["devices"][0]
    for device, needle in [({"backend": "eager_cpu", "options": {"channels_last": "yes"}},
                            "'latency.devices[0].options.channels_last': backend 'eager_cpu': option channels_last='yes': "
                            "expected a bool"),
                           ({"backend": "eager_cpu", "options": {"spin": 1}}, "'latency.devices[0].options.spin'"),
                           ({"backend": "eager_cpu", "dtype": "bf16"}, "'latency.devices[0].dtype': dtype 'bf16' is not "
                            "supported by the eager_cpu backend: expected one of ['fp32']"),
                           ({"backend": "eager_cpu:x"}, "'latency.devices[0].backend': backend 'eager_cpu:x': expected one of"),
                           ({"backend": "tensorrt"}, "'eager_cpu'")]:
        with pytest.raises(RunConfigError, match="^config key ") as e:
            parse_run_config({**run, "latency": {"devices": [{"name": "e", **device}]}})
        assert needle in str(e.value) and "\n" not in str(e.value)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    summary = Pipeline(path, tmp_path / "run").latency()  # the stage alone: build, then validate
    assert summary["eager"]["blocks"] == len(eager.unique_block_specs()) and summary["skipped_devices"] == []


def test_registry_answers_availability_and_errors(eager, monkeypatch, tmp_path):
    assert backend_unavailable("eager_cpu") is None and timed_on_cpu("eager_cpu") and not timed_on_cpu("cuda")
    assert (backend_unavailable("cuda") is None) == torch.cuda.is_available()
    assert "eager_cpu" in lt.backend_names()
    with pytest.raises(lt.BackendError, match="'eager_cpu' is already registered"):
        lt.register_backend("eager_cpu", EagerCPU)
    with pytest.raises(lt.BackendError, match="'Bad-Name' is invalid"):
        lt.register_backend("Bad-Name", EagerCPU)
    with pytest.raises(lt.BackendError, match=r"dtypes \['int3'\]"):
        lt.register_backend("x", EagerCPU, dtypes=("int3",))
    with pytest.raises(lt.BackendError, match="'round_ms' is a common setting"):
        lt.register_backend("y", EagerCPU, options={"round_ms": 1.0})


def test_plugins_named_in_the_environment_register_backends(eager, monkeypatch, tmp_path):
    """A backend module named in HWNAS_PLUGINS is imported when an unknown name is asked for, so every
    command (and worker process) knows it; a module that cannot be imported is one line."""
    import latency_tables.registry as registry

    (tmp_path / "toy_backend_plugin.py").write_text(
        "from latency_tables import register_backend\n"
        "register_backend('eager_plugin', 'test_backend_registry:EagerCPU', options={'channels_last': False})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setenv("HWNAS_PLUGINS", "toy_backend_plugin")
    try:
        assert lt.make_backend("eager_plugin", **FAST).settings()["spec"] == "eager_plugin"
    finally:
        lt.unregister_backend("eager_plugin")
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setenv("HWNAS_PLUGINS", "no_such_plugin_module")
    with pytest.raises(lt.BackendError, match="HWNAS_PLUGINS: cannot import 'no_such_plugin_module'"):
        lt.make_backend("tensorrt")
