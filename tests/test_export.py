"""Export: ONNX parity with PyTorch, dynamic batch, metadata, saved PyTorch models, errors."""

import json

import numpy as np
import pytest
import torch

import hwnas
from hwnas.cli import main
from hwnas.export import ExportError, export_onnx, load_model, ort_session, read_metadata
from search_space import SearchSpace, Supernet, save_supernet

DIGITS_SPACE = "hwnas/configs/space_digits.yaml"


def _archs_covering_every_block(space, n, seed=0):
    """Random archs that together use every block type of the space (and each at least two)."""
    rng = np.random.default_rng(seed)
    archs, types = [], {b for st in space.config.stages for b in st.blocks}
    while len(archs) < n or not types <= {l.block for a in archs for s in a.stages for l in s.layers}:
        a = space.sample(rng)
        if len({l.block for s in a.stages for l in s.layers}) >= 2:
            archs.append(a)
    return archs


def _randomise_bn(net):
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize("preset,n", [("cifar", 6), ("imagenet", 4), ("cifar_pool", 6)])
def test_onnx_matches_pytorch_for_every_block_type(preset, n, tmp_path):
    space = SearchSpace.from_config(preset)
    torch.manual_seed(0)
    net = Supernet(space)
    _randomise_bn(net)
    for i, arch in enumerate(_archs_covering_every_block(space, n)):
        model = net.extract(arch).eval()
        x = torch.randn(2, 3, arch.resolution, arch.resolution)
        path, diff = export_onnx(model, tmp_path / f"m{i}.onnx", x, {"arch": str(arch)})
        assert diff <= 1e-4
        assert read_metadata(path)["arch"] == str(arch)


def test_dynamic_batch_runs_at_batch_1_and_7(tmp_path):
    model = hwnas.create_model("r32/w1:mb3e6/w0.5:rn5e1,pc3e2/w0.75:fmb3e3/w1:pc5e4", space="cifar")
    path, _ = export_onnx(model, tmp_path / "d.onnx", torch.randn(3, 3, 32, 32), {"k": 1}, dynamic_batch=True)
    sess = ort_session(path)
    for b in (1, 7):
        x = torch.randn(b, 3, 32, 32)
        got = sess.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4)


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    space = SearchSpace.from_config(DIGITS_SPACE)
    torch.manual_seed(0)
    net = Supernet(space)
    path = tmp_path_factory.mktemp("ck") / "supernet.pt"
    save_supernet(path, net, {"dataset": "digits"})
    return path


def test_cli_export_writes_onnx_and_pytorch_with_metadata(digits_checkpoint, tmp_path, capsys):
    arch = "r8/w1:mb3e4,rn5e1/w0.5:fmb3e2/w1:pc5e2"
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(digits_checkpoint), "--arch", arch, "--out", str(out),
                 "--dynamic-batch"]) == 0
    meta = read_metadata(out)
    assert meta["arch"] == arch and meta["space"] == "digits"
    assert 0.0 <= float(meta["test_accuracy"]) <= 1.0
    assert float(meta["latency_ms.local_ort_cpu.measured"]) > 0
    model, blob = load_model(out.with_suffix(".pt"))
    assert model.arch == arch and blob["meta"]["arch"] == arch
    # the saved PyTorch model and the ONNX file compute the same function
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        np.testing.assert_allclose(ort_session(out).run(None, {"input": x.numpy()})[0], model(x).numpy(), atol=1e-4)
    printed = capsys.readouterr().out
    assert str(out) in printed
    # existing files are not overwritten without --force
    assert main(["export", "--checkpoint", str(digits_checkpoint), "--arch", arch, "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(digits_checkpoint), "--arch", arch, "--out", str(out), "--force"]) == 0


def test_cli_export_of_a_pareto_front(digits_checkpoint, tmp_path):
    front = {"device": "cpu", "front": [{"arch": "r8/w1:mb3e4/w0.5:fmb3e2/w1:pc5e2", "accuracy": 0.9},
                                        {"arch": "r8/w0.5:pc3e2/w0.5:pc3e2/w0.5:rn3e0.5", "accuracy": 0.8}]}
    (tmp_path / "pareto_cpu.json").write_text(json.dumps(front))
    out = tmp_path / "models"
    assert main(["export", "--checkpoint", str(digits_checkpoint), "--pareto", str(tmp_path / "pareto_cpu.json"),
                 "--out", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["cpu_rank00.onnx", "cpu_rank00.pt", "cpu_rank01.onnx", "cpu_rank01.pt"]
    assert read_metadata(out / "cpu_rank01.onnx")["accuracy"] == "0.8"


def test_cli_export_errors(digits_checkpoint, tmp_path, capsys):
    def fails(args, needle):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err

    ck = str(digits_checkpoint)
    fails(["export", "--checkpoint", ck, "--arch", "r32/w1:mb3e6/w1:mb3e6/w1:mb3e6/w1:mb3e6", "--out",
           str(tmp_path / "a.onnx")], "resolution 32")  # an arch of the cifar space
    cifar_front = tmp_path / "pareto_h200.json"
    cifar_front.write_text(json.dumps({"front": [{"arch": "r32/w1:mb3e6/w1:mb3e6/w1:mb3e6/w1:mb3e6"}]}))
    fails(["export", "--checkpoint", ck, "--pareto", str(cifar_front), "--out", str(tmp_path / "m")], "not in space")
    other = tmp_path / "other.pt"
    save_supernet(other, Supernet(SearchSpace.from_config("cifar")))
    fails(["export", "--checkpoint", str(other), "--arch", "r8/w1:mb3e4/w0.5:fmb3e2/w1:pc5e2", "--out",
           str(tmp_path / "b.onnx")], "resolution 8")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    fails(["export", "--checkpoint", ck, "--arch", "r8/w1:mb3e4/w0.5:fmb3e2/w1:pc5e2", "--out",
           str(blocker / "sub" / "m.onnx")], "cannot be created")
    fails(["export", "--checkpoint", str(tmp_path / "none.pt"), "--arch", "x", "--out", str(tmp_path / "c.onnx")],
          "not found")
