"""Standalone subnets for deployment: PyTorch models and ONNX files with hwnas metadata.

An exported ONNX file carries its arch string, space fingerprint, checkpoint hash,
accuracy and per-device latencies in ``metadata_props`` (keys prefixed ``hwnas.``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from latency_tables.backends import export_onnx_bytes
from search_space import Arch, SearchSpace, Subnet, Supernet, load_supernet
from search_space.errors import UserError
from search_space.io import atomic_torch_save, atomic_write_bytes

OPSET = 18
MODEL_FORMAT = "hwnas-subnet"


class ExportError(UserError):
    """An export that cannot proceed (bad path, existing file, failed parity)."""


def create_model(arch: Arch | str, checkpoint: str | Path | None = None, space: str | Path | dict = "cifar") -> Subnet:
    """The static subnet for ``arch``: with a supernet ``checkpoint`` its trained weights
    (the checkpoint's space is used), else randomly initialised in ``space``."""
    if checkpoint is not None:
        supernet, _ = load_supernet(checkpoint)
    else:
        supernet = Supernet(SearchSpace.from_config(space))
    return supernet.extract(supernet.space.validate(arch)).eval()


def check_writable(path: str | Path, force: bool) -> Path:
    """Refuse to overwrite without ``force``, and fail early on an unwritable folder."""
    path = Path(path)
    if path.exists() and not force:
        raise ExportError(f"output {str(path)!r} exists: pass --force to overwrite it")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"output folder {str(parent)!r} cannot be created: {e.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise ExportError(f"output folder {str(parent)!r} is not writable: choose another --out")
    return path


def save_model(path: str | Path, model: Subnet, space: SearchSpace, meta: dict | None = None) -> Path:
    """Save a subnet as a PyTorch file (state dict + arch string + space), atomically."""
    blob = {"format": MODEL_FORMAT, "arch": model.arch, "space": space.config.to_json(),
            "space_fingerprint": space.fingerprint, "state_dict": model.state_dict(), "meta": meta or {}}
    return atomic_torch_save(blob, path)


def load_model(path: str | Path) -> tuple[Subnet, dict]:
    """Load a subnet written by :func:`save_model` (ordinary PyTorch: fine-tune or evaluate it)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as e:
        raise ExportError(f"model file {str(path)!r} is not readable: {e}") from None
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        raise ExportError(f"model file {str(path)!r} is not an hwnas subnet (expected format {MODEL_FORMAT!r})")
    space = SearchSpace.from_config(blob["space"])
    arch = space.parse(blob["arch"])
    model = Subnet(arch, space.block_specs(arch), dropout=space.config.dropout)
    model.load_state_dict(blob["state_dict"])
    return model.eval(), blob


def with_metadata(data: bytes, metadata: dict) -> bytes:
    """Add ``hwnas.<key>`` entries to the ONNX model's metadata_props."""
    import onnx

    proto = onnx.load_from_string(data)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"hwnas.{key}", str(value)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``hwnas.*`` metadata of an exported ONNX file (prefix stripped)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key[6:]: p.value for p in proto.metadata_props if p.key.startswith("hwnas.")}


