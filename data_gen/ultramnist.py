"""UltraMNIST splits into a folder: the kit's `python -m patchgd_kit generate`, under the name this
folder has always had. Every argument is passed on (`--help` lists them); bad input prints one line
on stderr and exits 2.

    python data_gen/ultramnist.py --out data/ultramnist --per-class 1000 --image-size 512

The kit must be importable: installed (`make install`, `pip install -e .`) or the repository root on
PYTHONPATH. From Python: ``patchgd_kit.data.ultramnist.generate_split`` or ``ensure_dataset``.
"""
import sys

from patchgd_kit.cli import main as kit_main


def main(argv: list[str] | None = None) -> int:
    return kit_main(["generate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
