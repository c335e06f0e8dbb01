"""Why PatchGD runs fp32 on a CPU: the bf16 weight gradient of a 3×3, stride-2, padding-1 convolution on
a 1×1 map has non-finite values in taps that see only padding (exactly 0 in fp32).

    python docs/probes/bf16_conv_weight_grad.py [--trials 20] [--threads 2]

ResNet50's layer4.0.conv2 meets this shape in PatchGD's inner iterations at 16-px patches (a 16-px patch
reaches layer4 as 1×1), and the head's last stride-2 convolutions on small grids do too. Prints, per
shape, how many trials gave a non-finite weight gradient under bf16 autocast and in fp32.
"""
import argparse

import torch


def trial(batch: int, channels: int, side: int, dtype: torch.dtype | None, seed: int) -> bool:
    """True when the weight gradient has a non-finite value."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False)
    x = torch.relu(torch.randn(batch, channels, side, side))
    with torch.autocast("cpu", dtype or torch.bfloat16, enabled=dtype is not None):
        out = conv(x)
    out.float().pow(2).sum().backward()
    return not bool(torch.isfinite(conv.weight.grad).all())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, oneDNN {torch.backends.mkldnn.is_available()}")
    for batch, channels, side in [(8, 512, 1), (8, 256, 1), (8, 512, 2), (8, 512, 4)]:
        counts = {name: sum(trial(batch, channels, side, dtype, seed) for seed in range(args.trials))
                  for name, dtype in (("bf16", torch.bfloat16), ("fp32", None))}
        print(f"input {batch}×{channels}×{side}×{side}: non-finite weight gradient in "
              f"{counts['bf16']}/{args.trials} bf16 trials, {counts['fp32']}/{args.trials} fp32 trials")


if __name__ == "__main__":
    main()
