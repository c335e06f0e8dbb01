"""The diagnosis of docs/cpu-scale.md §13: is a finished small-batch run held by its BatchNorm running
statistics? Evaluates the run's final model as stored, then with every BatchNorm's running mean and
variance recomputed on training images at a larger batch (the weights untouched: "precise BN"), on
the same test images.

    python docs/probes/batchnorm_statistics.py RUN_FOLDER [IMAGES] [BATCH]

GD's model sees whole images; PatchGD's backbone sees patches, so its statistics are recomputed through
the same forward as inference (fill Z from every patch, then the head). Evaluation only: nothing of
the run changes.
"""
import sys
from pathlib import Path

import torch

from patchgd_kit.data.ultramnist import UltraMNIST
from patchgd_kit.core.methods import StepSettings, build_model, method_of
from patchgd_kit.runs.runfolder import load_checkpoint
from patchgd_kit.runs.training import evaluate, evaluate_run


def recompute_statistics(model, method: str, dataset, images: int, batch: int) -> None:
    """Cumulative running mean/var of every BatchNorm over `images` training images in batches of `batch`."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches below
    model.train()
    predict, settings = method_of(method).predict, StepSettings()
    with torch.no_grad():
        for start in range(0, images, batch):
            x = torch.stack([dataset[i][0] for i in range(start, min(images, start + batch))])
            predict(model, x, settings)


def main(run_folder: str, images: int = 600, batch: int = 32) -> None:
    stored = evaluate_run(run_folder, device="cpu")
    print(f"as stored: accuracy {stored['accuracy']:.1f}%, test loss {stored['test_loss']:.2f}", flush=True)
    state = load_checkpoint(Path(run_folder), torch.device("cpu"))  # the kit's reader, as evaluate_run
    config = state["config"]
    model = build_model(config["method"], config["backbone"], config["num_classes"], config["image_size"],
                        config.get("patch_size"))
    model.load_state_dict(state["model"])
    recompute_statistics(model, config["method"], UltraMNIST(Path(config["data"]), "train"), images, batch)
    redone = evaluate(model, config["method"], UltraMNIST(Path(config["data"]), "test"), batch, torch.device("cpu"))
    print(f"BatchNorm statistics recomputed on {images} training images, batch {batch}: accuracy "
          f"{redone['accuracy']:.1f}%, test loss {redone['test_loss']:.2f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:4]))
