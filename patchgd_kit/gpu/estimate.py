"""How long a profile's training notebooks take on a GPU, before anything trains
(`reproduce --profile gpu --estimate`): every run of notebooks 03 and 05-08 (Figure 2, Tables 1, 2,
5/6), counted once where notebooks share it (the store reads it back), costs

    epochs x (train images / training images/s + test images / inference images/s)

at the images/s of its method and backbone, whatever its batch (the planner's batch of a 4 GB row is
small, and a GPU runs small batches below the rate of large ones: those rows may take longer): measured by `gpu-check` where a committed
docs/gpu-checks/*.json has them (gpureport.latest_check: the profile slice, then the speed and latency
rows), else converted from the paper's A100 40 GB latency (Table 3, inference, 512 px). Every rate
says where it comes from. Not counted: making the dataset, data loading beyond what a measured rate
held, checkpoints, and the notebooks that train nothing at the profile's scale.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..paper.numbers import FIGURE2, PAPER
from ..planner.paperrows import grad_accum_of
from ..runs.profiles import Profile, get_profile

# Inference images/s on an A100 40 GB at 512 px, fp32 (Table 3): GD ResNet50, PatchGD ResNet50 (patch 128).
PAPER_GD_512 = PAPER["table3"].row("gd_512").paper["latency_img_s"]
PAPER_PATCHGD_512 = PAPER["table3"].row("patchgd_512").paper["latency_img_s"]
# Training an image costs about 3 inferences of it (forward + backward, whose cost is about twice the
# forward's); PatchGD's costs 4 (filling Z: one forward of every patch, then every patch forward and
# backward once over the ζ inner iterations, at max sampled 100%).
GD_TRAIN_COST, PATCHGD_TRAIN_COST = 3, 4
PAPER_SOURCE = "A100 40 GB, the paper's Table 3 latency"

# Notebook → the paper table whose runs it trains (None: all of them), in the order reproduce runs them.
NOTEBOOK_RUNS = {"03": ("table2", ("gd_16gb",)), "05": ("table1", FIGURE2["rows"]), "06": ("table1", None),
                 "07": ("table2", None), "08": ("table5_6", None)}
NOT_ESTIMATED = {"01": "makes the dataset (CPU)", "02": "no training", "04": "the memory wall (notebook 04's own "
                 "rows)", "11": "plans and short timings", "12": "one measured step"}


@dataclass(frozen=True)
class Rate:
    train: float      # training images/s
    inference: float  # inference images/s
    source: str


def paper_rate(method: str, backbone: str) -> Rate:
    """From the paper's A100 latency: inference images/s divided by the training cost in inferences."""
    patches = method == "patchgd"
    inference = PAPER_PATCHGD_512 if patches else PAPER_GD_512
    cost = PATCHGD_TRAIN_COST if patches else GD_TRAIN_COST
    words = (f"{PAPER_SOURCE} ({'PatchGD' if patches else 'GD'} ResNet50 {inference:g} img/s inference; "
             f"training = {cost}x inference)")
    if backbone != "resnet50":  # the paper times no MobileNetV2: ResNet50's figure bounds it from above
        words += f"; ResNet50's figure for {backbone}, which needs fewer FLOPs (so an overestimate)"
    return Rate(inference / cost, inference, words)


def measured_rate(check: dict | None, method: str, backbone: str) -> Rate | None:
    """The images/s a GPU check measured for this method and backbone at 512 px in fp32: its profile
    slice (train() with data loading), else its speed row (training) and latency row (inference)."""
    if not check:
        return None
    rows = [r for r in check.get("rows", []) if r.get("status") == "ok" and r.get("method") == method
            and r.get("backbone") == backbone and r.get("image_size") == 512 and not r.get("amp")]
    device = f"{check.get('device')}, gpu-check {check.get('date')}"
    for r in rows:
        if r["section"] == "slice" and r.get("eval_images_per_s"):
            return Rate(r["train_images_per_s"], r["eval_images_per_s"], f"{device}: its profile slice")
    speed = next((r for r in rows if r["section"] == "speed"), None)
    latency = next((r for r in rows if r["section"] == "latency" and r.get("patch_size") in (None, 256)), None)
    if speed and latency:
        return Rate(speed["train_images_per_s"], latency["images_per_s"],
                    f"{device}: speed and latency rows (images on the device, no data loading)")
    return None


