"""Multi-process supernet training (DDP) on CPU with gloo, 2 processes: ranks stay in step, only
rank 0 writes, a time limit stops all ranks together, a checkpoint resumes on another number of
processes, and launches that cannot work fail in one line."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml

from hwnas.cli import main
from hwnas.data_wiring import epoch_batches, load_for_space
from search_space import SearchSpace, Supernet
from search_space.checkpoint import read_checkpoint
from search_space.train_dist import (TORCHRUN_ENV, DeviceError, DistContext, DistSetupError, init_distributed,
                                     shutdown_distributed)
from search_space.train_state import read_metrics
from search_space.training import TrainConfig, sandwich_archs, train_supernet
from test_training import BATCH, DIGITS_SPACE

STEPS = 3  # steps per epoch: a few digits batches keep each run short


def _spawn(worker, *args, world: int = 2) -> None:
    """Run ``worker(rank, *args)`` in ``world`` forked processes joined as a gloo group on a free port."""
    load_for_space("digits", None, SearchSpace.from_config(DIGITS_SPACE))  # its imports, once: the forks inherit them
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank_main, args=(world, port, worker, args), nprocs=world, start_method="fork")


def _rank_main(rank: int, world: int, port: int, worker, args) -> None:
    """A forked rank: torchrun's environment, one thread, then the worker."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    worker(rank, *args)


def _train(ctx: DistContext | None, config: TrainConfig, checkpoint, log: list | None = None, **kw) -> list[dict]:
    """train_supernet of a fresh tiny supernet on digits; ``log`` collects each global batch's labels."""
    space = SearchSpace.from_config(DIGITS_SPACE)
    digits = load_for_space("digits", None, space)
    batches = epoch_batches(digits, BATCH, config.seed, torch.device("cpu"))

    def logged(epoch):
        for x, y in batches(epoch):
            if log is not None:
                log.append((epoch, y.tolist()))
            yield x, y

    torch.manual_seed(config.seed)
    return train_supernet(Supernet(space), logged, STEPS, config, checkpoint, progress=False, dist=ctx, **kw)


def _ranks_stay_identical(rank: int, out: str) -> None:
    ctx = init_distributed("cpu")
    space = SearchSpace.from_config(DIGITS_SPACE)
    config = TrainConfig(epochs=1, batch_size=BATCH, lr=0.2, seed=5)
    torch.manual_seed(config.seed)
    net = Supernet(space)
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    train_supernet(net, epoch_batches(load_for_space("digits", None, space), BATCH, config.seed, ctx.device), STEPS,
                   config, dist=ctx, progress=False)
    torch.save({"initial": initial, "final": net.state_dict()}, f"{out}/rank{rank}.pt")
    shutdown_distributed(ctx)


