"""PANDA: the challenge's files read back, Appendix B.1's preprocessing, its bad input, the stand-in.

The slides are small synthetic TIFFs in PANDA's layout, written here with tifffile: three levels
(full, 1/4, 1/16), one page each as in the challenge's files, tiles JPEG-compressed by imagecodecs.
"""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from tiny import HEADER, make_root, slide_image, write_slide
from patchgd_kit.report import latency, tables
from patchgd_kit.runs import config as config_module, scaling
from patchgd_kit.cli import main as cli_main
from patchgd_kit.data.ultramnist import UltraMNIST, ensure_dataset
from patchgd_kit.errors import KitError
from patchgd_kit.data.ultramnist import shrink_dataset
from patchgd_kit.data.panda import (choose_level, fit_to_canvas, preprocess_panda, read_slide, read_train_csv,
                                    slide_level_shapes, split_slides)
from patchgd_kit.runs.scaling import scaled_sizes
from patchgd_kit.runs.profiles import get_profile
from patchgd_kit.runs.config import TrainConfig
from patchgd_kit.report.orderings import RowResult
from patchgd_kit.paper.beyond import rows_of
from patchgd_kit.paper.numbers import PAPER

ROOT = Path(__file__).resolve().parents[2]
SIZES = (64, 32, 8)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """12 slides (2 per grade), slide03 corrupt and slide06 missing, preprocessed to 64/32/8 px."""
    base = tmp_path_factory.mktemp("panda")
    root = make_root(base / "root", broken=("corrupt", "missing"))
    with pytest.warns(UserWarning, match="2 of 12 PANDA slides could not be read"):
        folders = preprocess_panda(root, base / "out", SIZES, test_fraction=0.5, workers=1,
                                   progress=False)
    return root, base / "out", folders


# --- reading the challenge's files -----------------------------------------------------------

def test_slide_levels_are_read_finest_first_with_jpeg_tiles(tmp_path):
    image = slide_image(0, 256, 192)
    for subifds in (False, True):
        path = tmp_path / f"s{subifds}.tiff"
        write_slide(path, image, subifds=subifds)
        with tifffile.TiffFile(path) as tif:
            assert tif.pages[0].compression == tifffile.COMPRESSION.JPEG
        assert slide_level_shapes(path) == [(256, 192, 3), (64, 48, 3), (16, 12, 3)]
        full = read_slide(path, level=0)
        assert full.shape == (256, 192, 3) and full.dtype == np.uint8
        assert np.abs(full.astype(int) - image).mean() < 3  # JPEG is lossy, but close
        assert read_slide(path, level=2).shape == (16, 12, 3)


def test_auto_level_is_the_coarsest_that_needs_no_upscaling():
    shapes = [(4000, 3000, 3), (1000, 750, 3), (250, 188, 3)]
    assert choose_level(shapes, 1000) == 1
    assert choose_level(shapes, 200) == 2
    assert choose_level(shapes, 8192) == 0  # nothing is big enough: the finest


def test_a_level_the_slide_lacks_is_a_clear_error(tmp_path):
    write_slide(tmp_path / "s.tiff", slide_image(0, 64, 64))
    with pytest.raises(KitError, match=r"slide s.tiff has levels 0..2 .*level 3 is not one of them"):
        read_slide(tmp_path / "s.tiff", level=3)
    with pytest.raises(KitError, match="level -1 is not allowed"):
        read_slide(tmp_path / "s.tiff", level=-1)


def test_unreadable_and_missing_slides_are_named(tmp_path):
    (tmp_path / "bad.tiff").write_bytes(b"not a tiff at all")
    with pytest.raises(KitError, match="slide bad.tiff is unreadable"):
        read_slide(tmp_path / "bad.tiff")
    with pytest.raises(KitError, match="slide gone.tiff is missing"):
        read_slide(tmp_path / "gone.tiff")


@pytest.mark.parametrize("text, message", [
    (None, "no train.csv in"),
    ("image_id,isup_grade\na,1\n", "lacks the column.*data_provider, gleason_score"),
    (HEADER + "a,radboud,6,5+5\n", "line 2: isup_grade '6' of 'a' is not allowed; allowed: an integer 0..5"),
    (HEADER + "a,radboud,x,5+5\n", "isup_grade 'x'"),
    (HEADER + "a,radboud,-1,5+5\n", "isup_grade '-1'"),
    (HEADER + "a,radboud,1,3+3\na,radboud,2,3+4\n", "line 3: image_id 'a' is empty or repeated"),
    (HEADER, "lists no slides"),
])
def test_bad_train_csv(tmp_path, text, message):
    if text is not None:
        (tmp_path / "train.csv").write_text(text)
    with pytest.raises(KitError, match=message):
        read_train_csv(tmp_path)


