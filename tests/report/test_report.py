"""The paper's numbers, the results store, mean ± std over seeds, the tables, orderings, figure and report_tables."""
import dataclasses
import math

import pandas as pd
import pytest

from patchgd_kit.report import figure, orderings, tables as report_tables
from patchgd_kit.runs import store
from patchgd_kit.paper.beyond import BEYOND
from patchgd_kit.runs.config import TrainConfig
from patchgd_kit.report.orderings import RowResult
from patchgd_kit.paper.numbers import FIGURE2, OUTPUTS, PAPER


def test_the_papers_numbers_are_all_there():
    accuracy = {name: [row.paper["accuracy"] for row in table.rows] for name, table in PAPER.items()}
    assert accuracy["table1"] == [65.2, 50.5, 69.2, 53.6, 52.5, 63.1]
    assert accuracy["table2"] == [67.3, 64.3, 83.7, 67.7, 60.0, 74.8]
    assert accuracy["table3"] == [44.4, 44.9, 34.8, 53.9, 50.6, 56.1, 50.1, 53.5, 55.6]
    assert [row.paper["qwk"] for row in PAPER["table3"].rows][-1] == 0.672
    assert accuracy["table4"] == [42.3, 49.9, 53.9, 53.1, 53.9, 51.1]
    assert accuracy["table5_6"] == [83.7, 81.5, 81.1]
    assert FIGURE2["text_gaps"] == {"16GB": 4.0, "4GB": 13.0}
    assert OUTPUTS == ("figure2", "table1", "table2", "table3", "table4", "table5_6")


def test_every_claim_names_rows_of_its_table():
    for table in PAPER.values():
        ids = {row.id for row in table.rows}
        assert len(ids) == len(table.rows)
        for claim in table.claims:
            for term in claim:
                assert set((term,) if isinstance(term, str) else term) <= ids
    assert set(FIGURE2["rows"]) <= {row.id for row in PAPER["table1"].rows}


def test_a_field_added_to_train_config_orphans_no_stored_run(tmp_path):
    @dataclasses.dataclass
    class LaterConfig(TrainConfig):  # a later version of the kit, with one more field
        new_knob: float = 0.5

    config = TrainConfig(method="gd", backbone="mobilenet_v2", data="d", image_size=64, trunk_lr_scale=0.1)
    later = LaterConfig(**dataclasses.asdict(config))
    assert store.run_folder(later, tmp_path) == store.run_folder(config, tmp_path)
    assert store.run_folder(dataclasses.replace(later, new_knob=0.7), tmp_path) != store.run_folder(config, tmp_path)
    # the fields of the first version stay in every key, at their defaults too
    assert {"lr", "epochs", "amp", "weights"} <= set(config.key()) and "trunk_lr_scale" in config.key()
    assert "trunk_lr_scale" not in dataclasses.replace(config, trunk_lr_scale=1.0).key()


def test_same_config_same_folder_and_different_config_different_folder(tmp_path):
    config = TrainConfig(method="patchgd", backbone="mobilenet_v2", data="d", image_size=64, patch_size=32)
    same = dataclasses.replace(config, workers=3)  # where data loads from is not part of the result
    assert store.run_key(config) == store.run_key(same)
    assert store.run_folder(config, tmp_path) == store.run_folder(same, tmp_path)
    for change in ({"seed": 1}, {"grad_accum": 2}, {"memory_budget": "4GB"}, {"batch_size": 8}, {"method": "gd"}):
        other = dataclasses.replace(config, **change)
        assert store.run_folder(other, tmp_path) != store.run_folder(config, tmp_path), change
    assert store.run_folder(config, tmp_path).parent == tmp_path / "store"


def test_a_finished_run_is_read_back_not_trained_again(tiny_data, tmp_path, monkeypatch):
    config = TrainConfig(method="patchgd", backbone="mobilenet_v2", data=str(tiny_data), image_size=64,
                         patch_size=32, batch_size=10, epochs=1, warmup_epochs=0)
    first = store.train_in_store(config, tmp_path, progress=False)
    assert store.is_finished(config, tmp_path)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was built again")
    monkeypatch.setattr("patchgd_kit.runs.training.build_model", no_training)
    again = store.train_in_store(dataclasses.replace(config, workers=0), tmp_path, progress=False)
    assert again["final"] == first["final"]


