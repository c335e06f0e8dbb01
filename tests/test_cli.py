"""The CLI: every bad input gets one clear line and exit code 2, never a traceback."""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from patchgd_kit.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _train_args(data, out, **overrides):
    opts = {"method": "patchgd", "backbone": "mobilenet_v2", "image-size": "64", "patch-size": "32",
            "batch-size": "5", "epochs": "1", **overrides}
    args = ["train", "--data", str(data), "--out", str(out), "--quiet"]
    for key, value in opts.items():
        args += [f"--{key}", value]
    return args


@pytest.mark.parametrize("overrides,message", [
    ({"image-size": "100"}, "image size 100 is not a multiple of the patch size 32"),
    ({"patch-size": "128"}, "patch size 128 must be between 1 and the image size 64"),
    ({"sampling": "0"}, "sampling 0.0 must be in (0, 1]"),
    ({"sampling": "1.5"}, "sampling 1.5 must be in (0, 1]"),
    ({"sampling": "0.5", "max-sampled": "0.25"}, "max sampled 0.25 is below sampling 0.5"),
    ({"grad-accum": "0"}, "ε = 0 must be between 1 and the number of inner iterations ζ = 4"),
    ({"grad-accum": "5"}, "ε = 5 must be between 1 and the number of inner iterations ζ = 4"),
    ({"backbone": "vgg16"}, "unknown backbone 'vgg16'; allowed: resnet50, mobilenet_v2"),
    ({"method": "sgd"}, "unknown method 'sgd'; allowed: gd, gd-extended, patchgd"),
    ({"batch-size": "0"}, "batch size 0 is not allowed; allowed: an integer >= 1"),
])
def test_bad_training_options_get_one_clear_line(tiny_data, tmp_path, capsys, overrides, message):
    assert main(_train_args(tiny_data, tmp_path / "run", **overrides)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ")
    assert message in err
    assert not (tmp_path / "run").exists()  # nothing is written for a config that cannot run


def test_missing_data_folder(tmp_path, capsys):
    assert main(_train_args(tmp_path / "nowhere", tmp_path / "run")) == 2
    assert "no UltraMNIST split at" in capsys.readouterr().err


def test_corrupt_data_folder(tiny_data, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_data, broken)
    (broken / "train" / "manifest.csv").write_text("image,label\nimages/x.png,3\n")
    assert main(_train_args(broken, tmp_path / "run")) == 2
    assert "corrupt manifest" in capsys.readouterr().err


def test_label_outside_the_classes(tiny_data, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_data, broken)
    manifest = broken / "test" / "manifest.csv"
    lines = manifest.read_text().splitlines()
    first = lines[1].split(",", 2)
    lines[1] = ",".join([first[0], "12", first[2]])
    manifest.write_text("\n".join(lines) + "\n")
    assert main(_train_args(broken, tmp_path / "run")) == 2
    assert "label 12 is outside the allowed 0..9" in capsys.readouterr().err


def test_existing_run_with_another_config_is_refused_and_kept(tiny_data, tmp_path, capsys):
    assert main(_train_args(tiny_data, tmp_path / "run", method="gd")) == 0
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert main(_train_args(tiny_data, tmp_path / "run", method="gd", epochs="2", seed="1")) == 2
    err = capsys.readouterr().err
    assert "different config (differs in: epochs, seed)" in err
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before


def test_help_explains_every_option():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"generate", "train", "evaluate"} <= set(commands)
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings} has no help"
    out = subprocess.run([sys.executable, "-m", "patchgd_kit", "train", "--help"], capture_output=True,
                         text=True, cwd=ROOT, check=True).stdout
    assert "--max-sampled" in out and "inner iterations" in out


