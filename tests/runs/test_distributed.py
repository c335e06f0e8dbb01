"""More than one process (torchrun, DistributedDataParallel) on the CPU: two processes on gloo.

One spawn of two processes trains every run the checks need; the single-process references train
here. The runs whose parameters are compared with one process use BatchNorm on its running
statistics and no dropout (`per_image`): then each image's loss does not depend on the other images
of the batch, so one process with batch 4 and two with batch 2 compute the same step. (Train-mode
BatchNorm normalises over the process's own images; SyncBatchNorm, which would fix that, runs on
GPUs only.) The runs whose ranks are compared with each other train as they are."""
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from patchgd_kit.runs import distributed, training
from patchgd_kit.runs.config import TrainConfig
from patchgd_kit.runs.distributed import Processes
from patchgd_kit.errors import KitError

TINY = dict(backbone="mobilenet_v2", image_size=64, patch_size=32, warmup_epochs=1, epochs=1, device="cpu")
RUNS = {  # name: (config, BatchNorm on running statistics and no dropout)
    "gd": (dict(method="gd"), False),
    "patchgd": (dict(method="patchgd", grad_accum=2), False),
    "gd-per-image": (dict(method="gd"), True),
    "patchgd-per-image": (dict(method="patchgd", grad_accum=2), True),  # ζ = 4, ε = 2: 2 steps a batch
}
RESUME = dict(method="gd", epochs=2)
ROOT = Path(__file__).resolve().parents[2]