def rate_for(check: dict | None, method: str, backbone: str) -> Rate:
    base = "patchgd" if method == "patchgd" else "gd"  # gd-extended: GD's trunk and a small head
    return measured_rate(check, base, backbone) or paper_rate(base, backbone)


def _runs(profile: Profile) -> dict[str, list[tuple[str, dict]]]:
    """Notebook → [(row name, settings at the paper's scale)] of the runs it trains first."""
    seen, out = set(), {}
    for notebook, (name, rows) in NOTEBOOK_RUNS.items():
        table = PAPER[name]
        chosen = [r for r in table.rows if rows is None or r.id in rows]
        out[notebook] = []
        for row in chosen:
            settings = table.settings(row)
            key = (settings["method"], settings["backbone"], settings["memory_budget"],
                   grad_accum_of(settings) if settings["method"] == "patchgd" else 1)
            if key not in seen:
                seen.add(key)
                out[notebook].append((f"{table.name} {row.name}", settings))
    return out


def estimate(profile: Profile | str = "gpu", check: dict | None = None) -> dict:
    """{"notebooks": {number: {"minutes", "runs": [...]}}, "total_minutes", "not_estimated", "pretrain"}."""
    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    runs = _runs(profile)
    notebooks = {}
    for notebook, rows in runs.items():
        lines = []
        for name, settings in rows:
            p = profile.for_backbone(settings["backbone"])
            rate = rate_for(check, settings["method"], settings["backbone"])
            seconds = p.epochs * (p.per_class_train * 10 / rate.train + p.per_class_test * 10 / rate.inference)
            lines.append({"run": name, "minutes": seconds / 60,
                          "train_images_per_s": rate.train, "inference_images_per_s": rate.inference,
                          "source": rate.source})
        notebooks[notebook] = {"minutes": sum(r["minutes"] for r in lines), "runs": lines}
    return {"profile": profile.name, "notebooks": notebooks,
            "total_minutes": sum(n["minutes"] for n in notebooks.values()),
            "not_estimated": {n: why for n, why in NOT_ESTIMATED.items()} | dict(profile.skip_notebooks),
            "pretrain": _pretrain_minutes(profile, check)}


def _pretrain_minutes(profile: Profile, check: dict | None) -> dict | None:
    """Minutes of the digits stand-in (both backbones) where ImageNet weights cannot be downloaded:
    pretrain_steps batches of 64 crops of patch_size px, each crop 1/(image/patch)^2 of an image."""
    if profile.weights not in ("imagenet", "digits") or not profile.pretrain_steps:
        return None
    share = (profile.patch_size / profile.image_size) ** 2
    minutes = {b: profile.pretrain_steps * 64 * share / rate_for(check, "gd", b).train / 60
               for b in ("resnet50", "mobilenet_v2")}
    return {"minutes": sum(minutes.values()), "by_backbone": minutes,
            "when": "always" if profile.weights == "digits" else "only where ImageNet weights cannot be downloaded"}


def format_estimate(result: dict) -> str:
    lines = [f"Estimated minutes per notebook, profile {result['profile']!r} (before anything trains; "
             "runs shared between notebooks counted once):"]
    for notebook, entry in result["notebooks"].items():
        lines.append(f"  {notebook}: {entry['minutes']:.1f} min")
        lines += [f"      {r['run']}: {r['minutes']:.1f} min at {r['train_images_per_s']:.0f} "
                  f"train / {r['inference_images_per_s']:.0f} inference img/s [{r['source']}]" for r in entry["runs"]]
    lines.append(f"  total, notebooks {', '.join(result['notebooks'])}: {result['total_minutes']:.1f} min")
    pretrain = result["pretrain"]
    if pretrain:
        lines.append(f"  + {pretrain['minutes']:.1f} min for the digits stand-in's pretraining, "
                     f"{pretrain['when']}")
    lines += [f"  {n}: not estimated ({why})" for n, why in sorted(result["not_estimated"].items())]
    return "\n".join(lines)
