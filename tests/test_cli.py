"""The CLI: every bad input gets one clear line and exit code 2, never a traceback."""
import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