# --- Appendix B.1's preprocessing --------------------------------------------------------------

def test_fit_to_canvas_keeps_the_aspect_ratio_with_white_borders():
    image = np.zeros((50, 100, 3), np.uint8)  # black, twice as wide as high
    out = np.asarray(fit_to_canvas(image, 64))
    assert out.shape == (64, 64, 3)
    assert (out[:16] == 255).all() and (out[48:] == 255).all()  # 32 rows of image, centred
    assert (out[17:47] == 0).all()


def test_split_is_stratified_deterministic_and_independent_of_row_order():
    rows = [{"image_id": f"s{i:03d}", "isup_grade": i % 6} for i in range(60)]
    split = split_slides(rows, 0.2, seed=1)
    again = split_slides(list(reversed(rows)), 0.2, seed=1)
    assert [r["image_id"] for r in split["test"]] == [r["image_id"] for r in again["test"]]
    assert [sum(r["isup_grade"] == g for r in split["test"]) for g in range(6)] == [2] * 6
    assert len(split["train"]) == 48
    assert split_slides(rows, 0.2, seed=2)["test"] != split["test"]
    capped = split_slides(rows, 0.2, seed=1, per_class_train=3, per_class_test=1)
    assert len(capped["train"]) == 18 and len(capped["test"]) == 6
    assert {r["image_id"] for r in capped["test"]} <= {r["image_id"] for r in split["test"]}
    with pytest.raises(KitError, match="test fraction 1.0 is not allowed"):
        split_slides(rows, 1.0, seed=1)
    with pytest.raises(KitError, match="the test split is empty: 6 slides are too few"):
        split_slides(rows[:6], 0.2, seed=1)


def test_preprocessing_writes_kit_datasets_and_reports_skipped_slides(prepared):
    root, out, folders = prepared
    assert folders == {size: out / f"{size}px" for size in SIZES}
    with open(out / "skipped.csv", newline="") as f:
        skipped = {r["image_id"]: r["reason"] for r in csv.DictReader(f)}
    assert set(skipped) == {"slide03", "slide06"}
    assert "slide03.tiff is unreadable" in skipped["slide03"]
    assert "slide06.tiff is missing" in skipped["slide06"]
    for size in SIZES:
        train, test = UltraMNIST(folders[size], "train"), UltraMNIST(folders[size], "test")
        assert len(train) + len(test) == 10 and train.num_classes == 6
        ids = [r["image"] for r in train.manifest + test.manifest]
        assert not any("slide03" in i or "slide06" in i for i in ids)
        x, y = train[0]
        assert x.shape == (3, size, size) and x.dtype == torch.float32 and 0 <= y <= 5
        assert train.raw(0).shape == (size, size, 3)
        rgb = torch.from_numpy(train.raw(0)).float() / 255  # normalised per channel by the card's stats
        expected = (rgb - torch.tensor(train.mean)) / torch.tensor(train.std)
        assert torch.allclose(x, expected.permute(2, 0, 1), atol=1e-5)
        card = json.loads((folders[size] / "train" / "card.json").read_text())
        assert card["params"]["image_size"] == size and card["num_classes"] == 6
        slides = {split: json.loads((folders[size] / split / "card.json").read_text())["slides"]
                  for split in ("train", "test")}
        assert sum(s["listed"] for s in slides.values()) == 12
        assert sum(s["skipped"] for s in slides.values()) == 2
        assert card["normalization"] == {**train_stats(folders[SIZES[-1]]), "computed_on": card[
            "normalization"]["computed_on"]}
    # The smaller sizes are the canvas shrunk by the box filter: mean colours agree closely.
    big = UltraMNIST(folders[64], "train").raw(0).astype(float).mean((0, 1))
    small = UltraMNIST(folders[8], "train").raw(0).astype(float).mean((0, 1))
    assert np.allclose(big, small, atol=1.5)


def train_stats(folder: Path) -> dict:
    ds = UltraMNIST(folder, "train")
    x = np.stack([ds.raw(i) for i in range(len(ds))]).reshape(-1, 3) / 255
    return {"mean": x.mean(0).round(4).tolist(), "std": x.std(0).round(4).tolist()}


def test_rerun_skips_finished_slides_and_retries_skipped_ones(prepared, tmp_path):
    root, out, _ = prepared
    work = tmp_path / "out"
    shutil.copytree(out, work)
    finished = work / "64px" / "train" / "images"
    mtimes = {p.name: p.stat().st_mtime_ns for p in finished.iterdir()}
    lost = sorted(finished.iterdir())[0]
    lost.unlink()  # as if killed before this slide was written
    (work / "64px" / "train" / "images" / ".x.png.partial").write_bytes(b"half")  # a killed write
    with pytest.warns(UserWarning, match="2 of 12"):
        preprocess_panda(root, work, SIZES, test_fraction=0.5, workers=2, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in finished.iterdir() if p.name != lost.name} == \
        {k: v for k, v in mtimes.items() if k != lost.name}
    assert lost.is_file() and not list(finished.glob(".*"))
    for name in ("manifest.csv", "card.json"):
        assert (work / "8px" / "test" / name).read_bytes() == (out / "8px" / "test" / name).read_bytes()
    cards = {p: p.stat().st_mtime_ns for p in work.rglob("card.json")}
    with pytest.warns(UserWarning, match="2 of 12"):  # nothing new: the cards are left as they are
        preprocess_panda(root, work, SIZES, test_fraction=0.5, workers=1, progress=False)
    assert {p: p.stat().st_mtime_ns for p in work.rglob("card.json")} == cards


def test_a_rerun_with_other_parameters_is_refused(prepared):
    root, out, _ = prepared
    with pytest.raises(KitError, match=r"seed=0 \(asked 1\)"):
        preprocess_panda(root, out, SIZES, test_fraction=0.5, seed=1, workers=1, progress=False)


def test_when_nothing_can_be_read_no_split_is_written(tmp_path):
    root = tmp_path / "root"
    (root / "train_images").mkdir(parents=True)
    (root / "train.csv").write_text(HEADER + "a,radboud,0,0+0\nb,radboud,0,0+0\n")
    with pytest.raises(KitError, match=r"no slide could be read .*2 of 2 skipped.*skipped.csv"):
        preprocess_panda(root, tmp_path / "out", SIZES, test_fraction=0.5, workers=1, progress=False)
    assert not list((tmp_path / "out").rglob("manifest.csv"))
    assert not list((tmp_path / "out").rglob("card.json"))
    assert (tmp_path / "out" / "skipped.csv").read_text().count("is missing") == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(sizes=(8, 64)), r"sizes \(8, 64\) are not allowed; allowed: distinct sizes, largest"),
    (dict(level=-2), "level -2 is not allowed"),
    (dict(test_fraction=0), "test fraction 0 is not allowed"),
])
def test_bad_preprocessing_arguments(tmp_path, kwargs, message):
    root = make_root(tmp_path / "root", grades=(0, 1))
    with pytest.raises(KitError, match=message):
        preprocess_panda(root, tmp_path / "out", **{"sizes": SIZES, "workers": 1, **kwargs})


def test_no_train_images_folder(tmp_path):
    (tmp_path / "train.csv").write_text(HEADER + "a,radboud,0,0+0\n")
    with pytest.raises(KitError, match="no train_images/ folder"):
        preprocess_panda(tmp_path, tmp_path / "out", SIZES, workers=1)


def test_command_line(tmp_path):
    root = make_root(tmp_path / "root", grades=(0, 0, 1, 1))
    script = [sys.executable, str(ROOT / "data_gen" / "panda.py")]
    done = subprocess.run(script + ["--root", str(root), "--out", str(tmp_path / "out"), "--sizes",
                                    "32", "16", "--test-fraction", "0.5", "--no-progress"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(tmp_path / "out" / "32px"), str(tmp_path / "out" / "16px")]
    bad = subprocess.run(script + ["--root", str(tmp_path), "--out", str(tmp_path / "o2")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: no train.csv in")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_train_command_reads_a_panda_folder_with_its_six_classes(prepared, tmp_path, capsys):
    _, _, folders = prepared
    args = ["train", "--data", str(folders[32]), "--out", str(tmp_path / "run"), "--method",
            "patchgd", "--backbone", "mobilenet_v2", "--image-size", "32", "--patch-size", "16",
            "--batch-size", "2", "--epochs", "1", "--warmup-epochs", "0", "--quiet"]
    assert cli_main(args) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["num_classes"] == 6
    assert cli_main(args[:-1] + ["--num-classes", "10", "--out", str(tmp_path / "r2"), "--quiet"]) == 2
    assert "has 6 classes but num_classes is 10; pass --num-classes 6" in capsys.readouterr().err


# --- the stand-in ----------------------------------------------------------------------------

def test_shrunk_dataset_is_the_box_average_with_boxes_scaled(tmp_path):
    source = ensure_dataset(tmp_path, 64, 1, 1, seed=0, progress=False)
    target = shrink_dataset(source, 16, progress=False)
    assert shrink_dataset(source, 16, progress=False) == target  # made once
    big, small = UltraMNIST(source, "test"), UltraMNIST(target, "test")
    assert small.image_size == 16 and small.labels == big.labels
    expected = big.raw(0).reshape(16, 4, 16, 4).mean((1, 3))
    assert np.abs(small.raw(0) - expected).max() <= 1  # PIL rounds in fixed point
    assert small.manifest[0]["boxes"] == [[round(v / 4) for v in box] for box in big.manifest[0]["boxes"]]
    assert small.manifest[0]["digits"] == big.manifest[0]["digits"]
    assert not list(target.glob(".*"))


def test_scaled_sizes_divide_the_paper_sizes():
    assert scaled_sizes(get_profile("paper")) == {4096: 4096, 2048: 2048, 512: 512}
    assert scaled_sizes(get_profile("cpu", panda_scale=16)) == {4096: 256, 2048: 128, 512: 32}
    with pytest.raises(KitError, match="panda_scale 3 .* is not allowed"):
        scaled_sizes(get_profile("cpu", panda_scale=3))


# --- Tables 3 and 4 ----------------------------------------------------------------------------

def test_scaled_patches_keep_the_paper_grid_or_divide_it():
    paper, cpu = get_profile("paper"), get_profile("cpu", panda_scale=16, panda_grid_scale=4)
    for image, patch in ((512, 128), (2048, 128), (4096, 128), (4096, 256)):
        assert scaling.scaled_patch(paper, image, patch) == patch
    # cpu: images / 16; grid sides 4 → 2 (at least 2), 16 → 4, 32 → 8, 16 → 4
    assert [scaling.scaled_patch(cpu, i, p) for i, p in ((512, 128), (2048, 128), (4096, 128), (4096, 256))] \
        == [16, 32, 32, 64]


def test_rows_run_on_the_standin_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_RUNS", str(tmp_path))
    monkeypatch.delenv(scaling.PANDA_ROOT_ENV, raising=False)
    profile = get_profile("smoke")
    data = scaling.panda_data(profile, progress=False)
    assert data.name == "stand-in" and data.num_classes == 10 and "not PANDA" in data.description
    sizes = {paper: UltraMNIST(folder, "test").image_size for paper, folder in data.folders.items()}
    assert sizes == scaled_sizes(profile)
    values = scaling.scale_panda_row(profile, {"method": "patchgd", "image_size": 2048, "patch_size": 128})
    assert values == {"data": str(data.folders[2048]), "image_size": 2048 // profile.panda_scale,
                      "num_classes": 10, "epochs": profile.panda_epochs,
                      "warmup_epochs": profile.warmup_epochs,
                      "patch_size": scaling.scaled_patch(profile, 2048, 128)}


def test_rows_run_on_panda_when_its_root_is_set(tmp_path, monkeypatch):
    root = make_root(tmp_path / "root", grades=tuple(g for g in range(6) for _ in range(5)))
    monkeypatch.setenv("KIT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv(scaling.PANDA_ROOT_ENV, str(root))
    profile = get_profile("smoke", panda_scale=64, panda_per_class_train=2, panda_per_class_test=1)
    data = scaling.panda_data(profile, progress=False)
    assert data.name == "PANDA" and data.num_classes == 6
    train = UltraMNIST(data.folders[4096], "train")
    assert train.image_size == 64 and len(train) == 12 and train.num_classes == 6
    assert UltraMNIST(data.folders[512], "test").image_size == 8
    assert scaling.scale_panda_row(profile, {"method": "gd", "image_size": 512})["num_classes"] == 6


def test_the_full_resolution_row_runs_only_where_panda_is(tmp_path, monkeypatch):
    from patchgd_kit.reproduce.tableruns import rows_to_run
    monkeypatch.setenv("KIT_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv(scaling.PANDA_ROOT_ENV, raising=False)
    profile = get_profile("paper")
    assert "patchgd_fp16_full" not in [r.id for r in rows_to_run("table3", profile)]
    row = rows_to_run("table3", profile, rows=("patchgd_fp16_full",))[0]
    with pytest.raises(KitError, match="full resolution, which the stand-in has not; set PANDA_ROOT"):
        scaling.configure(PAPER["table3"], row, get_profile("smoke"))
    monkeypatch.setenv(scaling.PANDA_ROOT_ENV, str(tmp_path))
    assert [r.id for r in rows_to_run("table3", profile)][-1] == "patchgd_fp16_full"
    assert "patchgd_fp16_full" not in [r.id for r in rows_to_run("table3", profile, alternatives=False)]


def test_the_full_resolution_row_trains_on_the_slides_level_read_a_patch_at_a_time(tmp_path, monkeypatch):
    from patchgd_kit.reproduce.tableruns import run_table
    from patchgd_kit.data.tiled import TiledImage
    root = make_root(tmp_path / "root", grades=(0, 0, 0, 5, 5, 5))  # 2 train, 2 test slides: 50 inner iterations each
    monkeypatch.setenv("KIT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv(scaling.PANDA_ROOT_ENV, str(root))
    # 32768 / 64 = 512 px from level 2 (16x smaller than level 0: the coarsest within 64x), 16x16
    # patches of 32 px (at batch 1 the head's BatchNorm needs a grid of 16 or more: at 8 it sees one value)
    profile = get_profile("smoke", panda_scale=64, panda_grid_scale=8, panda_per_class_train=1,
                          panda_per_class_test=1)
    [result] = run_table("table3", profile, rows=("patchgd_fp16_full",), progress=False)
    config = result.config
    assert (config.image_size, config.patch_size, config.num_classes) == (512, 32, 6)
    train = UltraMNIST(config.data, "train")
    card = json.loads((Path(config.data) / "train" / "card.json").read_text())
    assert card["params"]["level"] == 2 and train.tiled and len(train) == 2
    image, _ = train[0]
    assert isinstance(image, TiledImage) and image.width == tifffile.imread(image.path, key=2).shape[1]
    assert result.runs[0]["final"]["optimizer_steps"] == 2 and len(result.runs[0]["test_predictions"]) == 2
    assert result.runs[0]["final"]["precision"] == config_module.precision(config)  # recorded by the epoch
    assert "not in the paper" in result.row.label and result.plan["batch_size"] == 1


def test_parameters_are_the_papers_truncated_to_two_decimals():
    assert latency.paper_parameters_m("gd", 2048, None) == 23.52
    assert latency.paper_parameters_m("patchgd", 512, 128) == 26.39
    assert latency.paper_parameters_m("patchgd", 4096, 128) == 26.41


@pytest.mark.parametrize("method, amp, native_bf16, precision", [
    ("gd", False, True, "fp32"),
    ("gd", True, True, "bf16 autocast (the CPU stand-in for fp16)"),
    ("patchgd", True, True, "fp32 (fp16 row; PatchGD diverged under CPU bf16 autocast)"),
    ("gd", True, False, "fp32 (fp16 row; this CPU has no native bf16)")])
def test_latency_is_measured_on_the_runs_model(method, amp, native_bf16, precision, monkeypatch):
    monkeypatch.setattr(config_module, "cpu_has_native_bf16", lambda: native_bf16)
    config = TrainConfig(method=method, backbone="mobilenet_v2", image_size=32, patch_size=16,
                         batch_size=2, amp=amp, device="cpu")
    bf16 = amp and native_bf16 and method != "patchgd"
    assert config_module.autocast_dtype(config, torch.device("cpu")) == (torch.bfloat16 if bf16 else None)
    measured = latency.measure_latency(config, warmup=1, repeats=2)
    assert measured["images_per_s"] > 0 and measured["batch_size"] == 2
    assert measured["device"].startswith("CPU") and measured["repeats"] == 2
    assert measured["precision"] == precision


def fake_results(name: str, beyond: bool = False) -> list:
    """RowResults of every row of a PANDA table (and its rows not in the paper) with made-up runs
    (accuracy 20, QWK 0.1)."""
    table = PAPER[name]
    out = []
    for row in rows_of(table, (name,) if beyond else ()):
        s = table.settings(row)
        config = TrainConfig(method=s["method"], image_size=64, batch_size=4, amp=s["amp"],
                             patch_size=16 if s["method"] == "patchgd" else None,
                             sampling=s.get("sampling", 0.25), max_sampled=s["max_sampled"],
                             device="cpu", num_classes=10,
                             downscaled_side=32 if s["method"] == "gd-downscaled" else None)
        runs = [{"final": {"accuracy": 20.0, "qwk": 0.1},
                 "history": [{"accuracy": 20.0, "train_images_per_s": 5.0, "eval_seconds": 1.0}]}]
        out.append(RowResult(table, row, config, {"batch_size": 8, "k": 1, "estimated_peak_bytes": 2**33},
                             "64 px; 30 train / 20 test images; 1 epochs", runs))
    return out


def test_precision_column_says_what_the_run_recorded_not_this_machine(monkeypatch):
    monkeypatch.setattr(config_module, "cpu_has_native_bf16", lambda: False)
    fp16_row = fake_results("table3")[4]
    assert fp16_row.config.amp
    assert tables.ran_in(fp16_row) == "fp32 (fp16 row; this CPU has no native bf16)"  # stored before epochs recorded it
    history = fp16_row.runs[0]["history"]
    history[0]["precision"] = "bf16 autocast (the CPU stand-in for fp16)"  # trained on a CPU with bf16
    assert tables.ran_in(fp16_row) == "bf16 autocast (the CPU stand-in for fp16)"
    history.append({"precision": "fp32 (fp16 row; this CPU has no native bf16)"})  # resumed on this one
    assert tables.ran_in(fp16_row) == ("bf16 autocast (the CPU stand-in for fp16) / "
                                       "fp32 (fp16 row; this CPU has no native bf16)")


def test_tables_name_the_standin_in_the_title_and_every_row(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(tables, "run_latency", lambda result, profile: {
        "images_per_s": 12.345, "device": "CPU (2 threads)"})
    data = scaling.PandaData("stand-in", "stand-in, not PANDA: made up", 10, {})
    profile = get_profile("smoke")
    tables.write_panda_table(fake_results("table3"), tmp_path, data, profile, footer="hours: none\n")
    csv3 = pd.read_csv(tmp_path / "table3.csv")
    assert csv3["data"].tolist() == ["stand-in"] * 9
    assert csv3["paper params (M)"].tolist() == [23.52, 26.39, 23.52, 26.4, 23.52, 26.4, 23.52, 26.41, 26.4]
    assert csv3["params (M)"].tolist() == csv3["paper params (M)"].tolist()
    assert csv3["latency img/s"].tolist() == [12.35] * 9 and csv3["paper latency img/s"].iloc[0] == 618.05
    assert csv3["precision"].tolist() == ["fp32"] * 4 + ["fp32 (fp16 row; this CPU has no native bf16)"] * 5
    assert csv3["sampling %"].tolist()[:2] == ["–", "30%"]
    md3 = (tmp_path / "table3.md").read_text()
    assert md3.startswith("## Table 3: ResNet50 on PANDA (6 ISUP grades) — run on the stand-in")
    assert "stand-in, not PANDA: made up" in md3 and "hours: none" in md3
    assert "Of the paper's 4 orderings here" in md3 and "**tie**, within the noise" in md3
    tables.write_panda_table(fake_results("table3", beyond=True), tmp_path, data, profile)
    beyond = pd.read_csv(tmp_path / "table3.csv").iloc[9:]
    streaming = ["Streaming SGD (not in the paper)", "GD, BatchNorm frozen (not in the paper)"] * 2  # 2048, 4096 px
    assert beyond["method"].tolist() == ["GD-checkpoint (not in the paper)", "GD-downscaled (not in the paper)",
                                         *streaming,
                                         "PatchGD-fp16, full resolution (not in the paper) (p = 16; paper 256)"]
    assert (beyond["paper params (M)"] == "–").all() and beyond["paper accuracy %"].isna().all()
    # GD's ResNet50 however it steps; PatchGD's head, whose Linear reads a 16x16 map at 32,768 px
    assert beyond["params (M)"].astype(float).tolist() == [23.52] * 6 + [26.78]
    tables.write_panda_table(fake_results("table4"), tmp_path, data, profile)
    csv4 = pd.read_csv(tmp_path / "table4.csv")
    assert csv4["data"].tolist() == ["stand-in"] * 6 and "latency img/s" not in csv4.columns
    assert csv4["max sampled %"].tolist() == ["100%", "100%", "100%", "70%", "50%", "30%"]
    assert (tmp_path / "table4.md").read_text().startswith("## Table 4: ")
