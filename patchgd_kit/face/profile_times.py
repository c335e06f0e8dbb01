"""How long each profile takes and what its numbers can and cannot show: the one table that the
README's first screen and notebook 05 print (tests/test_readme.py holds the README to it).

Every time is a measurement with its source, or says that it is an estimate: the cpu profile's
minutes per notebook on a 2-core AMD EPYC without AVX-512 (docs/cpu-scale.md, sections 10, 12 and 13),
the smoke profile's on this kind of machine, and the paper profile's A100 hours as the tables' own
footers estimate them (docs/cpu-run-2026-12-04/REPORT.md).
"""
from __future__ import annotations

import pandas as pd

from ..runs.profiles import get_profile

# Minutes per notebook, cpu profile, 2 cores (01 and 02 were timed together).
CPU_MINUTES = {"01–02": 0.7, "03": 11.1, "05": 41.1, "06": 15.3, "07": 27.5, "08": 13.5, "09": 9.4,
               "10": 3.4, "11": 2.1, "12": 0.5}
# Notebook 04 (the memory wall, docs/memory-wall.md) was timed on another 2-core machine, an Intel Xeon
# with AVX-512, which ran the same training 2-2.5x faster than the EPYC (docs/cpu-scale.md).
WALL_MINUTES_XEON = 9.1
# Estimated A100 hours of the paper profile, one seed, by table (the tables' footers).
PAPER_A100_HOURS = {"Table 1": 17, "Table 2": 3, "Table 3": 1094, "Table 4": 601, "Tables 5/6": 1}


def _cpu_time() -> str:
    total = round(sum(CPU_MINUTES.values()))
    return (f"about {total} minutes on a 2-core AMD EPYC without AVX-512: "
            + ", ".join(f"{name} {minutes}" for name, minutes in CPU_MINUTES.items())
            + f"; and 04 {WALL_MINUTES_XEON} on a 2-core Intel Xeon with AVX-512 (not timed on the EPYC)")


def _paper_time() -> str:
    return ("needs a GPU; estimated A100 hours, one seed: "
            + ", ".join(f"{name} ~{hours:,}" for name, hours in PAPER_A100_HOURS.items())
            + f" (about {sum(PAPER_A100_HOURS.values()):,} in all)")


def _gpu_time() -> str:
    """The gpu profile's minutes as `reproduce --profile gpu --estimate` gives them (not measured)."""
    from ..gpu.estimate import estimate
    from ..gpu.report import latest_check
    check = latest_check()
    result = estimate("gpu", check)
    source = (f"images/s measured by gpu-check on {check['device']} where it has them, else the paper's A100 latency"
              if check else "from the paper's A100 40 GB latency (Table 3), an H100 not yet measured")
    return (f"about {round(result['total_minutes'])} minutes estimated for Figure 2 and Tables 1, 2, 5/6 "
            f"(notebooks 03, 05–08; +{result['pretrain']['minutes']:.0f} for the stand-in's pretraining offline), "
            f"{source}; `reproduce --profile gpu --estimate` prints it per notebook")


def profile_table() -> pd.DataFrame:
    """Profile → wall time → what its numbers can show → what they cannot."""
    gpu = get_profile("gpu")
    rows = [
        ("`smoke`", "about 7 minutes for notebooks 05–12 on 2 cores (01–03: under 3)",
         "that every notebook, table and figure runs end to end (CI)", "anything: 64 px, 40 images, 2 epochs"),
        ("`binder`", "not measured; sized for Binder's 1 CPU and 1–2 GB",
         "the teaching notebooks' mechanics at 128 px", "accuracy"),
        ("`cpu` (default)", _cpu_time(),
         "runs above chance (8 of the 14 UltraMNIST runs end at 30% or more, the best at 45.2%; chance is 10%), "
         "the paper's orderings checked with 95% paired-bootstrap intervals, memory estimates at the paper's scale",
         "the paper's accuracies; whether PatchGD beats GD (undecided at this scale in both tables)"),
        ("`gpu`", _gpu_time(),
         "the paper's UltraMNIST task (512 px, patch 256, the recipe's digits, planned batches at the real budgets, "
         f"fp32, ImageNet init) on {gpu.per_class_train * 10:,} images × {gpu.epochs} epochs, the orderings on "
         f"{gpu.per_class_test * 10:,} test images",
         f"the paper's accuracies ({gpu.per_class_train / 1000:.0%} of its images, {gpu.epochs} of its 100 epochs); "
         "Tables 3/4 (profile `paper`); not run on a GPU yet"),
        ("`paper`", _paper_time(), "the paper's settings exactly, each number beside the paper's",
         "not run by the kit yet; the hours are an estimate (the tables' footers)"),
    ]
    return pd.DataFrame(rows, columns=["profile", "wall time", "what its numbers can show", "what they cannot"])


def profile_table_markdown() -> str:
    frame = profile_table()
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"
