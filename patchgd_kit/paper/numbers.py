"""The paper's numbers: every figure and table entry the kit reproduces (Figure 2, Tables 1-6), with
each row's settings at the paper's scale. Nothing else lives here, and this module imports nothing of
the kit: the tables, the planner and the scaler read it.

A row's settings are TrainConfig fields at the paper's scale (method, backbone, memory_budget, ...);
``ZETA`` as a row's grad_accum means ε = ζ (one optimizer step per batch). The orderings the paper
reports (``Table.claims``) are checked on the measured numbers by ``orderings``.
"""
from __future__ import annotations

from dataclasses import dataclass


def budget_text(budget: str | None) -> str:
    """A budget as the tables print it: "16GB" → "16 GB", none → "–"."""
    return budget.replace("GB", " GB") if budget else "–"


@dataclass(frozen=True)
class Row:
    """One line of a paper table: its numbers and the settings of its run at the paper's scale."""
    id: str                 # unique within its table
    label: str              # the method as the paper names it
    settings: dict          # TrainConfig fields at the paper's scale (method, backbone, memory_budget, ...)
    paper: dict             # the paper's numbers: {"accuracy": 65.2}, Table 3 also "qwk", ...
    # Appendix C: "In the case of low memory, as demonstrated in the UltraMNIST experiments, the original
    # backbone architecture is trained separately for 100 epochs. This provides a better initialization
    # for the backbone and is further used in PatchGD." The id of the row (same table) whose trained
    # backbone initialises this one; the kit reads "trained separately" as that table's GD run under
    # the same low budget (the GD training that fits the memory the PatchGD row has).
    init_from: str | None = None

    @property
    def name(self) -> str:
        """The row as the tables name it: its label and budget ("GD 4 GB")."""
        budget = self.settings.get("memory_budget")
        return f"{self.label} {budget_text(budget)}" if budget else self.label


# An ordering the paper reports, checked on the measured numbers. A term is a row id (that row's
# number) or a pair of row ids (their difference); which side is larger comes from the paper's numbers.
Term = str | tuple[str, str]


@dataclass(frozen=True)
class Table:
    name: str               # file names: <name>.csv, <name>.md
    title: str
    dataset: str            # "ultramnist" or "panda": which data, and how a profile scales it
    metrics: tuple[str, ...]
    base: dict              # settings shared by every row, at the paper's scale
    rows: tuple[Row, ...]
    claims: tuple[tuple[Term, Term], ...] = ()
    note: str = ""

    def row(self, row_id: str) -> Row:
        return next(r for r in self.rows if r.id == row_id)

    def settings(self, row: Row) -> dict:
        return {**self.base, **row.settings}


ULTRAMNIST_512 = {"image_size": 512, "patch_size": 256, "sampling": 0.25, "max_sampled": 1.0, "epochs": 100,
                  "num_classes": 10}
PANDA_BASE = {"num_classes": 6, "max_sampled": 1.0, "epochs": 100}
ZETA = "zeta"  # grad_accum = ζ: one optimizer step per batch (the paper's PANDA runs, Appendix C)


def _method_rows(backbone: str, accuracies: dict[str, float]) -> tuple[Row, ...]:
    """Tables 1 and 2: GD, GD-extended and PatchGD (p = 256) at 16 and 4 GB; PatchGD at 4 GB starts from
    GD 4 GB's trained backbone (Appendix C)."""
    labels = {"gd": "GD", "gd-extended": "GD-extended", "patchgd": "PatchGD"}  # the patch: in the settings
    rows = []
    for budget in ("16GB", "4GB"):
        for method, label in labels.items():
            row_id = f"{method}_{budget.lower()}"
            rows.append(Row(row_id, label, {"method": method, "backbone": backbone, "memory_budget": budget},
                            {"accuracy": accuracies[row_id]},
                            init_from="gd_4gb" if (method, budget) == ("patchgd", "4GB") else None))
    return tuple(rows)


# The orderings of Tables 1 and 2 (paper §4.2): PatchGD beats GD at both budgets, GD beats
# GD-extended, and the PatchGD - GD gap differs between the budgets (grows at 4 GB for ResNet50).
PATCHGD_BEATS_GD = (("patchgd_16gb", "gd_16gb"), ("patchgd_4gb", "gd_4gb"))
GD_BEATS_EXTENDED = (("gd_16gb", "gd-extended_16gb"), ("gd_4gb", "gd-extended_4gb"))
GAP_BY_BUDGET = ((("patchgd_4gb", "gd_4gb"), ("patchgd_16gb", "gd_16gb")),)


def _panda_row(row_id, label, image_size, budget, accuracy, qwk, params_m, latency, patch_size=None,
               sampling=None, amp=False, max_sampled=1.0) -> Row:
    settings = {"method": "patchgd" if patch_size else "gd", "backbone": "resnet50", "image_size": image_size,
                "memory_budget": budget, "amp": amp}
    if patch_size:
        settings.update(patch_size=patch_size, sampling=sampling, max_sampled=max_sampled, grad_accum=ZETA)
    paper = {"accuracy": accuracy, "qwk": qwk}
    if params_m is not None:
        paper.update(params_m=params_m, latency_img_s=latency)
    return Row(row_id, label, settings, paper)


