"""Does lightstream (Streaming SGD) reproduce plain backprop on this torch? For each network: the
streamed forward against the plain one, and the streamed trunk's parameter gradients against plain
backprop's (BatchNorm frozen, as streaming requires), or the error it raises: lightstream 1.0.7 as
shipped, without the kit's adapter (patchgd_kit/core/streaming.py), so it shows the defects docs/streaming.md
reports; benchmarks/bench_streaming.py measures the method as the kit runs it.

    python benchmarks/lightstream_check.py [--cases test:512:128 resnet18:1024:512]
"""
import argparse
import contextlib
import copy
import io

import torch
from torch import nn
from torchvision.models import resnet18


def trunk(name: str) -> nn.Module:
    if name == "resnet18":
        net = resnet18(weights=None)
        return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3,
                             net.layer4)
    from lightstream.models.testnet.testnet import StreamingTestNet
    net = StreamingTestNet.create_model()  # the library's own test network: 3x3 convs, ReLU, max pools
    if name == "test-padded":
        for m in net:
            if isinstance(m, nn.Conv2d):
                m.padding = (1, 1)
    return net


def streamed(net: nn.Module, tile: int):
    from lightstream.core.constructor import StreamingConstructor
    with contextlib.redirect_stdout(io.StringIO()):  # the constructor prints its progress
        # statistics_on_cpu=True keeps the constructor from moving the net to CUDA; False before
        # building keeps StreamingCNN from calling .cuda() after its statistics (both need CUDA).
        c = StreamingConstructor(net, tile, verbose=False, statistics_on_cpu=True, normalize_on_gpu=False,
                                 copy_to_gpu=False, add_keep_modules=[nn.BatchNorm2d])
        c.statistics_on_cpu = False
        return c.prepare_streaming_model()


def check(name: str, side: int, tile: int) -> str:
    torch.manual_seed(0)
    net = trunk(name)
    reference = copy.deepcopy(net).eval()
    scnn = streamed(net, tile)
    scnn.stream_module.eval()
    images = torch.randn(1, 3, side, side)
    out = reference(images)
    head = nn.Linear(out.shape[1], 3)
    head(out.mean((2, 3))).sum().backward()
    try:
        with torch.no_grad():
            streamed_out = scnn(images)
        forward = (streamed_out - out).abs().max().item()
        features = streamed_out.detach().requires_grad_()
        head(features.mean((2, 3))).sum().backward()
        scnn.backward(images, features.grad)
    except Exception as exc:  # the finding is the error itself
        return f"{name} {side}/{tile}: forward diff {locals().get('forward', 'n/a')}; {type(exc).__name__}: {exc}"
    grads = max((a.grad - b.grad).abs().max().item()
                for a, b in zip(reference.parameters(), scnn.stream_module.parameters()))
    return f"{name} {side}/{tile}: forward max-abs diff {forward:.3g}, gradient max-abs diff {grads:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["test:512:128", "test-padded:512:128", "resnet18:1024:512"],
                        help="network:image side:tile side")
    args = parser.parse_args()
    torch.backends.mkldnn.enabled = False  # with oneDNN the CPU streamed conv fails earlier (docs/streaming.md)
    print(f"torch {torch.__version__}")
    for case in args.cases:
        name, side, tile = case.split(":")
        print(check(name, int(side), int(tile)))


if __name__ == "__main__":
    main()
