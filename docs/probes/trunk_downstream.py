"""The probe of docs/cpu-scale.md §12: rows of a table trained from the profile's digits trunk and
from another trunk, the same data, batches and schedule, compared on the same test images.

    KIT_RUNS=/tmp/probe python docs/probes/trunk_downstream.py gd_4gb,patchgd_4gb table2 OTHER_TRUNK.pt

Rows keep the digits init (Appendix C's GD init is switched off) so that only the trunk differs.
Prints each row's accuracy per epoch and the paired bootstrap (4,000 resamples, 95%) of other − profile's.
"""
import dataclasses
import sys
import time

import numpy as np

from patchgd_kit.runs import scaling, store
from patchgd_kit.paper.numbers import PAPER
from patchgd_kit.runs.profiles import get_profile, profile_dir


def correct(run: dict) -> np.ndarray:
    return np.equal(run["test_predictions"], run["test_labels"]).astype(float)


def paired(a: dict, b: dict, rng: np.random.Generator) -> str:
    d = correct(a) - correct(b)
    means = d[rng.integers(0, len(d), size=(4000, len(d)))].mean(1) * 100
    return f"{d.mean() * 100:+.1f} [{np.percentile(means, 2.5):+.1f}, {np.percentile(means, 97.5):+.1f}]"


def curve(run: dict) -> str:
    return " -> ".join(f"{e['accuracy']:.1f}" for e in run["history"])


def main(row_ids: str, table_name: str, other_trunk: str) -> None:
    profile, table, rng = get_profile("cpu"), PAPER[table_name], np.random.default_rng(0)
    folder = profile_dir(profile)
    for row_id in row_ids.split(","):
        config = scaling.configure(table, dataclasses.replace(table.row(row_id), init_from=None), profile)[0]
        base = store.train_in_store(config, folder, progress=False)
        start = time.time()
        other = store.train_in_store(dataclasses.replace(config, weights=other_trunk), folder, progress=False)
        print(f"{row_id} b{config.batch_size}: profile trunk {curve(base)} | other trunk {curve(other)} "
              f"({(time.time() - start) / 60:.1f} min) | other - profile {paired(other, base, rng)}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
