"""Runs: the schedule, resume after a kill, finished runs not redone, configs never mixed."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from patchgd_kit.errors import KitError
from patchgd_kit.runs.config import TrainConfig
from patchgd_kit.runs.optim import lr_lambda
from patchgd_kit.runs.training import evaluate_run, train

SMALL = dict(backbone="mobilenet_v2", image_size=64, patch_size=32, batch_size=5, warmup_epochs=1)
ROOT = Path(__file__).resolve().parents[2]


def test_lr_warms_up_from_zero_then_decays_linearly_to_half():
    f = lr_lambda(TrainConfig(epochs=10, warmup_epochs=2), batches_per_epoch=5)
    assert f(0) == 0 and f(5) == pytest.approx(0.5) and f(10) == pytest.approx(1.0)
    assert f(30) == pytest.approx(1 - 0.5 * 20 / 40)
    assert f(50) == pytest.approx(0.5)


@pytest.mark.parametrize("method", ["gd", "gd-extended", "patchgd"])
def test_each_method_trains_and_writes_a_run_folder(tiny_data, tmp_path, method):
    result = train(TrainConfig(method=method, data=str(tiny_data), epochs=1, **SMALL), tmp_path / "run",
                   progress=False)
    row = result["final"]
    assert row["epoch"] == 1 and 0 <= row["accuracy"] <= 100 and row["train_loss"] > 0
    assert row["optimizer_steps"] == (6 * 4 if method == "patchgd" else 6)  # 30 images / 5; ζ = 4, ε = 1
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]
    assert (tmp_path / "run" / "summary.json").exists()


def test_finished_run_is_read_back_not_redone(tiny_data, tmp_path):
    config = TrainConfig(method="gd", data=str(tiny_data), epochs=1, **SMALL)
    first = train(config, tmp_path / "run", progress=False)
    mtime = (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns
    again = train(config, tmp_path / "run", progress=False)
    assert again["final"] == first["final"]
    assert (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns == mtime
    # the finished checkpoint keeps the weights and what the summary is made of, not the optimizer's
    # state, and still evaluates
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert set(state) == {"model", "history", "predictions", "config"}
    assert not (tmp_path / "run" / "checkpoint.prev.pt").exists()
    assert evaluate_run(tmp_path / "run", device="cpu")["accuracy"] == first["final"]["accuracy"]


def test_finished_run_with_a_budget_is_read_back_without_checking_its_batch_again(tiny_data, tmp_path,
                                                                                  monkeypatch):
    from patchgd_kit.runs import training as train_module
    config = TrainConfig(method="gd", data=str(tiny_data), epochs=1, memory_budget="4GB", **SMALL)
    first = train(config, tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["batch_size"] == SMALL["batch_size"]

    def no_check(config):
        raise AssertionError("a finished run was checked against its budget again")
    monkeypatch.setattr(train_module, "plan_for_config", no_check)
    assert train(config, tmp_path / "run", progress=False)["final"] == first["final"]
    with pytest.raises(AssertionError, match="checked against its budget"):  # a new run is still checked
        train(config, tmp_path / "other", progress=False)


def test_a_different_config_in_the_same_folder_is_refused(tiny_data, tmp_path):
    train(TrainConfig(method="gd", data=str(tiny_data), epochs=1, **SMALL), tmp_path / "run", progress=False)
    with pytest.raises(KitError, match="different config.*epochs"):
        train(TrainConfig(method="gd", data=str(tiny_data), epochs=2, **SMALL), tmp_path / "run", progress=False)


@pytest.mark.parametrize("crash_epoch", [2, 3])  # 3: the last, evaluated but saved only by finish_run
def test_crash_after_an_epoch_then_resume_matches_an_uninterrupted_run(tiny_data, tmp_path, crash_epoch):
    config = TrainConfig(method="patchgd", data=str(tiny_data), epochs=3, grad_accum=2, **SMALL)
    straight = train(config, tmp_path / "straight", progress=False)

    def crash(row):
        if row["epoch"] == crash_epoch:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", progress=False, on_epoch=crash)
    assert not (tmp_path / "resumed" / "summary.json").exists()
    resumed = train(config, tmp_path / "resumed", progress=False)
    _assert_same_metrics(straight["history"], resumed["history"])


def _assert_same_metrics(a, b):
    keys = ("epoch", "train_loss", "test_loss", "accuracy", "qwk", "lr", "optimizer_steps")
    assert [{k: r[k] for k in keys} for r in a] == [{k: r[k] for k in keys} for r in b]


def _cli_train(data, out, epochs):
    return [sys.executable, "-m", "patchgd_kit", "train", "--data", str(data), "--out", str(out), "--method",
            "patchgd", "--backbone", "mobilenet_v2", "--image-size", "64", "--patch-size", "32",
            "--batch-size", "5", "--epochs", str(epochs), "--warmup-epochs", "1", "--quiet"]


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_loses_nothing(tiny_data, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(_cli_train(tiny_data, tmp_path / "straight", 4), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(_cli_train(tiny_data, tmp_path / "killed", 4), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().strip():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "killed" / "summary.json").exists()
    subprocess.run(_cli_train(tiny_data, tmp_path / "killed", 4), check=True, env=env, capture_output=True)
    read = lambda name: [json.loads(l) for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    _assert_same_metrics(read("straight"), read("killed"))
    assert len(read("killed")) == 4


def test_evaluate_run_reproduces_the_last_epoch(tiny_data, tmp_path):
    result = train(TrainConfig(method="patchgd", data=str(tiny_data), epochs=1, **SMALL), tmp_path / "run",
                   progress=False)
    again = evaluate_run(tmp_path / "run", device="cpu")
    assert again["accuracy"] == result["final"]["accuracy"]
    assert again["test_loss"] == pytest.approx(result["final"]["test_loss"], rel=1e-5)


def test_data_of_another_image_size_is_refused(tiny_data, tmp_path):
    with pytest.raises(KitError, match="images of 64 px but the image size is 128"):
        train(TrainConfig(method="gd", data=str(tiny_data), epochs=1, **{**SMALL, "image_size": 128}),
              tmp_path / "run", progress=False)


@pytest.mark.parametrize("method", ["gd", "gd-extended", "patchgd"])
@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet50"])
def test_trunk_lr_scale_slows_exactly_the_weights_file_s_trunk(method, backbone, tmp_path):
    from patchgd_kit.core.methods import build_model
    from patchgd_kit.core.models import torchvision_model
    from patchgd_kit.runs.optim import make_optimizer
    model = build_model(method, backbone, 10, 64, 32)
    config = TrainConfig(method=method, backbone=backbone, image_size=64, patch_size=32, lr=1e-3, trunk_lr_scale=0.1)
    fast, slow = make_optimizer(model, config, torch.device("cpu")).param_groups
    assert slow["lr"] == pytest.approx(1e-4) and fast["lr"] == pytest.approx(1e-3)
    # the slow group is what a weights file initialises: load one whose trunk is all ones and see
    ones = {k: torch.ones_like(v) if v.is_floating_point() else v
            for k, v in torchvision_model(backbone).state_dict().items()}
    torch.save(ones, tmp_path / "w.pt")
    loaded = build_model(method, backbone, 10, 64, 32, weights=str(tmp_path / "w.pt"))
    _, trunk = make_optimizer(loaded, config, torch.device("cpu")).param_groups
    assert all(bool((p == 1).all()) for p in trunk["params"])
    reference = torchvision_model(backbone)
    prefix = "fc." if backbone == "resnet50" else "classifier."
    trunk_size = sum(p.numel() for name, p in reference.named_parameters() if not name.startswith(prefix))
    assert sum(p.numel() for p in trunk["params"]) == trunk_size


def test_trunk_lr_scale_is_left_out_of_the_run_key_at_its_default():
    assert "trunk_lr_scale" not in TrainConfig(method="gd").key()
    assert TrainConfig(method="gd", trunk_lr_scale=0.1).key()["trunk_lr_scale"] == 0.1
    with pytest.raises(KitError, match="trunk lr scale 0 is not allowed"):
        TrainConfig(method="gd", trunk_lr_scale=0).validate()
