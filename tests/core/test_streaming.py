"""Streaming SGD (``streaming``, lightstream through the kit's adapter): streamed gradients are plain
backprop's, a tile too small gets one clear line, BatchNorm stays frozen. Truncated trunks at small
sizes keep this fast; benchmarks/bench_streaming.py runs the whole ResNet50 and MobileNetV2 at 1024 px."""
import copy
import json

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from patchgd_kit.core import streaming
from patchgd_kit.planner import alternatives as altplan
from patchgd_kit.reproduce import tableruns
from patchgd_kit.cli import main
from patchgd_kit.errors import KitError
from patchgd_kit.core.methods import build_model
from patchgd_kit.core.models import trunk_of
from patchgd_kit.runs.profiles import get_profile


def _resnet_stem_and_block() -> nn.Sequential:
    """ResNet50's stem (conv, BatchNorm, ReLU, max-pool) and first bottleneck (its in-place residual add
    and strided downsample): every kind of layer the full trunk has, at stride 4."""
    net = tvm.resnet50()
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1[0])


def _with_pretrained_like_batchnorm(trunk: nn.Module) -> nn.Module:
    """Running statistics away from 0 and 1, as pretrained ones are (they broke lightstream's statistics)."""
    generator = torch.Generator().manual_seed(0)
    for m in trunk.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=generator) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
    return trunk


# ResNet's stem and block in float64 on 3 x 3 tiles (an inner one too): equal to rounding. MobileNetV2's
# depthwise convs (20x slower in float64 here) in float32 on 2 x 2 tiles: equal to float32's rounding.
@pytest.mark.parametrize("trunk, side, dtype, rtol", [
    (_resnet_stem_and_block, 96, torch.float64, 1e-10),
    (lambda: tvm.mobilenet_v2().features[:4], 80, torch.float32, 1e-5)], ids=["resnet50-float64", "mobilenet_v2-float32"])
def test_streaming_gradients_equal_plain_backprop(trunk, side, dtype, rtol):
    torch.manual_seed(0)
    plain = _with_pretrained_like_batchnorm(trunk()).to(dtype)
    streaming.freeze_batchnorm(plain)
    streamed = streaming.stream(copy.deepcopy(plain), 64)
    image = torch.randn(1, 3, side, side, dtype=dtype)
    reference = plain(image)
    grad = torch.randn_like(reference)
    reference.backward(grad)
    assert (streamed(image) - reference).abs().max() <= rtol * reference.abs().max()
    streamed.backward(image, grad)
    # 35 of 64 px of each tile's input gradient are border; each layer's gradient is stitched from the tiles.
    assert streamed.tile_gradient_lost.top + streamed.tile_gradient_lost.bottom == 35
    pairs = [(p, q) for p, q in zip(plain.parameters(), streamed.stream_module.parameters()) if p.requires_grad]
    assert len(pairs) == sum(isinstance(m, nn.Conv2d) for m in plain.modules())  # the convs: BatchNorm frozen
    for p, q in pairs:
        assert q.grad is not None and (q.grad - p.grad).abs().max() <= rtol * p.grad.abs().max()