PAPER: dict[str, Table] = {t.name: t for t in (
    Table("table1", "Table 1: ResNet50 on UltraMNIST 512×512", "ultramnist", ("accuracy",), ULTRAMNIST_512,
          _method_rows("resnet50", {"gd_16gb": 65.2, "gd-extended_16gb": 50.5, "patchgd_16gb": 69.2,
                                    "gd_4gb": 53.6, "gd-extended_4gb": 52.5, "patchgd_4gb": 63.1}),
          PATCHGD_BEATS_GD + GD_BEATS_EXTENDED + GAP_BY_BUDGET + (("gd_16gb", "gd_4gb"),)),
    Table("table2", "Table 2: MobileNetV2 on UltraMNIST 512×512", "ultramnist", ("accuracy",), ULTRAMNIST_512,
          _method_rows("mobilenet_v2", {"gd_16gb": 67.3, "gd-extended_16gb": 64.3, "patchgd_16gb": 83.7,
                                        "gd_4gb": 67.7, "gd-extended_4gb": 60.0, "patchgd_4gb": 74.8}),
          PATCHGD_BEATS_GD + GD_BEATS_EXTENDED + GAP_BY_BUDGET),
    Table("table3", "Table 3: ResNet50 on PANDA (6 ISUP grades)", "panda", ("accuracy", "qwk"), PANDA_BASE, (
        _panda_row("gd_512", "GD", 512, "16GB", 44.4, 0.558, 23.52, 618.05),
        _panda_row("patchgd_512", "PatchGD", 512, "16GB", 44.9, 0.576, 26.39, 521.42, 128, 0.3),
        _panda_row("gd_2048", "GD", 2048, "16GB", 34.8, 0.452, 23.52, 39.04),
        _panda_row("patchgd_2048", "PatchGD", 2048, "16GB", 53.9, 0.627, 26.40, 32.52, 128, 0.1),
        _panda_row("gd_fp16_2048", "GD-fp16", 2048, "24GB", 50.6, 0.658, 23.52, 39.04, amp=True),
        _panda_row("patchgd_fp16_2048", "PatchGD-fp16", 2048, "24GB", 56.1, 0.662, 26.40, 32.52, 128, 0.1,
                   amp=True),
        _panda_row("gd_fp16_4096", "GD-fp16", 4096, "24GB", 50.1, 0.611, 23.52, 9.23, amp=True),
        _panda_row("patchgd_fp16_4096_p128", "PatchGD-fp16", 4096, "24GB", 53.5, 0.667, 26.41, 8.09, 128, 0.1,
                   amp=True),
        _panda_row("patchgd_fp16_4096_p256", "PatchGD-fp16", 4096, "24GB", 55.6, 0.672, 26.40, 9.62, 256, 0.1,
                   amp=True)),
          # §4.2: PatchGD beats GD at 2048 and 4096 px (at 512 they are "approximately similar"), and
          # patch 256 beats patch 128 at 4096.
          (("patchgd_2048", "gd_2048"), ("patchgd_fp16_2048", "gd_fp16_2048"),
           ("patchgd_fp16_4096_p128", "gd_fp16_4096"), ("patchgd_fp16_4096_p256", "patchgd_fp16_4096_p128")),
          note="Sampling 30% at 512 px: 10% of the 16 patches would be one patch (the paper's footnote). "
               "Latency: inference images/s on an A100 40 GB."),
    Table("table4", "Table 4: PatchGD sampling ablation on PANDA, 2048 px, patch 128, 16 GB", "panda",
          ("accuracy", "qwk"), PANDA_BASE, tuple(
              _panda_row(f"s{round(s * 100)}_m{round(m * 100)}", f"PatchGD {s:.0%} / {m:.0%}", 2048, "16GB", acc,
                         qwk, None, None, 128, s, max_sampled=m)
              for s, m, acc, qwk in ((0.5, 1.0, 42.3, 0.538), (0.3, 1.0, 49.9, 0.613), (0.1, 1.0, 53.9, 0.627),
                                     (0.1, 0.7, 53.1, 0.624), (0.1, 0.5, 53.9, 0.622), (0.1, 0.3, 51.1, 0.610))),
          # §4.2: a small sampling fraction does better; a low max sampled fraction does worse.
          (("s10_m100", "s30_m100"), ("s30_m100", "s50_m100"), ("s10_m100", "s10_m30"))),
    Table("table5_6", "Tables 5 and 6: gradient accumulation ε, MobileNetV2 PatchGD on UltraMNIST 512×512, 16 GB",
          "ultramnist", ("accuracy",), ULTRAMNIST_512, tuple(
              Row(f"eps{eps}", f"PatchGD ε = {eps}",
                  {"method": "patchgd", "backbone": "mobilenet_v2", "memory_budget": "16GB", "grad_accum": eps},
                  {"accuracy": acc})
              for eps, acc in ((1, 83.7), (2, 81.5), (4, 81.1))),
          (("eps1", "eps2"), ("eps2", "eps4")),
          note="The paper prints this table twice, as Table 5 and Table 6, with the same numbers. On the 2×2 "
               "grid k = 1 and ζ = 4 (sampling 25%, max sampled 100%): ε = 1 steps the optimizer after every "
               "inner iteration, ε = 4 once per batch. ε = 1 is the same run as Table 2's PatchGD at 16 GB."),
)}

# Figure 2 draws four of Table 1's runs; the paper's text gives other gaps than its Table 1.
FIGURE2 = {"table": "table1", "rows": ("gd_16gb", "patchgd_16gb", "gd_4gb", "patchgd_4gb"),
           "text_gaps": {"16GB": 4.0, "4GB": 13.0},
           "claims": PATCHGD_BEATS_GD + GAP_BY_BUDGET}
OUTPUTS = ("figure2", *PAPER)  # what a full reproduction writes, in report order
