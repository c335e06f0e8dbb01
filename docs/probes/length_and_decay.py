"""The probe of docs/cpu-scale.md §13: rows of a table trained one epoch longer, or with the lr decayed
to 1% of the peak instead of to half (the paper's Appendix C), the same data, trunk and batches,
compared on the same test images with the profile's run of the row.

    KIT_RUNS=/work/nbrun python docs/probes/length_and_decay.py patchgd_16gb,gd_16gb table2

In the runs folder of a reproduction the profile's runs are read back from the store; the variants
are new runs beside them (another config, another folder). Prints each run's accuracy per epoch, its
minutes, and the paired bootstrap (4,000 resamples, 95%) of variant − profile's.
"""
import dataclasses
import sys
import time

import numpy as np
from trunk_downstream import curve, paired  # the sibling probe's helpers (same folder)

from patchgd_kit.runs import scaling, store
from patchgd_kit.paper.numbers import PAPER
from patchgd_kit.runs.profiles import get_profile, profile_dir


def variants(table, row, profile):
    """(name, config) of the profile's run and of each variant."""
    base = scaling.configure(table, row, profile)[0]
    longer = scaling.configure(table, row, dataclasses.replace(profile, epochs=profile.epochs + 1))[0]
    return [("profile", base), (f"{profile.epochs + 1} epochs", longer),
            ("lr decayed to 1%", dataclasses.replace(base, final_lr_fraction=0.01))]


def main(row_ids: str, table_name: str) -> None:
    profile, table, rng = get_profile("cpu"), PAPER[table_name], np.random.default_rng(0)
    folder = profile_dir(profile)
    for row_id in row_ids.split(","):
        runs = {}
        for name, config in variants(table, table.row(row_id), profile):
            start = time.time()
            runs[name] = store.train_in_store(config, folder, progress=False)
            print(f"{row_id} b{config.batch_size} {name}: {curve(runs[name])} ({(time.time() - start) / 60:.1f} min)"
                  + ("" if name == "profile" else f" | − profile {paired(runs[name], runs['profile'], rng)}"),
                  flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
