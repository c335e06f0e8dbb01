"""The hostile cases of docs/reliability.md, each through `cli.main` (a few through a subprocess): one line,
the exit code it promises, the user's files byte for byte as they were, nothing written outside --out."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from patchgd_kit import cli
from patchgd_kit.cli import main
from patchgd_kit.runs.config import TrainConfig
from patchgd_kit.files import content_hash

ROOT = Path(__file__).resolve().parents[1]


def _train(data, out, *extra):
    return ["train", "--data", str(data), "--out", str(out), "--quiet", "--method", "gd", "--backbone",
            "mobilenet_v2", "--image-size", "64", "--batch-size", "5", "--epochs", "1", *extra]


def _one_line(argv, capsys, code, *expected) -> str:
    """main(argv) exits `code` with one line on stderr holding every `expected` part, no traceback."""
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    for part in expected:
        assert part in err, err
    return err


def _dataset(tiny_data, tmp_path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    return data


def _snapshot(folder: Path) -> dict:
    """Every file under `folder` (symlinks as their target) and its bytes."""
    return {str(p.relative_to(folder)): (str(p.readlink()) if p.is_symlink() else p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_symlink() or p.is_file()}


# --- 1. a run folder is the kit's only if its marker says so -----------------------------------------------

@pytest.mark.parametrize("restart", [False, True])
def test_a_folder_of_the_users_own_files_is_refused_and_left_byte_identical(tiny_data, tmp_path, capsys, restart):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}')
    (mine / "metrics.jsonl").write_text('{"my": "results"}\n')
    before = _snapshot(mine)
    _one_line(_train(tiny_data, mine, *(["--restart"] if restart else [])), capsys, 2,
              f"{mine} holds files that are not a kit run's (config.json, metrics.jsonl", ".patchgd-run")
    assert _snapshot(mine) == before and sorted(p.name for p in mine.iterdir()) == ["config.json", "metrics.jsonl"]


def test_an_empty_out_is_refused_and_the_current_folder_left_alone(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _one_line(_train(tiny_data, ""), capsys, 2, "--out '' is not allowed; allowed: a path that is not empty")
    _one_line(["generate", "--out", "", "--per-class", "1", "--image-size", "64"], capsys, 2, "--out ''")
    assert list(tmp_path.iterdir()) == []


def test_an_older_kits_run_is_adopted_and_marked_on_data_with_a_byte_order_mark(tiny_data, tmp_path, capsys):
    data = _dataset(tiny_data, tmp_path)
    for split in ("train", "test"):  # a manifest saved with a BOM reads as without one (one training for both)
        manifest = data / split / "manifest.csv"
        manifest.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    older = tmp_path / "older"  # a run folder written before markers: its config.json is this config's own
    older.mkdir()
    key = TrainConfig(method="gd", backbone="mobilenet_v2", data=str(data), image_size=64, batch_size=5, epochs=1,
                      num_classes=10).key()
    (older / "config.json").write_text(json.dumps(key))
    assert main(_train(data, older)) == 0
    assert "run folder of an older kit" in capsys.readouterr().err
    marker = json.loads((older / ".patchgd-run").read_text())
    assert marker["kit"] == "patchgd-kit" and marker["config_hash"] == content_hash(key) and "kit_version" in marker


# --- 2. checkpoint reads: any failure falls back, then names the way out ----------------------------------

@pytest.fixture
def interrupted(tiny_data, tmp_path, monkeypatch):
    """A 2-epoch run stopped as its second epoch began: checkpoint.pt and checkpoint.prev.pt."""
    from patchgd_kit.runs import training
    first_only = training.train_one_epoch

    def stop(run, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return first_only(run, epoch)
    with monkeypatch.context() as patch:
        patch.setattr(training, "train_one_epoch", stop)
        assert main(_train(tiny_data, tmp_path / "run", "--epochs", "2")) == 130
    return tmp_path / "run"


def test_a_checkpoint_truncated_to_5000_bytes_falls_back_then_names_the_file_and_restart(tiny_data, interrupted,
                                                                                      capsys):
    current, previous = interrupted / "checkpoint.pt", interrupted / "checkpoint.prev.pt"
    kept = previous.read_bytes()
    current.write_bytes(current.read_bytes()[:5000])  # torch.load raises OSError (EINVAL) on this one
    capsys.readouterr()
    assert main(_train(tiny_data, interrupted, "--epochs", "2")) == 0
    assert f"note: {current} is unreadable" in capsys.readouterr().err
    current.write_bytes(current.read_bytes()[:5000])
    previous.write_bytes(kept[:5000])
    _one_line(["evaluate", "--run", str(interrupted)], capsys, 2, f"{current} is unreadable",
              f"{previous} is unreadable", "--restart")


# --- 3. datasets are closed, and their metadata checked ------------------------------------------------

def _set_first_image(data: Path, name: str) -> None:
    manifest = data / "train" / "manifest.csv"
    lines = manifest.read_text().splitlines(keepends=True)
    lines[1] = name + lines[1][lines[1].index(","):]
    manifest.write_text("".join(lines))


@pytest.mark.parametrize("name", ["../../outside.png", "{outside}", "../../../../../../../../etc/passwd",
                                  "images/../../outside.png"])
def test_a_manifest_path_leaving_the_split_is_refused_naming_the_row(tiny_data, tmp_path, capsys, name):
    data = _dataset(tiny_data, tmp_path)
    outside = tmp_path / "outside.png"
    shutil.copy(data / "train" / "images" / "000000.png", outside)
    _set_first_image(data, name.format(outside=outside))
    _one_line(_train(data, tmp_path / "run"), capsys, 2, f"{data / 'train' / 'manifest.csv'} line 2: image",
              "allowed: a path relative to")
    assert not (tmp_path / "run").exists()


def test_a_symlink_leaving_the_split_is_refused(tiny_data, tmp_path, capsys):
    data = _dataset(tiny_data, tmp_path)
    image = data / "train" / "images" / "000000.png"
    outside = tmp_path / "outside.png"
    shutil.move(image, outside)
    image.symlink_to(outside)
    _one_line(_train(data, tmp_path / "run"), capsys, 2, "line 2: image 'images/000000.png' leads outside",
              "through a symlink")


@pytest.mark.parametrize("card, message", [
    (lambda card: json.dumps([card]), "is a JSON list, not an object"),
    (lambda card: json.dumps({**card, "num_classes": "ten"}), 'num_classes "ten"; allowed: an integer in 2..1000'),
    (lambda card: json.dumps({**card, "normalization": {"mean": 5}}), "normalization"),
    (lambda card: json.dumps({**card, "params": {**card["params"], "image_size": -64}}), "params.image_size -64"),
    (lambda card: json.dumps({**card, "num_images": "all"}), 'num_images "all"'),
    (lambda card: "[" * 200_000 + "]" * 200_000, "nested deeper than a card can be"),
])
def test_damaged_card_fields_get_one_line(tiny_data, tmp_path, capsys, card, message):
    data = _dataset(tiny_data, tmp_path)
    path = data / "train" / "card.json"
    path.write_text(card(json.loads(path.read_text())))
    _one_line(_train(data, tmp_path / "run"), capsys, 2, f"{path}", message)


def test_a_manifest_field_over_the_csv_limit_gets_one_line(tiny_data, tmp_path, capsys):
    data = _dataset(tiny_data, tmp_path)
    _set_first_image(data, "x" * 200_000)
    _one_line(_train(data, tmp_path / "run"), capsys, 2, "corrupt manifest", "line 2", "field larger than field limit")


# --- 4. every command bounded -----------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--image-size", "1000000000"], "image size 1000000000 is not allowed; allowed: an integer in 1..16,384"),
    (["--image-size", "4096", "--patch-size", "1"], "cuts a 4096 px image into 16,777,216 patches"),
    (["--image-size", "262144", "--patch-size", "256", "--lazy"], "allowed: an integer in 1..131,072"),
    (["--budget", "1000000T"], "memory budget '1000000T' is not allowed; allowed: at most 1 TiB"),
    (["--budget", "-4GB"], "memory budget '-4GB' is not a size"),
])
def test_plan_refuses_sizes_beyond_its_limits_at_once(capsys, extra, message):
    import patchgd_kit.planner.estimate  # noqa: F401  the planner's imports, made once, are not what is timed
    start = time.perf_counter()
    _one_line(["plan", "--budget", "4GB", "--backbone", "mobilenet_v2", *extra], capsys, 2, message)
    assert time.perf_counter() - start < 1.0


def test_epochs_have_a_stated_maximum(tiny_data, tmp_path, capsys):
    _one_line(_train(tiny_data, tmp_path / "run", "--epochs", str(10**20)), capsys, 2,
              "epochs 100000000000000000000 is not allowed; allowed: an integer in 1..10000")
    assert not (tmp_path / "run").exists()


def test_a_file_that_cannot_be_made_is_named_as_given(capsys):
    _one_line(["pretrain", "--backbone", "mobilenet_v2", "--image-size", "64", "--out", "/proc/w.pt"], capsys, 2,
              "/proc/w.pt: ")


# --- 5. one error boundary -----------------------------------------------------------------------------

def test_an_unexpected_exception_is_one_line_naming_the_command_and_debug_shows_it(capsys, monkeypatch):
    def defect(args):
        raise RuntimeError("something no check foresaw\nsecond line")
    monkeypatch.setitem(cli.COMMANDS, "plan", (cli.add_plan, defect))
    _one_line(["plan"], capsys, 1, "error: plan failed unexpectedly (RuntimeError: something no check foresaw)",
              "rerun with --debug")
    assert main(["plan", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["plan", "--budget", "-4GB"], "memory budget '-4GB' is not a size"),
    (["plan", "--budget", "4GB", "--patch-size", "1", "--image-size", "4096"], "16,777,216 patches"),
    (["train", "--out", "", "--data", "d"], "--out '' is not allowed"),
])
def test_the_command_line_itself_answers_on_one_line(tmp_path, argv, message):
    done = subprocess.run([sys.executable, "-m", "patchgd_kit", *argv], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []
