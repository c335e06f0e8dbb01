"""UltraMNIST: digit pools, the generator's recipe (SPEC §2), the files on disk and the Dataset."""
import csv
import hashlib
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from patchgd_kit.data import digits, ultramnist
from patchgd_kit.data.ultramnist import UltraMNIST, ensure_dataset, generate_split, normalize_uint8
from patchgd_kit.data.digits import MNIST_MEAN, MNIST_STD, draw_scale_factors, generate_image, load_digit_pools
from patchgd_kit.errors import KitError

SIZE = 64


def make(out, split="train", per_class=3, image_size=SIZE, seed=3, workers=1):
    return generate_split(out, split, per_class, image_size, seed, workers=workers, progress=False)


def read_manifest(folder: Path) -> list[dict]:
    with open(folder / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def folder_bytes(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pools():
    return load_digit_pools()


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """6 images per class at 64 px, made by two worker processes."""
    return make(tmp_path_factory.mktemp("um"), per_class=6, workers=2)


# --- digit pools and the recipe -------------------------------------------------------------------

def test_pools_are_real_mnist_stratified_and_disjoint(pools):
    train_images, train_labels = pools["train"]
    test_images, test_labels = pools["test"]
    assert train_images.shape == (4000, 28, 28) and test_images.shape == (1000, 28, 28)
    assert train_images.dtype == np.uint8 and train_labels.dtype == np.int64
    assert np.bincount(train_labels).tolist() == [400] * 10
    assert np.bincount(test_labels).tolist() == [100] * 10
    assert train_images.max() == 255 and train_images.mean() > 20  # digits, not blank or scaled
    digest = lambda images: {hashlib.sha1(im.tobytes()).hexdigest() for im in images}  # noqa: E731
    assert len(digest(train_images)) == 4000
    assert not digest(train_images) & digest(test_images)


def test_multisets_are_every_sorted_3_to_5_digit_combination():
    for label in range(10):
        brute = {tuple(sorted(c)) for n in (3, 4, 5)
                 for c in itertools.product(range(10), repeat=n) if sum(c) == label}
        assert sorted(digits.MULTISETS[label]) == sorted(brute)
    assert digits.MULTISETS[0] == [(0, 0, 0), (0, 0, 0, 0), (0, 0, 0, 0, 0)]


def test_scale_factors_follow_the_weights():
    f = draw_scale_factors(np.random.default_rng(0), 200_000)
    assert set(np.unique(f)) <= {0.5, *range(1, 10)}
    freq = np.array([np.mean(np.where(f == 0.5, 1, f) == k) for k in range(1, 10)])
    paper = np.array([.20, .16, .12, .08, .04, .04, .08, .12, .16])  # Appendix B.2, f = 1..9
    assert np.abs(freq - paper).max() < 0.01, freq
    assert abs(np.mean(f == 0.5) / np.mean(f <= 1) - 0.5) < 0.02


def test_digit_sides_scale_with_the_image():
    assert [digits.digit_side(f, 512) for f in (0.5, 1, 2, 9)] == [14, 28, 56, 252]
    assert [digits.digit_side(f, 128) for f in (0.5, 1, 9)] == [4, 7, 63]
    assert digits.digit_side(0.5, 32) == digits.MIN_DIGIT_SIDE


def test_generate_image_places_nearest_neighbour_digits_on_black(pools):
    # Digits of a single grey value make every pixel predictable: exactly the boxes are lit.
    flat_pool = (np.full((10, 28, 28), 100, np.uint8), np.arange(10))
    for i in range(200):
        image, values, boxes = generate_image(np.random.default_rng(i), flat_pool, i % 10, 128)
        assert image.dtype == np.uint8 and image.shape == (128, 128)
        assert sum(values) == i % 10 and 3 <= len(values) <= 5 and len(boxes) == len(values)
        lit = np.zeros_like(image, bool)
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128 and x1 - x0 == y1 - y0
            assert not lit[y0:y1, x0:x1].any()  # no two boxes share a pixel
            lit[y0:y1, x0:x1] = True
        assert np.array_equal(image, np.where(lit, 100, 0))
    # A real digit enlarged by an integer factor is that digit with each pixel repeated.
    digit = pools["train"][0][0]
    assert np.array_equal(digits.upscale(digit, 84), digit.repeat(3, 0).repeat(3, 1))
    assert np.array_equal(digits.upscale(digit, 14), digit[1::2, 1::2])  # centre of each 2x2


def test_crowded_canvas_fails_clearly(pools):
    with pytest.raises(KitError, match="6 px"):
        generate_image(np.random.default_rng(0), pools["train"], 9, 6)
    with pytest.raises(KitError, match="label 10"):
        generate_image(np.random.default_rng(0), pools["train"], 10, SIZE)


# --- a split on disk ------------------------------------------------------------------------------

def test_split_is_balanced_and_matches_the_recipe(split):
    rows = read_manifest(split)
    assert Counter(int(r["label"]) for r in rows) == {c: 6 for c in range(10)}
    for row in rows:
        digits, boxes = json.loads(row["digits"]), json.loads(row["boxes"])
        assert sum(digits) == int(row["label"]) and 3 <= len(digits) <= 5
        assert len(boxes) == len(digits) and all(0 <= d <= 9 for d in digits)
        for (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) in itertools.combinations(boxes, 2):
            assert ax0 >= bx1 or bx0 >= ax1 or ay0 >= by1 or by0 >= ay1
        with Image.open(split / row["image"]) as im:
            assert im.mode == "L" and im.size == (SIZE, SIZE)
            image = np.array(im)
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
            image[y0:y1, x0:x1] = 0
        assert not image.any()  # black outside the digits
    card = json.loads((split / "card.json").read_text())
    assert card["params"] == {"split": "train", "per_class": 6, "image_size": SIZE, "seed": 3,
                              "source": "bundled", "recipe_version": ultramnist.RECIPE_VERSION}
    assert card["counts_per_class"] == {str(c): 6 for c in range(10)}
    assert card["digit_pools"]["sizes"] == {"train": 4000, "test": 1000}


def test_same_seed_same_bytes_for_any_worker_count(split, tmp_path):
    again = make(tmp_path, per_class=6, workers=1)
    assert folder_bytes(again) == folder_bytes(split)
    other_seed = make(tmp_path / "s4", per_class=6, seed=4)
    assert read_manifest(other_seed) != read_manifest(split)
    test_split = make(tmp_path, split="test", per_class=6)
    assert read_manifest(test_split) != read_manifest(split)


def test_rerun_skips_and_other_parameters_are_refused(split, monkeypatch):
    before = folder_bytes(split)
    monkeypatch.setattr(ultramnist, "load_digit_pools", lambda *a: pytest.fail("regenerated"))
    assert make(split.parent, per_class=6) == split
    assert folder_bytes(split) == before
    with pytest.raises(KitError, match=r"per_class=6 \(asked 7\)"):
        make(split.parent, per_class=7)
    with pytest.raises(KitError, match="image_size"):
        make(split.parent, per_class=6, image_size=128)


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, RuntimeError])
def test_interrupted_generation_leaves_no_split(tmp_path, monkeypatch, interrupt):
    calls = itertools.count()
    real = ultramnist.generate_image

    def flaky(*args, **kwargs):
        if next(calls) == 5:
            raise interrupt("stop")
        return real(*args, **kwargs)

    monkeypatch.setattr(ultramnist, "generate_image", flaky)
    with pytest.raises(interrupt):
        make(tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(ultramnist, "generate_image", real)
    assert len(read_manifest(make(tmp_path))) == 30  # and a rerun completes


def test_ensure_dataset_makes_both_splits_once(tmp_path, monkeypatch):
    root = ensure_dataset(tmp_path, 64, 2, 1, seed=0, progress=False)
    assert root.parent == tmp_path
    assert len(UltraMNIST(root, "train")) == 20 and len(UltraMNIST(root, "test")) == 10
    monkeypatch.setattr(ultramnist, "load_digit_pools", lambda *a: pytest.fail("regenerated"))
    assert ensure_dataset(tmp_path, 64, 2, 1, seed=0, progress=False) == root


@pytest.mark.parametrize("kwargs, message", [
    (dict(split="val"), "split 'val'"),
    (dict(per_class=0), "per_class 0"),
    (dict(image_size=16), "image_size 16"),
    (dict(seed=-1), "seed -1"),
    (dict(workers=0), "workers 0"),
    (dict(per_class=2.5), "per_class 2.5"),
])
def test_bad_generator_arguments(tmp_path, kwargs, message):
    with pytest.raises(KitError, match=message):
        make(tmp_path, **kwargs)


def test_bad_digit_sources(tmp_path):
    with pytest.raises(KitError, match="'mnist'"):
        generate_split(tmp_path, "train", 1, SIZE, 0, source="mnist")
    with pytest.raises(KitError, match="needs root"):
        load_digit_pools("torchvision")
    with pytest.raises(KitError, match=f"MNIST not available under {tmp_path}.*download"):
        load_digit_pools("torchvision", root=tmp_path)


def test_command_line_reports_bad_input_on_one_line(tmp_path, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "ultramnist_cli", Path(__file__).resolve().parents[2] / "data_gen" / "ultramnist.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(["--out", str(tmp_path), "--per-class", "0"]) == 2  # the kit's `generate`, under its old name
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "per_class 0" in err
    assert cli.main(["--out", str(tmp_path), "--per-class", "1", "--image-size", "32", "--split", "test"]) == 0
    assert (tmp_path / "test" / "manifest.csv").is_file() and not (tmp_path / "train").exists()


# --- the Dataset ------------------------------------------------------------------------------

def test_dataset_normalises_and_caches(split):
    ds = UltraMNIST(split.parent, "train")
    assert len(ds) == 60 and ds.image_size == SIZE and ds.num_classes == 10
    assert ds.labels == [int(r["label"]) for r in read_manifest(split)]
    row = ds.manifest[7]
    assert sum(row["digits"]) == ds.labels[7] and len(row["boxes"]) == len(row["digits"])
    x, y = ds[7]
    assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32 and y == ds.labels[7]
    raw = torch.from_numpy(ds.raw(7)).float()
    expected = (raw / 255 - MNIST_MEAN) / MNIST_STD
    for channel in x:
        assert torch.allclose(channel, expected, atol=1e-6)
    assert x.min() == pytest.approx(-MNIST_MEAN / MNIST_STD) and x.max() > 2.5
    images, labels = ds.as_tensors()
    assert images.shape == (60, SIZE, SIZE) and images.dtype == torch.uint8
    assert labels.tolist() == ds.labels
    assert torch.equal(normalize_uint8(images[:4]), torch.stack([ds[i][0] for i in range(4)]))


def test_cache_keeps_images_in_memory(tmp_path):
    folder = make(tmp_path, per_class=1)
    cached, uncached = UltraMNIST(tmp_path, cache=True), UltraMNIST(tmp_path, cache=False)
    first = cached.raw(0).copy()
    uncached.raw(0)
    (folder / cached.manifest[0]["image"]).unlink()
    assert np.array_equal(cached.raw(0), first)
    with pytest.raises(KitError, match="000000.png is unreadable .*No such file"):
        uncached.raw(0)


def break_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.csv"
    path.write_text(edit(path.read_text()))


@pytest.mark.parametrize("edit, message", [
    (lambda text: text.replace(',0,"[', ',zero,"[', 1), "corrupt manifest .*line 2"),
    (lambda text: text.replace("boxes", "boxen", 1), r"missing columns \['boxes'\]"),
    (lambda text: text.replace(',9,"[', ',10,"[', 1), "label 10 is outside"),
    (lambda text: text.replace("000003.png", "999999.png", 1), "missing image .*999999.png"),
    (lambda text: text.splitlines()[0] + "\n", "no images"),
])
def test_dataset_rejects_bad_splits(tmp_path, edit, message):
    folder = make(tmp_path, per_class=1)
    break_manifest(folder, edit)
    with pytest.raises(KitError, match=message):
        UltraMNIST(tmp_path)


def test_dataset_rejects_missing_parts(tmp_path):
    with pytest.raises(KitError, match=f"no UltraMNIST split at {tmp_path / 'test'}"):
        UltraMNIST(tmp_path, "test")
    folder = make(tmp_path, per_class=1)
    (folder / "manifest.csv").unlink()
    with pytest.raises(KitError, match="missing manifest"):
        UltraMNIST(tmp_path)
    (folder / "card.json").unlink()
    with pytest.raises(KitError, match="card.json"):
        UltraMNIST(tmp_path)


def test_a_digit_floor_draws_small_digits_at_the_floor_and_keeps_the_rest():
    pool = load_digit_pools("bundled")["train"]
    sides = [x1 - x0 for seed in range(40)
             for x0, _, x1, _ in generate_image(np.random.default_rng(seed), pool, seed % 10, 128,
                                                min_digit_side=24)[2]]
    assert min(sides) == 24 and {28, 63} & set(sides)  # f <= 3 at the floor; larger digits as the recipe
    assert set(sides) <= {24, 28, 35, 42, 49, 56, 63}