def ort_session(data_or_path, threads: int | None = None):
    """An ONNX Runtime CPU session."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    src = data_or_path if isinstance(data_or_path, bytes) else str(data_or_path)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def parity(model: torch.nn.Module, data_or_path, inputs: torch.Tensor) -> float:
    """Max absolute difference between PyTorch (fp32, eval) and ONNX Runtime on ``inputs``."""
    with torch.no_grad():
        ref = model.eval()(inputs).numpy()
    got = ort_session(data_or_path).run(None, {"input": inputs.numpy()})[0]
    return float(np.abs(ref - got).max())


def export_onnx(model: Subnet, path: str | Path, example: torch.Tensor, metadata: dict, *,
                dynamic_batch: bool = False, force: bool = False, tolerance: float = 1e-4) -> tuple[Path, float]:
    """Export ``model`` to ``path`` with metadata, after checking ORT matches PyTorch on
    ``example`` within ``tolerance``; returns (path, max abs difference)."""
    path = check_writable(path, force)
    data = with_metadata(export_onnx_bytes(model, example[:1] if not dynamic_batch else example, OPSET, input_name="input",
                                           output_name="logits", dynamic_batch=dynamic_batch), metadata)
    diff = parity(model, data, example if dynamic_batch else example[:1])
    if not diff <= tolerance:
        raise ExportError(f"ONNX Runtime output differs from PyTorch by {diff:.3g} (> {tolerance:g}) for {model.arch}")
    atomic_write_bytes(path, data)
    return path, diff


# ---- the export command: one request per architecture ------------------------------------
@dataclass
class ExportRequest:
    """Everything one export needs (see ``hwnas export --help``)."""

    arch: str
    out: Path
    checkpoint: str | Path
    dataset: str | None = None
    data: str | None = None
    recalibrate: bool = True
    tables: list[str] = field(default_factory=list)  # DEVICE=PATH
    dynamic_batch: bool = False
    threads: int | None = None
    force: bool = False
    known: dict = field(default_factory=dict)  # numbers already known (e.g. from a Pareto front)


def front_requests(pareto: str | Path, out_dir: Path, common: dict) -> list[ExportRequest]:
    """One request per arch of a ``pareto_<device>.json`` file, named by device and rank."""
    pareto = Path(pareto)
    try:
        data = json.loads(pareto.read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"pareto file {str(pareto)!r} is not readable JSON: {e}") from None
    entries = data.get("front") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "arch" in e for e in entries):
        raise ExportError(f"pareto file {str(pareto)!r}: expected a 'front' list of entries with an 'arch' key")
    device = data.get("device") if isinstance(data, dict) else None
    device = device or pareto.stem.removeprefix("pareto_")
    return [ExportRequest(arch=e["arch"], out=out_dir / f"{device}_rank{i:02d}.onnx", known=e, **common)
            for i, e in enumerate(entries)]


def _data_batches(req: ExportRequest, meta: dict, resolution: int):
    """(calibration batches, test batches) from the request's or the checkpoint's dataset, or None."""
    from hwnas.datasets import iterate_batches, load_dataset
    from search_space.evaluation import fit_resolution

    name = req.dataset or meta.get("dataset")
    if not name:
        return None
    bundle = load_dataset(name, req.data or meta.get("data_path"))
    gen = torch.Generator().manual_seed(0)
    calib = [fit_resolution(x, resolution) for x, _ in
             iterate_batches(bundle.train, bundle, 128, train=True, generator=gen)][:20]
    test = [(fit_resolution(x, resolution), y) for x, y in iterate_batches(bundle.test, bundle, 512, train=False)]
    return calib, test


def export_one(req: ExportRequest) -> dict:
    """Extract, recalibrate, export, check and measure one arch; returns what was recorded."""
    import latency_tables
    from search_space import checkpoint_hash, recalibrate_bn
    from search_space.evaluation import accuracy

    onnx_path = check_writable(req.out, req.force)
    pt_path = check_writable(onnx_path.with_suffix(".pt"), req.force)
    tables = [_load_table(t) for t in req.tables]
    supernet, blob = load_supernet(req.checkpoint)
    space = supernet.space
    arch = space.parse(req.arch)
    for _, table in tables:
        if table.space_fingerprint != space.fingerprint:
            raise ExportError(f"latency table for {table.device!r} was built for another space "
                              f"({table.space_fingerprint}, expected {space.fingerprint})")
    weights = (req.known.get("final") or {}).get("weights")
    # final-trained weights where the final stage ran; else the supernet's, BN recalibrated
    model = load_model(weights)[0] if weights else supernet.extract(arch)
    if weights and model.arch != str(arch):
        raise ExportError(f"weights {weights!r} hold {model.arch}, expected {arch}")
    shape = (space.config.in_channels, arch.resolution, arch.resolution)
    batches = _data_batches(req, blob.get("meta", {}), arch.resolution)
    meta = {"arch": str(arch), "space": space.name, "space_fingerprint": space.fingerprint,
            "checkpoint_hash": checkpoint_hash(req.checkpoint), "flops": space.flops(arch), "params": space.params(arch),
            "weights": "final-trained" if weights else "supernet"}
    meta.update({k: v for k, v in _flatten(req.known).items() if k not in meta and k != "final.weights"})
    if batches is not None and (req.recalibrate or weights):
        # on the GPU where there is one: BN recalibration and scoring are ~89% of an export on a CPU
        # (experiments/results/export/export_profile_cpu.md)
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model.to(dev)
        if not weights:
            recalibrate_bn(model, (x.to(dev) for x in batches[0]))
        meta["test_accuracy"] = round(accuracy(model, ((x.to(dev), y.to(dev)) for x, y in batches[1]), arch.resolution), 5)
        model.cpu()
    model.eval()
    example = batches[1][0][0][:8] if batches is not None else torch.randn(8, *shape)
    backend = latency_tables.make_backend("onnxruntime", batch_size=1, threads=req.threads)
    measured = backend.measure(model, shape).ms  # robust low percentile: repeats on a shared machine
    predicted = {name: float(table.predict(arch)) for name, table in tables}
    meta["latency_ms.local_ort_cpu.measured"] = round(measured, 4)
    meta.update({f"latency_ms.{d}.predicted": round(v, 4) for d, v in predicted.items()})
    _, diff = export_onnx(model, onnx_path, example, meta, dynamic_batch=req.dynamic_batch, force=req.force)
    save_model(pt_path, model, space, meta)
    return {"onnx": onnx_path, "pt": pt_path, "max_abs_diff": diff, "measured_ms": measured,
            "predicted_ms": predicted, "metadata": meta}


def _flatten(entry: dict, prefix: str = "") -> dict:
    """Scalars of a (nested) front entry as dotted keys, e.g. ``accuracy.measured``."""
    flat = {}
    for k, v in entry.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float, str)) and not isinstance(v, bool):
            flat[f"{prefix}{k}"] = v
    return flat


def _load_table(spec: str):
    import latency_tables

    device, sep, path = spec.partition("=")
    if not sep or not device or not path:
        raise ExportError(f"--table {spec!r}: expected DEVICE=PATH")
    return device, latency_tables.LatencyTable.load(path)
