"""Latency lookup tables: per-block latencies measured on a device, calibrated on whole networks.

    backend = make_backend("onnxruntime", batch_size=1, threads=1)   # or "onnxruntime:<Provider>", "cuda"
    stats = backend.measure(module, (3, 32, 32))                       # TimingStats: ms, median_ms, p90_ms, ...
    table = build_table(space, backend, "cpu.json")                    # resumable
    register_backend("mine", MyBackend, options={...}, ...)            # a backend of your own (docs/DESIGN.md)
    table = LatencyTable.load("cifar_cpu_ort_b1_fp32", space=space)    # shipped tables by name
    table.predict(arch); table.predict_many(archs); table.breakdown(arch); table.measure_arch(arch)
    validate_table(table, n=200)                                       # markdown + CSV + PNG report

Names load lazily: reading and querying a table needs no torch; backends and measuring do.
"""

from search_space._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "backends": ["Backend", "CudaBackend", "OrtBackend", "export_onnx_bytes", "make_backend"],
    "build": ["build_table"],
    "calibration": ["Calibration", "fit_calibration", "fit_flops_proxy"],
    "errors": ["BackendError", "FingerprintWarning", "TableError"],
    "fingerprint": ["device_fingerprint"],
    "metrics": ["accuracy_metrics", "repeatability"],
    "registry": ["BackendType", "backend_names", "backend_unavailable", "check_backend_settings", "register_backend",
                 "unregister_backend"],
    "table": ["SCHEMA_VERSION", "LatencyTable", "resolve_table_path", "shipped_tables"],
    "timing": ["TimingPlan", "TimingStats"],
    "validate": ["validate_table"],
})