def test_mean_and_std_over_seeds():
    assert orderings.format_mean_std([10.0, 20.0]) == "15.0 ± 7.1"
    assert orderings.format_mean_std([12.34]) == "12.3"
    mean, std = orderings.mean_std([3.0])
    assert mean == 3.0 and math.isnan(std)


def _fake(table_name: str, accuracy: dict[str, list[float]]) -> list[RowResult]:
    """RowResults with made-up runs: `accuracy[row id]` is the final accuracy per seed."""
    table = PAPER[table_name]
    out = []
    for row in table.rows:
        if row.id not in accuracy:
            continue
        settings = table.settings(row)
        config = TrainConfig(**{k: v for k, v in settings.items() if k in {"method", "backbone", "memory_budget",
                                                                            "grad_accum"}},
                             image_size=64, patch_size=32, epochs=2, batch_size=8)
        runs = [{"final": {"accuracy": a, "qwk": 0.1},
                 "history": [{"accuracy": a / 2, "train_images_per_s": 10.0, "eval_seconds": 1.0},
                             {"accuracy": a, "train_images_per_s": 20.0, "eval_seconds": 1.0}]}
                for a in accuracy[row.id]]
        out.append(RowResult(table, row, config, {"batch_size": 32, "k": 1, "estimated_peak_bytes": 2**33},
                             "64 px; 40 train / 20 test images; 2 epochs", runs, test_images=200))
    return out


def test_table_has_paper_measured_and_difference_for_every_row(tmp_path):
    fake = _fake("table1", {row.id: [20.0, 30.0] for row in PAPER["table1"].rows})
    frame = report_tables.write_table(fake, tmp_path, footer="GPU hours: none\n")
    assert len(frame) == 6
    assert frame["measured accuracy %"].tolist() == [25.0] * 6
    assert frame["measured − paper accuracy %"].iloc[0] == pytest.approx(25.0 - 65.2)
    assert frame["measured accuracy % std"].iloc[0] == pytest.approx(7.0711, abs=1e-3)
    assert frame["images/s"].iloc[0] == 15.0 and frame["batch"].iloc[0] == 8
    csv = pd.read_csv(tmp_path / "table1.csv")
    assert {"paper accuracy %", "measured accuracy %"} <= set(csv.columns)
    md = (tmp_path / "table1.md").read_text()
    assert "| GD | 16 GB | 65.2 | 25.0 ± 7.1 |" in md and "GPU hours: none" in md
    assert "| PatchGD (p = 32; paper 256) | 16 GB | 69.2 |" in md  # the patch it ran with, and the paper's
    assert "random weights" in md


def test_a_row_not_in_the_paper_has_no_paper_number_and_says_so(tmp_path):
    fake = _fake("table2", {row.id: [30.0] for row in PAPER["table2"].rows})
    row = next(r for r in BEYOND["table2"] if r.id == "gd-checkpoint_16gb")
    fake.append(dataclasses.replace(fake[0], row=row, config=dataclasses.replace(fake[0].config, method="gd-checkpoint")))
    frame = report_tables.write_table(fake, tmp_path)
    assert frame["paper accuracy %"].isna().tolist() == [False] * 6 + [True]
    assert frame["measured − paper accuracy %"].isna().tolist() == [False] * 6 + [True]
    md = (tmp_path / "table2.md").read_text()
    assert "| GD-checkpoint (not in the paper) | 16 GB | – | 30.0 | – |" in md
    assert 'rows marked "not in the paper"' in md


def test_orderings_are_decided_by_the_measured_numbers():
    fake = _fake("table5_6", {"eps1": [60.0, 61.0], "eps2": [40.0, 42.0], "eps4": [35.0, 60.0]})
    checked = {c["claim"]: c for c in orderings.orderings(fake)}
    first, second = checked["PatchGD ε = 1 16 GB > PatchGD ε = 2 16 GB"], checked["PatchGD ε = 2 16 GB > PatchGD ε = 4 16 GB"]
    assert first["margin"] == 19.5 and not first["within_noise"]
    # 200 test images and 2 seeds per row: an accuracy near 45% is uncertain by about ±2.5 points.
    assert first["test_noise"] == pytest.approx(2 * (60.5 * 39.5 / 400 + 41 * 59 / 400) ** 0.5)
    assert second["margin"] == -6.5 and second["within_noise"]  # the seeds disagree by 17 points
    text = orderings.orderings_markdown(fake)
    assert text.startswith("Of the paper's 2 orderings here, 1 holds beyond the noise at this scale, 0 are "
                           "reversed beyond the noise, and 1 is not decided")
    assert "**holds** beyond the noise" in text
    assert "margin -6.5: **does not hold**, within the noise (test-set sampling ±" in text


