"""Latency lookup tables: per-block latencies measured on a device, calibrated on whole networks.

    backend = make_backend("onnxruntime", batch_size=1, threads=1)   # or "onnxruntime:<Provider>", "cuda"
    stats = backend.measure(module, (3, 32, 32))                       # TimingStats: ms, median_ms, p90_ms, ...
    table = build_table(space, backend, "cpu.json")                    # resumable
    table = LatencyTable.load("cifar_cpu_ort_b1_fp32", space=space)    # shipped tables by name
    table.predict(arch); table.predict_many(archs); table.breakdown(arch); table.measure_arch(arch)
    validate_table(table, n=200)                                       # markdown + CSV + PNG report
"""

from .backends import Backend, CudaBackend, OrtBackend, export_onnx_bytes, make_backend
from .build import build_table
from .calibration import Calibration, fit_calibration, fit_flops_proxy
from .errors import BackendError, FingerprintWarning, TableError
from .fingerprint import device_fingerprint
from .metrics import accuracy_metrics, repeatability
from .table import SCHEMA_VERSION, LatencyTable, resolve_table_path, shipped_tables
from .timing import TimingPlan, TimingStats
from .validate import validate_table

__all__ = [
    "Backend", "BackendError", "Calibration", "CudaBackend", "FingerprintWarning", "LatencyTable", "OrtBackend",
    "SCHEMA_VERSION", "TableError", "TimingPlan", "TimingStats", "accuracy_metrics", "build_table",
    "device_fingerprint", "export_onnx_bytes", "fit_calibration", "fit_flops_proxy", "make_backend",
    "repeatability", "resolve_table_path", "shipped_tables", "validate_table",
]