def test_a_streaming_step_trains_the_convs_and_head_and_leaves_batchnorm_as_it_was():
    torch.manual_seed(1)
    trunk = _with_pretrained_like_batchnorm(_resnet_stem_and_block())
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 3))
    plain = nn.Sequential(copy.deepcopy(trunk), copy.deepcopy(head)).double()
    streaming.freeze_batchnorm(plain)
    model = streaming.StreamingClassifier(trunk, head, 64).double().train()
    norms = [m for m in model.trunk.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(not m.training and not m.weight.requires_grad for m in norms)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    images, labels = torch.randn(2, 3, 96, 96, dtype=torch.float64), torch.tensor([0, 2])
    loss, steps = streaming.train_batch(model, images, labels, torch.optim.SGD(model.parameters(), lr=0.1))
    expected = nn.functional.cross_entropy(plain(images), labels)
    expected.backward()
    torch.optim.SGD(plain.parameters(), lr=0.1).step()
    assert steps == 1 and torch.allclose(loss, expected.detach(), rtol=1e-12)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    for p, q in zip(plain.parameters(), [*model.trunk.parameters(), *model.head.parameters()]):
        assert torch.allclose(p, q, rtol=1e-10, atol=1e-12)  # the same SGD step as plain backprop
    assert trunk_of(model, "resnet50") is model.trunk
    assert streaming.predict(model, images).shape == (2, 3)


def test_streaming_refuses_a_tile_too_small_in_one_line(capsys):
    with pytest.raises(KitError, match=r"^tile too small: ResNet50 needs ≥ 864 px, got 512$"):
        streaming.build("resnet50", 10, 2048, tile_size=512)
    with pytest.raises(KitError, match=r"^tile too small: no exact value left at"):
        streaming.stream(_resnet_stem_and_block(), 32)  # the stem and block need 35 px of border
    with pytest.raises(KitError, match="smaller than MobileNetV2's smallest usable tile .992 px.: streaming cannot"):
        build_model("streaming", "mobilenet_v2", 10, 512)
    assert streaming.min_tile("resnet50") == 864 and streaming.tile_for("resnet50", 1024) == 960
    assert streaming.tile_for("resnet50", 4096) == 1664
    code = main(["plan", "--method", "streaming", "--backbone", "resnet50", "--image-size", "512", "--budget", "16GB"])
    assert code == 2 and capsys.readouterr().err.strip().count("\n") == 0


def test_streaming_tile_is_the_smallest_with_as_few_backward_tiles_as_the_widest():
    # 1024 px ResNet50: 992 and 960 px both stream in 2 x 2 backward tiles (exact part 160 and 128 px of
    # the 213 px left after the border), 928 in 3 x 3: the kit takes 960.
    assert [streaming.backward_tiles_per_side("resnet50", 1024, t) for t in (992, 960, 928, 864)] == [2, 2, 3, 7]
    assert streaming.tile_for("resnet50", 2048) == 1472 and streaming.tile_for("resnet50", 4096) == 1664
    assert streaming.backward_tiles_per_side("resnet50", 800, 864) == 1


def test_streaming_is_written_for_the_pinned_lightstream(monkeypatch):
    from importlib import metadata
    assert metadata.version("lightstream") == streaming.LIGHTSTREAM_VERSION
    monkeypatch.setattr(metadata, "version", lambda name: "1.0.8")
    with pytest.raises(KitError, match="written for lightstream==1.0.7, found 1.0.8"):
        streaming._lightstream()


def test_plan_streaming_prints_a_plan_whose_peak_is_the_tile_step_plus_whole_maps(capsys):
    assert main(["plan", "--method", "streaming", "--backbone", "resnet50", "--image-size", "4096", "--budget", "16GB",
                 "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["method"] == "streaming" and plan["batch_size"] >= 1 and plan["estimator"].startswith("tile 1664 px")
    per_image = 3 * 4096**2 * 4 + 2 * 2048 * 128**2 * 4  # the image, the output map and its gradient, fp32
    assert plan["next_peak_bytes"] - plan["estimated_peak_bytes"] == per_image
    assert altplan.streaming_peak("resnet50", 4096, plan["batch_size"]) == plan["estimated_peak_bytes"]


def test_table3_streaming_rows_train_where_a_tile_fits_and_are_said_left_out_elsewhere(capsys):
    paper = {row.id for row in tableruns.rows_to_run("table3", get_profile("paper"), alternatives=True)}
    assert {"streaming_2048", "gd-frozen-bn_2048", "streaming_fp16_4096", "gd-frozen-bn_fp16_4096"} <= paper
    capsys.readouterr()
    cpu = {row.id for row in tableruns.rows_to_run("table3", get_profile("cpu"), alternatives=True)}
    assert not any(i.startswith("streaming") for i in cpu) and "gd-frozen-bn_2048" in cpu
    assert ("2048 px in the paper, 128 px at the cpu profile: not trained, image 128 px is smaller than "
            "ResNet50's smallest usable tile (864 px): streaming cannot apply") in capsys.readouterr().out