def test_generate_then_evaluate_from_the_command_line(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "patchgd_kit", *a], capture_output=True, text=True,
                                    cwd=ROOT)
    gen = run("generate", "--out", str(tmp_path / "d"), "--per-class", "1", "--image-size", "64", "--seed", "3")
    assert gen.returncode == 0, gen.stderr
    assert (tmp_path / "d" / "train" / "manifest.csv").exists() and (tmp_path / "d" / "test" / "card.json").exists()
    bad = run("generate", "--out", str(tmp_path / "d"), "--per-class", "2", "--image-size", "64", "--seed", "3")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.startswith("error: ")
    missing = run("evaluate", "--run", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "not a run folder" in missing.stderr


# --- every bad input and damaged state: one line, exit 2, and the corrected rerun succeeds ---------------

def _fails(argv, capsys, *expected):
    """main(argv) exits 2 with one line that holds every `expected` part."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.count("\n") == 0 and "Traceback" not in err, err
    for part in expected:
        assert part in err, err
    return err


def _gd_args(data, out, **overrides):
    return _train_args(data, out, **{"method": "gd", **overrides})


@pytest.mark.parametrize("overrides,message", [
    ({"lr": "inf"}, "lr inf is not allowed; allowed: a number in (0, 1]"),
    ({"lr": "nan"}, "lr nan is not allowed"),
    ({"lr": "2"}, "lr 2.0 is not allowed"),
    ({"warmup-epochs": "nan"}, "warm-up epochs nan is not allowed; allowed: a number >= 0"),
    ({"warmup-epochs": "-1"}, "warm-up epochs -1.0 is not allowed"),
    ({"workers": "-1"}, "workers -1 is not allowed; allowed: an integer in 0.."),
    ({"workers": "100000"}, "workers 100000 is not allowed"),
    ({"seed": "-1"}, "seed -1 is not allowed; allowed: an integer in 0..4294967295"),
    ({"seed": str(2**64)}, f"seed {2**64} is not allowed"),
    ({"num-classes": "1"}, "num classes 1 is not allowed; allowed: an integer >= 2"),
    ({"device": "tpu"}, "device 'tpu' is not one of auto, cpu, cuda"),
    ({"memory-budget": "lots"}, "memory budget 'lots' is not a size"),
])
def test_nonsense_values_are_refused_before_anything_is_written(tiny_data, tmp_path, capsys, overrides, message):
    _fails(_gd_args(tiny_data, tmp_path / "run", **overrides), capsys, message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv,message", [
    (["generate", "--out", "{tmp}/d", "--image-size", "100000"], "image_size 100000 is not allowed"),
    (["generate", "--out", "{tmp}/d", "--workers", "0"], "workers 0 is not allowed"),
    (["pretrain", "--backbone", "mobilenet_v2", "--image-size", "64", "--seed", "-1", "--out", "{tmp}/w.pt"],
     "seed -1 is not allowed"),
    (["pretrain", "--backbone", "mobilenet_v2", "--image-size", "64", "--crop-size", "0", "--out", "{tmp}/w.pt"],
     "crop size 0 must be between 1 and the image size 64"),
    (["pretrain", "--backbone", "mobilenet_v2", "--image-size", "64", "--out", "{tmp}"], "is a folder"),
    (["evaluate", "--run", "{tmp}", "--device", "tpu"], "device 'tpu' is not one of"),
    (["reproduce", "--seeds", "0", "--only", "01"], "seeds 0 must be at least 1"),
])
def test_other_commands_refuse_nonsense_values(tmp_path, capsys, argv, message):
    _fails([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys, message)
    assert not (tmp_path / "d").exists() and not (tmp_path / "w.pt").exists()


def _break_image(data, split, index=0):
    path = data / split / "images" / f"{index:06d}.png"
    path.write_bytes(path.read_bytes()[:100])  # truncated, as by a full disk or a broken copy
    return path


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_damaged_image_is_named_and_no_finished_training_is_lost(tiny_data, tmp_path, capsys, split):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    broken = _break_image(data, split)
    _fails(_gd_args(data, tmp_path / "run"), capsys, f"image {broken} is unreadable", "delete it and make it again")
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    # a damaged test image is found at the evaluation: the epoch it follows is kept, trained
    assert checkpoint.exists() == (split == "test")
    trained = torch.load(checkpoint, weights_only=False)["pending"] if split == "test" else None
    shutil.copy(tiny_data / split / "images" / broken.name, broken)
    assert main(_gd_args(data, tmp_path / "run")) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    if trained is not None:  # evaluated, not trained again
        assert rows[0]["train_seconds"] == trained["train_seconds"]


def test_a_manifest_that_disagrees_with_its_card_is_refused(tiny_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    manifest = data / "test" / "manifest.csv"
    manifest.write_text("".join(manifest.read_text().splitlines(keepends=True)[:-1]))
    _fails(_gd_args(data, tmp_path / "run"), capsys, "lists 19 images but card.json says 20")


def test_a_folder_left_by_a_run_that_trained_no_epoch_is_replaced(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".patchgd-run").write_text(json.dumps({"kit": "patchgd-kit"}))  # the kit's folder: its marker
    (run / "config.json").write_text(json.dumps({"method": "gd", "lr": 0.5}))
    assert main(_gd_args(tiny_data, run)) == 0
    assert "trained no epoch: replaced" in capsys.readouterr().err
    assert json.loads((run / "config.json").read_text())["lr"] == 1e-3


def test_restart_begins_a_run_of_another_config_again(tiny_data, tmp_path, capsys):
    assert main(_gd_args(tiny_data, tmp_path / "run")) == 0
    _fails(_gd_args(tiny_data, tmp_path / "run", lr="0.0005"), capsys, "differs in: lr", "--restart")
    assert main(_gd_args(tiny_data, tmp_path / "run", lr="0.0005") + ["--restart"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["config"]["lr"] == 0.0005


def _two_epochs(data, out):
    return _gd_args(data, out, epochs="2")


@pytest.fixture
def unfinished_run(tiny_data, tmp_path, monkeypatch):
    """A 2-epoch run interrupted as its second epoch began: checkpoint.pt (epoch 1 evaluated) and
    checkpoint.prev.pt (epoch 1 trained, not yet evaluated)."""
    from patchgd_kit.runs import training as train_module
    first_epoch_only = train_module.train_one_epoch

    def interrupt(run, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return first_epoch_only(run, epoch)
    with monkeypatch.context() as patch:
        patch.setattr(train_module, "train_one_epoch", interrupt)
        assert main(_two_epochs(tiny_data, tmp_path / "run")) == 130
    return tmp_path / "run"


def test_a_truncated_checkpoint_falls_back_to_the_one_before(tiny_data, unfinished_run, capsys):
    checkpoint = unfinished_run / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    assert main(_two_epochs(tiny_data, unfinished_run)) == 0
    assert f"{checkpoint} is unreadable" in capsys.readouterr().err
    summary = json.loads((unfinished_run / "summary.json").read_text())
    assert [row["epoch"] for row in summary["history"]] == [1, 2]


def test_a_truncated_checkpoint_without_one_before_names_the_way_out(tiny_data, unfinished_run, capsys):
    checkpoint = unfinished_run / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    (unfinished_run / "checkpoint.prev.pt").unlink()
    _fails(["evaluate", "--run", str(unfinished_run)], capsys, f"{checkpoint} is unreadable", "--restart")
    _fails(_two_epochs(tiny_data, unfinished_run), capsys, f"{checkpoint} is unreadable", "--restart")
    assert main(_two_epochs(tiny_data, unfinished_run) + ["--restart"]) == 0


def test_a_corrupt_config_names_the_file_and_deleting_it_resumes(tiny_data, unfinished_run, capsys):
    config = unfinished_run / "config.json"
    config.write_text('{"method": "gd", "lr"')
    _fails(_two_epochs(tiny_data, unfinished_run), capsys, f"{config} is unreadable", "delete it to resume")
    config.unlink()
    assert main(_two_epochs(tiny_data, unfinished_run)) == 0
    assert len((unfinished_run / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_damaged_summary_is_written_again_from_the_checkpoint(tiny_data, tmp_path):
    assert main(_gd_args(tiny_data, tmp_path / "run")) == 0
    summary = tmp_path / "run" / "summary.json"
    before = json.loads(summary.read_text())
    summary.write_text("{")
    assert main(_gd_args(tiny_data, tmp_path / "run")) == 0
    assert json.loads(summary.read_text()) == before


def test_weights_that_do_not_fit_get_a_one_line_summary(tiny_data, tmp_path, capsys):
    from torchvision.models import mobilenet_v2
    state = mobilenet_v2().state_dict()
    state["renamed"] = state.pop("features.0.0.weight")
    torch.save(state, tmp_path / "w.pt")
    _fails(_gd_args(tiny_data, tmp_path / "run", weights=str(tmp_path / "w.pt")), capsys,
           "1 missing, 1 unexpected, 0 misshapen keys (missing: features.0.0.weight; unexpected: renamed)")
    (tmp_path / "text.pt").write_text("not a torch file")
    _fails(_gd_args(tiny_data, tmp_path / "run", weights=str(tmp_path / "text.pt")), capsys,
           "is not a readable torch state dict")
    assert not (tmp_path / "run").exists()


def test_paths_that_cannot_be_written_get_one_line(tiny_data, tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("")
    _fails(_gd_args(tiny_data, a_file), capsys, f"{a_file}: File exists")
    _fails(_gd_args(tiny_data, a_file / "run"), capsys, f"{a_file / 'run'}: Not a directory")
    _fails(["generate", "--out", str(a_file / "d"), "--per-class", "1", "--image-size", "64"], capsys,
           "Not a directory")
    monkeypatch.setenv("KIT_RUNS", str(a_file))
    _fails(["reproduce", "--profile", "smoke", "--only", "01"], capsys, f"{a_file / 'smoke'}: Not a directory")


def test_debug_adds_the_traceback(tiny_data, tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert main(_gd_args(tiny_data, a_file) + ["--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("KIT_DEBUG", "1")
    assert main(_gd_args(tiny_data, a_file)) == 2
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.slow
def test_a_full_disk_gets_one_line_and_the_rerun_resumes(tiny_data, tmp_path):
    # A file-size limit stands in for a full disk: the checkpoint's write fails, config.json's does not.
    limit = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000)); "
             "from patchgd_kit.cli import main; sys.exit(main(sys.argv[1:]))")
    args = _gd_args(tiny_data, tmp_path / "run")
    full = subprocess.run([sys.executable, "-c", limit, *args], capture_output=True, text=True, cwd=ROOT)
    assert full.returncode == 2 and full.stderr.count("\n") == 1 and "Traceback" not in full.stderr
    assert f"{tmp_path / 'run' / 'checkpoint.pt'}: File too large" in full.stderr
    assert not list((tmp_path / "run").glob(".checkpoint.pt.*"))  # no temporary file left
    assert main(args) == 0


def test_a_locked_run_folder_is_refused_and_a_stale_lock_taken_over(tiny_data, tmp_path, capsys):
    from patchgd_kit.files import locked
    run = tmp_path / "run"
    run.mkdir()
    with locked(run / ".lock", "training in it"):
        _fails(_gd_args(tiny_data, run), capsys, f"process {os.getpid()} is already training in {run}")
    (run / ".lock").write_text("999999999")  # left by a killed process: no one holds it
    assert main(_gd_args(tiny_data, run)) == 0
    assert not (run / ".lock").exists()


def test_generate_is_locked_per_split_and_removes_a_killed_run_partial_folder(tmp_path, capsys):
    from patchgd_kit.files import locked
    args = ["generate", "--out", str(tmp_path / "d"), "--split", "test", "--per-class", "1", "--image-size", "64"]
    (tmp_path / "d").mkdir()
    with locked(tmp_path / "d" / ".test.lock", "generating it"):
        _fails(args, capsys, f"process {os.getpid()} is already generating {tmp_path / 'd' / 'test'}")
    stale = tmp_path / "d" / ".test.partial-999999999"
    (stale / "images").mkdir(parents=True)
    assert main(args) == 0
    assert not stale.exists() and sorted(p.name for p in (tmp_path / "d").iterdir()) == ["test"]
