"""Measurement backends: ONNX Runtime (any execution provider) and CUDA through PyTorch.

Each is declared in :mod:`latency_tables.registry` (options, dtypes, fingerprint fields,
availability); a backend of your own is a :class:`Backend` subclass registered there too.
A backend turns ``(module, input_shape)`` into a prepared timer (``prepare``) and times
prepared modules with the shared protocol of :mod:`latency_tables.timing`. Its
``settings()`` are stored in every table, so ``make_backend(**settings)`` re-creates the
exact measurement later (``LatencyTable.measure_arch``).
"""

from __future__ import annotations

import copy
import io
import warnings
from time import perf_counter_ns
from abc import ABC, abstractmethod
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .errors import BackendError
from .fingerprint import fingerprint_for
from .registry import BackendType, check_backend_settings, timed_on_cpu
from .timing import TimingPlan, TimingStats, Timer, host_timing_lock, time_interleaved

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_ORT_THREADS = 1  # fixed (not the core count); 1 thread is what a shared machine can measure repeatably (see OrtBackend)


def full_shape(input_shape: Sequence[int], batch_size: int) -> tuple[int, ...]:
    """(batch, C, H, W): a (C, H, W) shape gets the backend's batch size prepended."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        return (batch_size, *shape)
    if len(shape) == 4 and shape[0] == batch_size:
        return shape
    raise BackendError(f"input shape {shape}: expected (C, H, W) or ({batch_size}, C, H, W) for batch size {batch_size}")


class Backend(ABC):
    """Times modules on one device with fixed settings (batch size, dtype, threads, options).

    A subclass implements :meth:`prepare`; :func:`make_backend` sets ``backend_type`` (its
    registration), from which ``spec`` and ``options()`` come by default (each registered option
    read from the attribute of the same name)."""

    backend_type: BackendType | None = None

    def __init__(self, batch_size: int, dtype: str, threads: int | None, plan: TimingPlan):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise BackendError(f"batch size {batch_size!r}: expected a positive integer")
        if dtype not in DTYPES:
            raise BackendError(f"dtype {dtype!r}: expected one of {sorted(DTYPES)}")
        self.batch_size, self.dtype, self.threads, self.plan = batch_size, dtype, threads, plan

    @property
    def spec(self) -> str:
        """The backend spec string (``make_backend``'s first argument)."""
        return self.backend_type.name

    @property
    def provider(self) -> str | None:
        """The ONNX Runtime execution provider, if any."""
        return None

    def options(self) -> dict:
        """Backend-specific options (recorded in tables): each registered option's attribute."""
        return {k: getattr(self, k) for k in self.backend_type.options}

    @abstractmethod
    def prepare(self, module: nn.Module, input_shape: Sequence[int]) -> Timer:
        """Make ``module`` ready to time at ``input_shape``; returns ``timer(k) -> k timings (ms)``."""

    def artifact(self, module: nn.Module, input_shape: Sequence[int]) -> bytes | None:
        """The portable, costly part of :meth:`prepare` (an ONNX export), or None where there is none.
        Backends that return one let :func:`latency_tables.artifacts.make_artifacts` make them once per
        network, in parallel processes, before any timing; :meth:`prepare_artifact` then finishes."""
        return None

    def prepare_artifact(self, artifact: bytes | str, input_shape: Sequence[int]) -> Timer:
        """A timer from :meth:`artifact`'s output (bytes or a file path)."""
        raise NotImplementedError(f"{type(self).__name__} makes no artifacts")

    def settings(self) -> dict:
        """Everything that defines a measurement: ``make_backend(**settings())`` rebuilds it."""
        return {"spec": self.spec, "batch_size": self.batch_size, "dtype": self.dtype, "threads": self.threads,
                **self.options(), **self.plan.to_json()}

    def fingerprint(self) -> dict:
        """This machine's device fingerprint with this backend's settings."""
        return fingerprint_for(self.settings())

    def measure_many(self, items: Iterable[tuple[nn.Module, Sequence[int]]]) -> list[TimingStats]:
        """Time several modules in interleaved rounds (all are prepared first, then timed under the
        host's timing lock: CPU timing waits for GPU timing on this host, see ``host_timing_lock``)."""
        return self.time_timers([self.prepare(m, s) for m, s in items])

    def time_timers(self, timers: list[Timer]) -> list[TimingStats]:
        """Time prepared timers in interleaved rounds under the host's timing lock."""
        with host_timing_lock(cpu=timed_on_cpu(self.spec)):  # CPU timing never overlaps GPU timing here
            return time_interleaved(timers, self.plan)

    def measure(self, module: nn.Module, input_shape: Sequence[int]) -> TimingStats:
        """Time one module; ``.ms`` is the robust estimate, ``.median_ms`` the median."""
        return self.measure_many([(module, input_shape)])[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, batch_size={self.batch_size}, dtype={self.dtype!r}, threads={self.threads})"


def export_onnx_bytes(module: nn.Module, example: torch.Tensor, opset: int = 17, *, input_name: str = "x",
                      output_name: str = "y", dynamic_batch: bool = False) -> bytes:
    """Export ``module`` (eval mode) to an in-memory ONNX model; ``dynamic_batch`` makes the
    first axis of input and output symbolic (named ``batch``).

    Uses the TorchScript exporter (``dynamo=False``): on torch 2.14 it exports a block in
    ~0.13 s against ~1.3 s for the dynamo exporter, which would make exporting the 660 blocks
    of the cifar space alone take 14 minutes. Falls back to dynamo where the former is gone.
    """
    module = copy.deepcopy(module).eval()
    names = {"input_names": [input_name], "output_names": [output_name]}
    axes = {input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # deprecation notices of the TorchScript exporter
        try:
            torch.onnx.export(module, (example,), buf, dynamo=False, opset_version=opset, dynamic_axes=axes, **names)
        except (TypeError, RuntimeError, ImportError):
            buf = io.BytesIO()
            shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
            torch.onnx.export(module, (example,), buf, dynamo=True, opset_version=opset, dynamic_shapes=shapes,
                              verbose=False, **names)
    return buf.getvalue()


class OrtBackend(Backend):
    """ONNX Runtime: the module is exported to ONNX and run in an InferenceSession.

    ``spinning=False`` (default) turns off ORT's busy-waiting worker threads: measured on
    the shared 2-core development VM, spinning made the same net's time swing by up to 2x
    between runs (its threads fight other processes for the cores); without it the 10th
    percentile repeated within +-10%. Pass ``spinning=True`` on a dedicated machine to time
    what ORT does by default.

    ``threads`` defaults to 1: with 2 threads on the 2 shared cores every parallel operator
    waits for whichever thread was descheduled, and re-measuring the same 362 blocks minutes
    later agreed within +-10% for only 51% of them (nets 29%); with 1 thread, 100% (nets 82%).
    """

    def __init__(self, provider: str, batch_size: int, dtype: str, threads: int | None, plan: TimingPlan,
                 spinning: bool, opset: int):
        super().__init__(batch_size, dtype, DEFAULT_ORT_THREADS if threads is None else int(threads), plan)
        import onnxruntime as ort

        available = ort.get_available_providers()
        if provider not in available:
            raise BackendError(f"onnxruntime provider {provider!r} is not available here: expected one of {available}")
        if dtype != "fp32":
            raise BackendError(f"dtype {dtype!r} is not supported by the onnxruntime backend: expected 'fp32'")
        if self.threads < 1:
            raise BackendError(f"threads {self.threads!r}: expected a positive integer")
        self._ort, self._provider, self.spinning, self.opset = ort, provider, bool(spinning), int(opset)

    @property
    def spec(self) -> str:
        return f"onnxruntime:{self._provider}"

    @property
    def provider(self) -> str:
        return self._provider

    def session_options(self):
        """Full graph optimisation, ``threads`` intra-op threads, sequential execution."""
        ort = self._ort
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        so.log_severity_level = 3
        return so

    def _example(self, input_shape) -> torch.Tensor:
        return torch.randn(full_shape(input_shape, self.batch_size), generator=torch.Generator().manual_seed(0))

    def artifact(self, module, input_shape) -> bytes:
        """The module's ONNX export: most of :meth:`prepare`'s time (0.65 s of 0.95 s a cifar_pool net)."""
        return export_onnx_bytes(module, self._example(input_shape), self.opset)

    def prepare(self, module, input_shape):
        return self.prepare_artifact(self.artifact(module, input_shape), input_shape)

    def prepare_artifact(self, artifact, input_shape):
        x = self._example(input_shape)
        model = artifact if isinstance(artifact, bytes) else str(artifact)
        session = self._ort.InferenceSession(model, self.session_options(), providers=[self._provider])
        feed = {session.get_inputs()[0].name: x.numpy()}
        run = session.run

        def timer(k: int) -> np.ndarray:
            out = np.empty(k)
            for i in range(k):
                t0 = perf_counter_ns()
                run(None, feed)
                out[i] = perf_counter_ns() - t0
            return out / 1e6

        return timer


class CudaBackend(Backend):
    """PyTorch on a CUDA device, timed with CUDA events.

    With ``cuda_graph`` (default) a module is captured as a CUDA graph of ``r`` back-to-back
    invocations, ``r`` chosen so one replay lasts at least ``min_graph_us`` (tiny blocks would
    otherwise time the graph launch, not themselves); the per-invocation time is reported.
    Whole networks get ``r = 1`` in practice, i.e. the time of one replay of a deployed graph.
    """

    def __init__(self, batch_size: int, dtype: str, threads: int | None, plan: TimingPlan, channels_last: bool,
                 cuda_graph: bool, cudnn_benchmark: bool, min_graph_us: float, device: int):
        super().__init__(batch_size, dtype, None, plan)
        if not torch.cuda.is_available():
            raise BackendError(f"cuda backend: no CUDA device visible (torch {torch.__version__}, "
                               f"built for CUDA {torch.version.cuda}): expected a machine with an NVIDIA GPU")
        self.channels_last, self.cuda_graph = bool(channels_last), bool(cuda_graph)
        self.cudnn_benchmark, self.min_graph_us, self.device = bool(cudnn_benchmark), float(min_graph_us), int(device)
        torch.cuda.set_device(self.device)  # graph capture and events use the current device

    def prepare(self, module, input_shape):
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        dev = torch.device("cuda", self.device)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        m = copy.deepcopy(module).eval().to(dev, DTYPES[self.dtype], memory_format=fmt)
        x = torch.randn(full_shape(input_shape, self.batch_size), device=dev, dtype=DTYPES[self.dtype])
        x = x.contiguous(memory_format=fmt)
        with torch.inference_mode():
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):  # warm-up off the default stream, as graph capture requires
                for _ in range(3):
                    m(x)
            torch.cuda.current_stream(dev).wait_stream(side)
            torch.cuda.synchronize(dev)
            if not self.cuda_graph:
                return _event_timer(lambda: m(x), 1, dev)
            run, reps = self._graph(m, x, 1, dev)
            once = float(np.median(_event_timer(run, 1, dev)(5)))
            want = int(np.clip(np.ceil(self.min_graph_us / 1000 / max(once, 1e-6)), 1, 64))
            if want > 1:
                run, reps = self._graph(m, x, want, dev)
            return _event_timer(run, reps, dev)

    @staticmethod
    def _graph(m, x, reps: int, dev):
        g = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(g):
            for _ in range(reps):
                m(x)
        torch.cuda.synchronize(dev)

        def run() -> None:
            g.replay()

        run.keep_alive = (m, x)  # the graph reads their memory: they must outlive it
        return run, reps


def _event_timer(fn, reps: int, dev) -> Timer:
    """Timer recording a CUDA event pair around each call; per-invocation ms = pair / reps."""

    def timer(k: int) -> np.ndarray:
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(k)]
        with torch.inference_mode():
            for start, end in ev:
                start.record()
                fn()
                end.record()
        torch.cuda.synchronize(dev)
        return np.array([s.elapsed_time(e) for s, e in ev]) / reps

    return timer


def make_backend(spec: str, batch_size: int = 1, dtype: str = "fp32", threads: int | None = None, **opts) -> Backend:
    """A backend from a spec: ``onnxruntime`` (CPU provider), ``onnxruntime:<Provider>``, ``cuda``
    or any type registered with :func:`latency_tables.register_backend`.

    ``opts``: timing-plan fields (``min_rounds``, ``max_rounds``, ``round_ms``, ``tol``, ...) and
    the type's options (onnxruntime: ``spinning``, ``opset``; cuda: ``channels_last``,
    ``cuda_graph``, ``cudnn_benchmark``, ``min_graph_us``, ``device``), checked by the registry.
    """
    bt, variant, plan_opts, backend_opts = check_backend_settings(spec, batch_size, dtype, threads, **opts)
    plan = TimingPlan(**{k: type(getattr(TimingPlan, k))(v) for k, v in plan_opts.items()})
    cls = bt.backend_class()
    backend = cls(*([variant] if bt.variant else []), batch_size, dtype, threads, plan, **backend_opts)
    backend.backend_type = bt
    return backend