def per_image(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.forward = (lambda bn: lambda x: nn.functional.batch_norm(
                x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))(module)
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
    return model


def parameters_of(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def digest(model: nn.Module) -> str:
    return hashlib.sha256(parameters_of(model).numpy().tobytes()).hexdigest()


def _train_spawned(data: str, tmp: Path, rank: int) -> dict:
    """Every run of RUNS under two processes, and the resume of RESUME's one-process checkpoint."""
    built, allreduces, model_on, wrap = [], [], training.model_on, distributed.wrap

    def counting_wrap(model, device):
        ddp = wrap(model, device)

        def hook(state, bucket):  # one call per bucket; the last bucket ends an all-reduce of the gradients
            allreduces.append(bucket.is_last())
            return default_hooks.allreduce_hook(None, bucket)
        ddp.register_comm_hook(None, hook)
        return ddp

    distributed.wrap = counting_wrap
    report = {}
    for name, (config, alone) in RUNS.items():
        training.model_on = lambda *a, **k: built.append((per_image if alone else (lambda m: m))(model_on(*a, **k))) or built[-1]
        allreduces.clear()
        result = training.train(TrainConfig(data=data, batch_size=2, **TINY, **config), tmp / name, progress=False)
        torch.save(parameters_of(built[-1]), tmp / f"{name}-{rank}.pt")
        report[name] = {"digest": digest(built[-1]), "allreduces": sum(allreduces),
                        "optimizer_steps": result["final"]["optimizer_steps"], "processes": result["final"]["processes"]}
    try:
        training.train(TrainConfig(data=data, batch_size=2, **{**TINY, **RESUME}), tmp / "resume", progress=False)
    except KitError as exc:
        report["resume_error"] = str(exc)
    return report


def _worker(rank: int, port: int, data: str, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        report = _train_spawned(data, Path(tmp), rank)
    finally:
        dist.destroy_process_group()
    (Path(tmp) / f"report-{rank}.json").write_text(json.dumps(report))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tiny_data, tmp_path_factory):
    """(the two ranks' reports, the folder): RUNS trained by two processes with batch 2 each, after a
    one-process run of RESUME was interrupted after its first epoch."""
    tmp = tmp_path_factory.mktemp("ddp")

    def stop(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        training.train(TrainConfig(data=str(tiny_data), batch_size=2, **{**TINY, **RESUME}), tmp / "resume",
                       progress=False, on_epoch=stop)
    mp.start_processes(_worker, args=(_free_port(), str(tiny_data), str(tmp)), nprocs=2, start_method="spawn")
    return [json.loads((tmp / f"report-{r}.json").read_text()) for r in range(2)], tmp


@pytest.mark.parametrize("name", list(RUNS))
def test_after_an_epoch_both_processes_hold_the_same_parameters(two_processes, name):
    reports, _ = two_processes
    assert reports[0][name]["digest"] == reports[1][name]["digest"]
    assert reports[0][name]["processes"] == 2


@pytest.mark.parametrize("name", ["gd-per-image", "patchgd-per-image"])
def test_two_processes_of_batch_2_train_as_one_process_of_batch_4(two_processes, tiny_data, monkeypatch, name):
    _, tmp = two_processes
    config, _ = RUNS[name]
    built, model_on = [], training.model_on

    def build(*args, **kwargs):
        built.append(per_image(model_on(*args, **kwargs)))
        built.append(parameters_of(built[-1]).clone())  # θ before training
        return built[0]

    monkeypatch.setattr(training, "model_on", build)
    one = training.train(TrainConfig(data=str(tiny_data), batch_size=4, **TINY, **config), tmp / f"{name}-one",
                         progress=False)
    two = [json.loads(line) for line in (tmp / name / "metrics.jsonl").read_text().splitlines()]
    theta_one, theta_two, theta_0 = parameters_of(built[0]), torch.load(tmp / f"{name}-0.pt"), built[1]
    difference = (theta_one - theta_two).abs().max().item()
    relative = ((theta_one - theta_two).norm() / (theta_one - theta_0).norm()).item()
    print(f"{name}: max |θ(1 process) − θ(2 processes)| = {difference:.3g}, "
          f"‖θ1 − θ2‖ / ‖θ1 − θ0‖ = {relative:.3g}, train loss {one['final']['train_loss']!r} vs "
          f"{two[-1]['train_loss']!r}")
    # Adam turns float noise in near-zero gradients (summed in another order) into steps of up to
    # lr: GD's MobileNetV2 on running statistics has many; PatchGD's runs agree to 1e-6.
    assert relative < (1e-5 if name.startswith("patchgd") else 5e-3)
    assert one["final"]["optimizer_steps"] == two[-1]["optimizer_steps"]
    assert one["final"]["train_loss"] == pytest.approx(two[-1]["train_loss"], rel=1e-5)
    # the evaluation, shared by the processes (every other image each) and gathered back in order
    predictions = json.loads((tmp / name / "summary.json").read_text())["test_predictions"]
    same = sum(a == b for a, b in zip(predictions, one["test_predictions"]))
    assert len(predictions) == 20 and same >= (20 if name.startswith("patchgd") else 19)
    assert two[-1]["test_loss"] == pytest.approx(one["final"]["test_loss"], rel=1e-3)


def test_patchgd_all_reduces_once_per_optimizer_step(two_processes):
    reports, _ = two_processes
    for name in ("patchgd", "patchgd-per-image"):
        row = reports[0][name]
        print(f"{name}: {row['allreduces']} all-reduces, {row['optimizer_steps']} optimizer steps")
        assert row["allreduces"] == row["optimizer_steps"] == 7 * 2  # 30 images / (2 × 2); ζ / ε = 2


def test_a_checkpoint_of_another_number_of_processes_is_refused(two_processes):
    reports, _ = two_processes
    for report in reports:
        assert "written by 1 process(es), this run has 2" in report["resume_error"]


def test_each_process_takes_its_slice_of_every_global_batch():
    order = list(range(10, 22))
    shares = [distributed.share_of(order, 2, Processes(rank, 3)) for rank in range(3)]
    assert shares == [[10, 11, 16, 17], [12, 13, 18, 19], [14, 15, 20, 21]]
    assert distributed.share_of(order, 4, Processes()) == order


def test_more_processes_than_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(KitError, match="2 processes on this node but it has 1 GPU"):
        distributed.device_for(torch.device("cuda"), Processes(0, 2, 0, 2))


def test_a_global_batch_larger_than_the_data_is_refused(tiny_data, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(KitError, match="global batch, 8 per process × 4 processes"):
        training.train(TrainConfig(data=str(tiny_data), batch_size=8, **TINY), "never-written", progress=False)


def _torchrun(data, out, epochs: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "patchgd_kit",
               "train", "--data", str(data), "--out", str(out), "--method", "patchgd", "--backbone", "mobilenet_v2",
               "--image-size", "64", "--patch-size", "32", "--batch-size", "2", "--epochs", str(epochs),
               "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _epochs_written(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_torchrun_one_rank_killed_mid_epoch_then_rerun_resumes(tiny_data, tmp_path):
    out = tmp_path / "run"
    first = _torchrun(tiny_data, out, epochs=4)
    deadline = time.monotonic() + 120
    while not _epochs_written(out) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    ranks = subprocess.run(["pgrep", "-P", str(first.pid)], capture_output=True, text=True).stdout.split()
    assert len(ranks) == 2, first.communicate()
    os.kill(int(ranks[-1]), signal.SIGKILL)  # one rank, in epoch 2; torchrun stops the other
    _, stderr = first.communicate(timeout=60)
    assert first.returncode != 0 and "global batch 4" in stderr
    before = _epochs_written(out)
    assert len(before) < 4 and not (out / "summary.json").exists()
    again = _torchrun(tiny_data, out, epochs=4)
    stdout, stderr = again.communicate(timeout=180)
    assert again.returncode == 0, stderr[-2000:]
    after = _epochs_written(out)
    assert [row["epoch"] for row in after] == [1, 2, 3, 4]
    assert after[:len(before)] == before  # the epochs before the kill were read back, not trained again
    assert all(row["processes"] == 2 and row["optimizer_steps"] == 7 * 4 for row in after)


def test_sync_bn_on_the_cpu_is_refused():
    config = TrainConfig(data="unused", batch_size=2, sync_bn=True, **TINY)
    with pytest.raises(KitError, match="--sync-bn needs CUDA"):
        training._model(config, torch.device("cpu"), Processes(0, 2))


def test_a_process_without_test_images_still_joins_the_gathering(tiny_data, monkeypatch):
    from patchgd_kit.data.ultramnist import UltraMNIST
    from patchgd_kit.core.methods import build_model
    test_set = torch.utils.data.Subset(UltraMNIST(str(tiny_data), "test"), [0])
    model = build_model("gd", "mobilenet_v2", 10, 64)
    shares = []
    rank_0 = (2.5, np.array([3]), np.array([3]))  # what the other process predicted, gathered

    def gather(loss, predictions, labels, processes):
        shares.append((loss, predictions, labels))
        return rank_0

    monkeypatch.setattr(distributed, "gather_predictions", gather)
    result = training.evaluate(model, "gd", test_set, 2, torch.device("cpu"), processes=Processes(1, 2))
    assert shares[0][0] == 0 and len(shares[0][1]) == 0 and result["accuracy"] == 100