def test_ddp_ranks_stay_identical_and_every_subnet_trains(tmp_path):
    _spawn(_ranks_stay_identical, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    # The parameters the run's 3 steps x 4 subnets used (same arch seed as the workers).
    space = SearchSpace.from_config(DIGITS_SPACE)
    net = Supernet(space)
    rng = np.random.default_rng(5)
    for arch in [a for _ in range(STEPS) for a in sandwich_archs(space, rng, 2)]:
        net.set_active(arch)
        net(torch.zeros(2, 1, arch.resolution, arch.resolution)).sum().backward()
    used = {n for n, p in net.named_parameters() if p.grad is not None}
    changed = set()
    for name, _ in net.named_parameters():  # ranks saw different halves of each batch
        assert torch.equal(r0["final"][name], r1["final"][name]), name
        if not torch.equal(r0["final"][name], r0["initial"][name]):
            changed.add(name)
    # every used parameter was updated (also those only earlier subnets of a step used), no other
    assert changed == used and len(used) > 40
    assert DistContext(rank=1, world_size=2).shard(torch.arange(6))[0].tolist() == [3, 4, 5]


# ----------------------------------------------------------------------------- rank 0 writes, budget


def _cli_rank(rank: int, argv: list[str], out: str) -> None:
    """``hwnas supernet train`` on one rank, recording every atomic write and what it trained."""
    import search_space.io as sio
    import hwnas.supernet_training as lib

    writes, trained = [], {}
    real_write, real_train = sio.atomic_write, lib.train_supernet

    def write(path, *a, **kw):
        writes.append(str(path))
        return real_write(path, *a, **kw)

    def train(net, batches, steps, config, *a, **kw):
        history = real_train(net, batches, steps, config, *a, **kw)
        trained.update(epochs=config.epochs, time_limit_s=kw["time_limit_s"], history=len(history))
        return history

    sio.atomic_write, lib.train_supernet = write, train
    rc = main(argv)
    with open(f"{out}/rank{rank}.json", "w") as f:  # the test's own record, beside the run's folder
        json.dump({"rc": rc, "writes": writes, "trained": trained}, f)


def test_torchrun_cli_writes_on_rank_0_only_and_plans_one_budget(tmp_path):
    cfg = tmp_path / "space.yaml"
    cfg.write_text(yaml.safe_dump(DIGITS_SPACE))
    run = tmp_path / "run"
    argv = ["supernet", "train", "--space", str(cfg), "--dataset", "digits", "--out", str(run), "--batch-size",
            str(BATCH), "--device", "cpu", "--time-budget-min", "0.05", "--eval-every", "1"]
    _spawn(_cli_rank, argv, str(tmp_path))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["rc"] == r1["rc"] == 0
    assert r1["writes"] == [] and r0["writes"]  # rank 1 wrote nothing at all
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl", "supernet.pt"]  # no stray temp files
    # one plan, timed with DDP steps on both ranks; both trained its epochs under the same limit
    assert r0["trained"] == r1["trained"] and r0["trained"]["time_limit_s"] == 3.0
    blob = read_checkpoint(run / "supernet.pt")
    assert blob["meta"]["plan"]["epochs"] == blob["train_state"]["config"]["epochs"] == r0["trained"]["epochs"]
    records = read_metrics(run / "metrics.jsonl")
    assert len(records) == r0["trained"]["history"] and {r["world_size"] for r in records} == {2}


# ----------------------------------------------------------------------------- time limit, resume


def _limited_then_resumable(rank: int, config: TrainConfig, checkpoint: str, logs: str) -> None:
    """2 ranks; only rank 1's limit is reached after epoch 1: both must stop there together."""
    ctx = init_distributed("cpu")
    log = []
    history = _train(ctx, config, checkpoint, log, time_limit_s=1e-6 if rank == 1 else 1e9)
    torch.save({"history": history, "log": log}, f"{logs}/limited{rank}.pt")
    shutdown_distributed(ctx)


def _resume(rank: int, config: TrainConfig, checkpoint: str, logs: str) -> None:
    ctx = init_distributed("cpu")
    log = []
    history = _train(ctx, config, checkpoint, log, resume=True)
    torch.save({"history": history, "log": log}, f"{logs}/resumed{rank}.pt")
    shutdown_distributed(ctx)


def test_time_limit_stops_all_ranks_and_resume_works_on_another_world_size(tmp_path):
    config = TrainConfig(epochs=3, batch_size=BATCH, lr=0.2, seed=4)
    ref_log = []
    reference = _train(None, config, tmp_path / "ref.pt", ref_log)  # 1 process, uninterrupted

    # 2 processes, one of them past its limit after epoch 1: all stop, rank 0 checkpoints epoch 1
    _spawn(_limited_then_resumable, config, str(tmp_path / "a.pt"), str(tmp_path))
    limited = [torch.load(tmp_path / f"limited{r}.pt", weights_only=False) for r in (0, 1)]
    assert [len(x["history"]) for x in limited] == [1, 1] and limited[0]["history"][0]["stopped"] == "time_limit"
    assert read_checkpoint(tmp_path / "a.pt")["train_state"]["epoch"] == 1
    log_a = limited[0]["log"]
    resumed_a = _train(None, config, tmp_path / "a.pt", log_a, resume=True)  # ... finished on 1 process

    # 1 process stopped by its limit after epoch 1, finished on 2 processes
    log_b = []
    assert len(_train(None, config, tmp_path / "b.pt", log_b, time_limit_s=1e-6)) == 1
    _spawn(_resume, config, str(tmp_path / "b.pt"), str(tmp_path))
    resumed_b = [torch.load(tmp_path / f"resumed{r}.pt", weights_only=False) for r in (0, 1)]
    log_b += resumed_b[0]["log"]

    # Consistent: epoch and step counters, the lr schedule, the global batches of every step and the
    # subnets drawn (the arch RNG's state) are those of the uninterrupted run. Weights are not
    # bit-identical across world sizes (per-rank BN statistics and dropout draws, reduction order).
    ref_ckpt = read_checkpoint(tmp_path / "ref.pt")["train_state"]
    for history, path in ((resumed_a, "a.pt"), (resumed_b[0]["history"], "b.pt")):
        state = read_checkpoint(tmp_path / path)["train_state"]
        assert [(r["epoch"], r["step"], r["lr"]) for r in history] == [(r["epoch"], r["step"], r["lr"])
                                                                       for r in reference]
        assert state["rng"]["arch_rng"] == ref_ckpt["rng"]["arch_rng"]
        assert state["scheduler"]["last_epoch"] == ref_ckpt["scheduler"]["last_epoch"] == 3 * STEPS
        assert history[-1]["loss"] < history[0]["loss"]
    assert log_a == ref_log and log_b == ref_log
    assert [r["world_size"] for r in resumed_a] == [2, 1, 1] and [r["world_size"] for r in
                                                                  resumed_b[0]["history"]] == [1, 2, 2]
    timing = ("time_s", "img_per_s")  # each rank's own clock; everything else is agreed
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed_b[0]["history"]] == \
        [{k: v for k, v in r.items() if k not in timing} for r in resumed_b[1]["history"]]


