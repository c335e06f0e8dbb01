"""The digits-pretrained backbone: deterministic, loadable by every method, and bad files refused."""
import hashlib

import numpy as np
import pytest
import torch

from patchgd_kit.cli import main
from patchgd_kit.data.ultramnist import load_digit_pools
from patchgd_kit.errors import KitError
from patchgd_kit.core.methods import METHODS, build_model
from patchgd_kit.runs.pretrain import digit_crops, load_weights_card, pretrain_backbone


def _tensors_digest(path) -> str:
    state = torch.load(path, weights_only=True)["state_dict"]
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode() + state[key].numpy().tobytes())
    return digest.hexdigest()


def test_digit_crops_hold_one_train_pool_digit_of_the_profile_sizes():
    pool = load_digit_pools("bundled")["train"]
    crops, labels = digit_crops(np.random.default_rng(0), pool, 128, 64, 32, min_digit_side=12)
    assert crops.shape == (32, 64, 64) and crops.dtype == torch.uint8 and labels.shape == (32,)
    assert set(labels.tolist()) <= set(range(10))
    lit = crops > 0
    rows, cols = lit.any(2), lit.any(1)
    for r, c in zip(rows, cols):  # the ink fits in one square of 12..64 px
        assert 1 <= max(int(r.sum()), int(c.sum())) <= 64
    again, labels_again = digit_crops(np.random.default_rng(0), pool, 128, 64, 32, min_digit_side=12)
    assert torch.equal(again, crops) and torch.equal(labels_again, labels)


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet50"])
def test_same_seed_same_weights_and_every_method_loads_them(tmp_path, backbone):
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    card = pretrain_backbone(backbone, 64, 32, first, steps=2, batch_size=4, test_crops=8, progress=False)
    pretrain_backbone(backbone, 64, 32, second, steps=2, batch_size=4, test_crops=8, progress=False)
    assert _tensors_digest(first) == _tensors_digest(second)
    assert 0 <= card["digit_accuracy_pct"] <= 100 and load_weights_card(first) == card
    # A rerun with the same settings keeps the file; other settings are refused, never mixed.
    assert pretrain_backbone(backbone, 64, 32, first, steps=2, batch_size=4, test_crops=8, progress=False) == card
    with pytest.raises(KitError, match="pretrained with other settings"):
        pretrain_backbone(backbone, 64, 32, first, steps=3, batch_size=4, test_crops=8, progress=False)
    trunk = torch.load(first, weights_only=True)["state_dict"]
    first_conv = trunk["conv1.weight" if backbone == "resnet50" else "features.0.0.weight"]
    last_bn = [v for k, v in trunk.items() if k.endswith("running_var")][-1]
    for method in set(METHODS) - {"streaming"}:  # no tile fits 64 px; it builds GD's classifier_model alike
        tensors = list(build_model(method, backbone, 10, 64, 32, weights=str(first)).state_dict().values())
        # The pretrained trunk reaches every method's model, from the first conv to the last BatchNorm.
        for wanted in (first_conv, last_bn):
            assert any(t.shape == wanted.shape and torch.equal(t, wanted) for t in tensors), method
    fresh = build_model("gd", backbone, 10, 64).state_dict().values()
    assert not any(t.shape == first_conv.shape and torch.equal(t, first_conv) for t in fresh)


def test_bad_weights_files_get_one_clear_line(tiny_data, tmp_path, capsys):
    not_torch = tmp_path / "notes.txt"
    not_torch.write_text("hello")
    wrong = tmp_path / "wrong.pt"
    torch.save({"state_dict": {"layer.weight": torch.zeros(2)}}, wrong)
    other_backbone = tmp_path / "mobilenet.pt"
    pretrain_backbone("mobilenet_v2", 64, 32, other_backbone, steps=1, batch_size=2, test_crops=4, progress=False)
    for path, message in ((not_torch, "is not a readable torch state dict"),
                          (wrong, "does not fit torchvision's mobilenet_v2"),
                          (other_backbone, "does not fit torchvision's resnet50")):
        backbone = "resnet50" if path == other_backbone else "mobilenet_v2"
        code = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"), "--quiet",
                     "--method", "gd", "--backbone", backbone, "--image-size", "64", "--batch-size", "4",
                     "--epochs", "1", "--weights", str(path)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.count("\n") == 0 and message in err, err


def test_pretrain_command_writes_a_file_that_train_loads(tiny_data, tmp_path, capsys):
    weights = tmp_path / "w.pt"
    assert main(["pretrain", "--backbone", "mobilenet_v2", "--image-size", "64", "--steps", "1", "--quiet",
                 "--out", str(weights)]) == 0
    assert '"digit_accuracy_pct"' in capsys.readouterr().out
    assert main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"), "--quiet", "--method",
                 "patchgd", "--backbone", "mobilenet_v2", "--image-size", "64", "--patch-size", "32",
                 "--batch-size", "10", "--epochs", "1", "--weights", str(weights)]) == 0
    for args, message in ((["--backbone", "vgg"], "unknown backbone 'vgg'"),
                          (["--backbone", "resnet50", "--steps", "0"], "steps 0 is not allowed; allowed: an integer in 1..1000000"),
                          (["--backbone", "resnet50", "--lr", "0"], "lr 0.0 is not allowed; allowed: a number > 0"),
                          (["--backbone", "resnet50", "--crop-size", "100"], "crop size 100 must be between 1 and")):
        assert main(["pretrain", "--image-size", "64", "--out", str(tmp_path / "x.pt"), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
