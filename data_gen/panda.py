"""Preprocess PANDA (paper Appendix B.1) into kit datasets: one folder per size.

    python data_gen/panda.py --root /data/prostate-cancer-grade-assessment --out data/panda

Reads ``<root>/train.csv`` and ``<root>/train_images/<image_id>.tiff``; writes
``<out>/<size>px/{train,test}/`` (images, manifest.csv, card.json) and ``<out>/skipped.csv``.
Rerunning resumes (finished slides are skipped). Bad input prints one line on stderr and exits 2.
The function is patchgd_kit.data.panda.preprocess_panda.

Beyond the paper: ``--full-resolution SIDE`` writes ``<out>/{train,test}/`` whose images are the
slides' level 0 framed on a white SIDE px square, read a patch at a time by PatchGD (no downscale,
nothing copied; ``pandafull.full_resolution_dataset``):

    python data_gen/panda.py --root /data/panda --out data/panda_full --full-resolution 32768
    python -m patchgd_kit train --data data/panda_full --method patchgd --image-size 32768 --patch-size 256 ...
"""
import argparse
import sys
from pathlib import Path

# Runs from a checkout whether or not the kit is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from patchgd_kit.errors import KitError  # noqa: E402
from patchgd_kit.data.panda import PAPER_SIZES, preprocess_panda  # noqa: E402
from patchgd_kit.data.pandafull import full_resolution_dataset  # noqa: E402


def _level(text: str):
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"level {text!r} is not allowed; allowed: auto or an "
                                          "integer >= 0")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="the PANDA folder (train.csv, train_images/)")
    parser.add_argument("--out", required=True, help="folder that receives <size>px/<split>/")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(PAPER_SIZES),
                        help="the canvas first, then sizes shrunk from it (paper: 4096 2048 512)")
    parser.add_argument("--level", type=_level, default=None,
                        help="pyramid level to read, or auto (default): the coarsest level whose "
                             "longer side reaches the canvas")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="share of each ISUP grade held out for test (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stratified split")
    parser.add_argument("--per-class-train", type=int, help="at most this many train slides per grade")
    parser.add_argument("--per-class-test", type=int, help="at most this many test slides per grade")
    parser.add_argument("--workers", type=int, help="processes (default: min(2, CPU count))")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--full-resolution", type=int, default=None, metavar="SIDE",
                        help="beyond the paper: level 0 framed on a SIDE px square, read lazily (no --sizes)")
    args = parser.parse_args(argv)
    try:
        if args.full_resolution is not None:
            print(full_resolution_dataset(args.root, args.out, args.full_resolution, args.test_fraction, args.seed,
                                          args.per_class_train, args.per_class_test))
            return 0
        folders = preprocess_panda(args.root, args.out, args.sizes, args.level, args.test_fraction,
                                   args.seed, args.per_class_train, args.per_class_test,
                                   args.workers, not args.no_progress)
    except KitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for folder in folders.values():
        print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