# ----------------------------------------------------------------------------- launch errors


@pytest.mark.parametrize("env,needle", [
    ({"WORLD_SIZE": "2"}, "RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set: expected a launch by torchrun"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is invalid: expected an integer"),
    ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"},
     "RANK=2 is outside WORLD_SIZE=2"),
])
def test_torchrun_environment_errors_are_one_line(monkeypatch, capsys, tmp_path, env, needle):
    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(DistSetupError, match=needle):
        init_distributed("cpu")
    # the command line says the same in one line, exit 2
    assert main(["supernet", "train", "--dataset", "digits", "--out", str(tmp_path / "run"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


def test_unjoinable_group_and_gpu_shortage_are_one_line(monkeypatch):
    with socket.socket() as busy:  # rank 0 cannot listen on a port that is taken
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        monkeypatch.setenv("MASTER_PORT", str(busy.getsockname()[1]))
        for key, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(DistSetupError, match=r"rank 0 could not join the gloo process group at 127\.0\.0\.1") as e:
            init_distributed("cpu")
        assert "\n" not in str(e.value)
    if not torch.cuda.is_available():  # CUDA asked for on a machine without GPUs, under torchrun too
        with pytest.raises(DeviceError, match="CUDA is not available"):
            init_distributed("cuda")
    # a host with one GPU: a second process has none, and cuda:N would put every rank on one GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(DistSetupError, match="LOCAL_RANK=1 but only 1 GPU"):
        init_distributed("cuda")
    with pytest.raises(DistSetupError, match="--device 'cuda:0' under torchrun: expected 'cuda' or 'auto'"):
        init_distributed("cuda:0")


# ----------------------------------------------------------------------------- the benchmark script


def test_bench_ddp_reads_runs_and_refuses_bad_input_in_one_line(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_ddp", os.path.join(os.path.dirname(__file__), "..",
                                                                             "experiments", "bench_ddp.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for argv, needle in ((["--gpus", "0,x"], "--gpus '0,x' is invalid"),
                         (["--device", "cpu", "--gpus", "1,3", "--config",
                           str(bench.ROOT / "experiments" / "configs" / "quickstart.yaml")],
                          "cannot be split over [3] processes"),
                         (["--device", "cpu", "--data", str(tmp_path / "nope.npz")], "nope.npz' not found")):
        assert bench.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err
    runs = []
    for n, speeds in ((1, [50.0, 100.0, 102.0, 98.0]), (2, [80.0, 180.0, 170.0, 175.0])):
        run = tmp_path / f"n{n}"
        run.mkdir()
        records = [{"epoch": e + 1, "img_per_s": s, "time_s": 1000 / s, "world_size": n} for e, s in enumerate(speeds)]
        records[-1].update(val_acc_largest=0.9, val_acc_smallest=0.8, peak_mem_mib=[100.0] * n)
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        runs.append({**bench.summarise(n, run), "rc": 0})
    bench.add_efficiency(runs)
    # the first epoch (cuDNN autotuning) is left out; per GPU over N=1's
    assert [(r["img_per_s"], r["img_per_s_per_gpu"], r["efficiency_vs_1"]) for r in runs] == [
        (100.0, 100.0, 1.0), (175.0, 87.5, 0.875)]
    assert runs[1]["peak_mem_mib_per_rank"] == [100, 100] and runs[1]["val_acc_smallest"] == 0.8