def test_orderings_put_the_papers_larger_side_first():
    fake = _fake("table1", {"gd_4gb": [50.0], "patchgd_4gb": [40.0], "gd_16gb": [10.0], "patchgd_16gb": [30.0]})
    claims = {c["claim"]: c for c in orderings.orderings(fake, FIGURE2["claims"])}
    gap = claims["(PatchGD 4 GB − GD 4 GB) > (PatchGD 16 GB − GD 16 GB)"]
    assert gap["paper"] == pytest.approx((9.5, 4.0)) and gap["measured"] == (-10.0, 20.0)
    assert claims["PatchGD 16 GB > GD 16 GB"]["margin"] == 20.0


def test_figure2_and_its_gaps(tmp_path):
    fake = _fake("table1", {r: [40.0, 50.0] for r in FIGURE2["rows"]})
    figure.write_figure2(fake, tmp_path)
    for name in ("figure2.png", "figure2.svg", "figure2.md"):
        assert (tmp_path / name).stat().st_size > 0
    legend = [text.get_text() for text in figure.plot_figure2(fake).legends[0].get_texts()]
    assert "PatchGD (p = 32; paper 256) 16 GB: measured" in legend and "PatchGD (p = 256) 16 GB: paper, 69.2" in legend
    gaps = figure.figure2_gaps(fake)
    assert gaps["paper text gap"].tolist() == [4.0, 13.0]
    assert gaps["paper Table 1 gap"].tolist() == pytest.approx([4.0, 9.5])
    assert gaps["measured gap"].tolist() == ["0.0 ± 0.0"] * 2


def test_report_gathers_what_exists_and_names_what_is_missing(tmp_path):
    (tmp_path / "table1.md").write_text("## Table 1\n")
    (tmp_path / "figure2.md").write_text("## Figure 2\n")
    text = report_tables.write_report(tmp_path, "profile smoke").read_text()
    assert text.index("## Figure 2") < text.index("## Table 1")
    assert "Missing (their notebooks have not run or do not exist yet): table2, table3, table4, table5_6." in text


def test_one_seed_is_read_against_the_test_sets_sampling_noise():
    fake = _fake("table5_6", {"eps1": [14.5], "eps2": [11.5], "eps4": [40.0]})
    first, second = orderings.orderings(fake)
    assert first["within_noise"] and math.isnan(first["seed_std"])  # 3 points on 200 images: noise
    assert not second["within_noise"]


def _with_predictions(fake: list[RowResult], correct: dict[str, list[int]]) -> list[RowResult]:
    """Give each row's single run per-image predictions: image i right where correct[row][i] is 1."""
    for r in fake:
        labels = [i % 10 for i in range(len(correct[r.row.id]))]
        r.runs[0]["test_labels"] = labels
        r.runs[0]["test_predictions"] = [y if ok else (y + 1) % 10 for y, ok in zip(labels, correct[r.row.id])]
    return fake


def test_orderings_use_a_paired_bootstrap_over_the_same_test_images():
    # eps1 is right on every image eps2 gets right, plus 20 more of 200: a small margin (10 points),
    # but paired it is decided. eps4 differs from eps2 on 40 images in both directions: undecided.
    n = 200
    eps2 = [1] * 80 + [0] * 120
    eps1 = [1] * 100 + [0] * 100
    eps4 = [0] * 20 + [1] * 60 + [1] * 20 + [0] * 100
    fake = _with_predictions(_fake("table5_6", {"eps1": [50.0], "eps2": [40.0], "eps4": [40.0]}),
                             {"eps1": eps1, "eps2": eps2, "eps4": eps4})
    first, second = orderings.orderings(fake)
    assert first["ci95"][0] > 0 and not first["within_noise"]
    assert first["ci95"][0] == pytest.approx(10 - 2 * 100 * (0.1 * 0.9 / n) ** 0.5, abs=1.5)
    assert second["ci95"][0] < 0 < second["ci95"][1] and second["within_noise"]
    assert orderings.orderings(fake) == [first, second]  # the same resamples every time
    text = orderings.orderings_markdown(fake)
    assert "paired bootstrap 95% interval of the margin [+" in text
    assert "1 holds beyond the noise at this scale, 0 are reversed beyond the noise, and 1 is not decided" in text
