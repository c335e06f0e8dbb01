"""The reproduction runner: paper rows at a profile's scale, the plan cache, notebook discovery, and
one end-to-end run of the reproduction notebooks on the smoke profile."""
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from patchgd_kit.planner import paperrows
from patchgd_kit.report import latency
from patchgd_kit.reproduce import notebooks as reproduce_notebooks, tableruns
from patchgd_kit.runs import scaling, store
from patchgd_kit.paper.beyond import rows_of
from patchgd_kit.runs.config import TrainConfig
from patchgd_kit.cli import main
from patchgd_kit.errors import KitError
from patchgd_kit.runs.profiles import get_profile
from patchgd_kit.report.orderings import RowResult
from patchgd_kit.paper.numbers import OUTPUTS, PAPER

FAKE_PLAN = {"batch_size": 32, "k": 1, "estimated_peak_bytes": 2**34, "estimator": "fake"}


@pytest.fixture
def smoke_runs(tmp_path, monkeypatch):
    """KIT_RUNS in a temporary folder, and a stand-in planner (the real one takes seconds per row)."""
    monkeypatch.setenv("KIT_RUNS", str(tmp_path))
    monkeypatch.setattr(scaling, "paper_plans", lambda settings, cache: [FAKE_PLAN] * len(settings))
    return tmp_path


def test_a_row_runs_at_the_profiles_scale_with_the_planned_batch_capped(smoke_runs):
    profile = get_profile("smoke")
    table = PAPER["table1"]
    config, plan, scale = scaling.configure(table, table.row("patchgd_4gb"), profile, seed=2)
    resnet50 = profile.for_backbone("resnet50")  # smoke: ResNet50 rows train 1 epoch, MobileNetV2 rows 2
    assert (config.image_size, config.patch_size, config.epochs) == (64, 32, resnet50.epochs) == (64, 32, 1)
    assert config.batch_size == min(FAKE_PLAN["batch_size"], profile.max_batch_size)
    assert config.memory_budget == "4GB" and config.seed == 2
    # Appendix C: the backbone of GD 4 GB's run (the same seed), whose own init is the profile's
    # digits-pretrained ResNet50, made on first use in its weights folder.
    gd = scaling.configure(table, table.row("gd_4gb"), profile, seed=2)[0]
    assert config.weights == str(store.run_trunk_path(gd, smoke_runs / "smoke")) and gd.seed == 2
    assert Path(gd.weights).name == "resnet50-digits-64px-crop32-min4px-2steps-lr0.001-seed0.pt"
    assert Path(gd.weights).is_file()
    assert config.schedule() == (1, 4)  # the paper's k = 1, ζ = 4 on the 2×2 grid
    assert config.trunk_lr_scale == profile.trunk_lr_scale == 0.1
    assert scale == (f"64 px, patch 32; {10 * profile.per_class_train} train / {10 * profile.per_class_test} test "
                     f"images; {resnet50.epochs} epochs; trunk lr × 0.1; backbone from the GD 4 GB run (Appendix C)")
    uncapped, *_ = scaling.configure(table, table.row("patchgd_4gb"), get_profile("smoke", max_batch_size=None))
    assert uncapped.batch_size == min(FAKE_PLAN["batch_size"], 10 * profile.per_class_train)  # the train set caps it


def test_one_batch_factor_and_a_backbones_own_scale(smoke_runs):
    # Every planned batch times the same factor (the budgets' ratios stay), at least 2 (BatchNorm), or 1
    # where the paper's plan is 1.
    quarter = get_profile("smoke", batch_scale=0.25, max_batch_size=None)
    assert [scaling.scaled_batch(b, quarter, 1000) for b in (140, 36, 8, 4, 2, 1)] == [35, 9, 2, 2, 2, 1]
    # backbone_scale gives ResNet50 rows their own size, data (with its digit floor) and weights.
    profile = get_profile("smoke", backbone_scale={"resnet50": {"image_size": 96, "patch_size": 48,
                                                                "min_digit_side": 8}})
    table = PAPER["table1"]
    config, _, scale = scaling.configure(table, table.row("gd_16gb"), profile)
    assert (config.image_size, Path(config.weights).name) == (96, "resnet50-digits-96px-crop48-min8px-2steps-lr0.001-seed0.pt")
    assert scale.startswith("96 px, digits ≥ 8 px;")
    mobilenet, *_ = scaling.configure(PAPER["table2"], PAPER["table2"].row("gd_16gb"), profile)
    assert (mobilenet.image_size, mobilenet.epochs) == (64, 2)
    # ... and its own batch factor, for its UltraMNIST rows only (Table 3's ResNet50 keeps the profile's).
    halved = get_profile("smoke", batch_scale=0.25, max_batch_size=None, per_class_train=10,
                         backbone_scale={"resnet50": {"batch_scale": 0.5}})
    resnet50, _, scale = scaling.configure(table, table.row("gd_16gb"), halved)
    assert resnet50.batch_size == 16 and "batch = planned × 0.5;" in scale
    assert scaling.configure(PAPER["table2"], PAPER["table2"].row("gd_16gb"), halved)[0].batch_size == 8
    assert scaling.configure(PAPER["table3"], PAPER["table3"].row("gd_512"), halved)[0].batch_size == 8


def test_low_memory_patchgd_starts_from_the_gd_runs_trained_backbone(smoke_runs):
    # Appendix C: asked for PatchGD 4 GB alone, run_table trains GD 4 GB first, and PatchGD's backbone
    # starts from GD's trained trunk, not from the digits init both began with.
    from patchgd_kit.core.methods import build_model
    from patchgd_kit.core.models import trunk_of
    profile, table, folder = get_profile("smoke"), PAPER["table2"], smoke_runs / "smoke"
    [result] = tableruns.run_table("table2", profile, rows=("patchgd_4gb",), progress=False)
    gd = scaling.configure(table, table.row("gd_4gb"), profile)[0]
    assert store.is_finished(gd, folder) and result.config.weights == str(store.run_trunk_path(gd, folder))
    assert "backbone from the GD 4 GB run (Appendix C)" in result.scale
    from patchgd_kit.report.tables import notes
    assert ("PatchGD 4 GB: as in Appendix C, its backbone starts from the trained backbone of this table's "
            "GD 4 GB run") in notes([result])
    trained = build_model("gd", "mobilenet_v2", 10, 64, 32)
    trained.load_state_dict(torch.load(store.run_folder(gd, folder) / "checkpoint.pt", weights_only=False)["model"])

    def trunk(method, model=None, weights=None):
        model = model or build_model(method, "mobilenet_v2", 10, 64, 32, weights=weights)
        return trunk_of(model, "mobilenet_v2").state_dict()
    start, gd_end, digits = (trunk("patchgd", weights=result.config.weights), trunk("gd", trained),
                             trunk("patchgd", weights=gd.weights))
    assert start.keys() == gd_end.keys() == digits.keys()
    assert all(torch.equal(start[k], gd_end[k]) for k in start)
    assert not all(torch.equal(start[k], digits[k]) for k in start)
    # rerun: everything read back, the trunk file not rewritten
    stamp = store.run_trunk_path(gd, folder).stat().st_mtime_ns
    tableruns.run_table("table2", profile, rows=("patchgd_4gb",), progress=False)
    assert store.run_trunk_path(gd, folder).stat().st_mtime_ns == stamp


def test_a_rows_config_is_computed_from_what_prepare_made_and_touches_nothing(smoke_runs):
    # prepare makes the data, plans and trunks; row_config then reads and writes nothing: with the
    # whole runs folder gone it gives the same config, and the folder stays gone.
    profile, table = get_profile("smoke"), PAPER["table1"]
    rows = [table.row("gd_4gb"), table.row("patchgd_4gb")]
    inputs = scaling.prepare(table, rows, profile)
    before = [scaling.row_config(table, row, profile, inputs[row.id], seed=1) for row in rows]
    shutil.rmtree(smoke_runs)
    after = [scaling.row_config(table, row, profile, inputs[row.id], seed=1) for row in rows]
    assert after == before
    assert not smoke_runs.exists()


def test_run_table_prepares_once_and_configures_each_row_once_per_seed(smoke_runs, monkeypatch):
    calls = {"prepare": 0, "row_config": []}
    prepare, row_config = scaling.prepare, scaling.row_config

    def counted_prepare(*args):
        calls["prepare"] += 1
        return prepare(*args)

    def counted_row_config(table, row, profile, inputs, seed=0):
        calls["row_config"].append((row.id, seed))
        return row_config(table, row, profile, inputs, seed)
    monkeypatch.setattr(tableruns, "prepare", counted_prepare)
    monkeypatch.setattr(tableruns, "row_config", counted_row_config)
    monkeypatch.setattr(tableruns, "train_in_store", lambda config, folder, progress=True: {"config": config})
    monkeypatch.setattr(tableruns, "run_trunk", lambda config, folder, progress=True: None)
    tableruns.run_table("table1", get_profile("smoke"), seeds=2, rows=("gd_4gb", "patchgd_4gb"), progress=False)
    assert calls["prepare"] == 1
    assert calls["row_config"] == [("gd_4gb", 0), ("gd_4gb", 1), ("patchgd_4gb", 0), ("patchgd_4gb", 1)]


def test_runs_shared_between_tables_have_one_store_folder(smoke_runs):
    profile = get_profile("smoke")
    folder = smoke_runs / "smoke"

    def run_of(table, row):
        return store.run_folder(scaling.configure(PAPER[table], PAPER[table].row(row), profile)[0], folder)
    assert run_of("table5_6", "eps1") == run_of("table2", "patchgd_16gb")
    assert run_of("table5_6", "eps2") != run_of("table5_6", "eps1")
    assert run_of("table1", "gd_16gb") != run_of("table1", "gd_4gb")
    # a teaching run (notebook 03's GD, and PatchGD's the same way) is the 16 GB row of Table 2 (Table 1
    # with ResNet50), unless the reader changes a value: then the run is one of its own
    from patchgd_kit.face.teaching import notebook_runs
    for backbone, table in (("mobilenet_v2", "table2"), ("resnet50", "table1")):
        for method in ("gd", "patchgd"):
            assert notebook_runs.training_run(profile, method, backbone=backbone)[1] == run_of(table, f"{method}_16gb")
    own, folder_of_own = notebook_runs.training_run(profile, "gd", backbone="mobilenet_v2", batch_size=3)
    assert (own.batch_size, own.memory_budget) == (3, None) and folder_of_own != run_of("table2", "gd_16gb")
    with pytest.raises(KitError, match="allowed: gd, gd-extended, patchgd"):
        notebook_runs.training_run(profile, "gd-checkpoint", backbone="mobilenet_v2")


def test_gds_alternatives_are_trained_where_the_profile_or_the_caller_says():
    paper_rows = [row.id for row in PAPER["table2"].rows]
    smoke, cpu = get_profile("smoke"), get_profile("cpu")
    assert "table2" in smoke.beyond and not cpu.beyond  # cpu keeps its hour for the paper's rows
    ids = {(profile.name, alternatives): [row.id for row in tableruns.rows_to_run("table2", profile, None, alternatives)]
           for profile in (smoke, cpu) for alternatives in (None, True, False)}
    assert ids["cpu", None] == ids["cpu", False] == ids["smoke", False] == paper_rows
    assert ids["smoke", None] == ids["smoke", True] == ids["cpu", True] == paper_rows + [
        "gd-checkpoint_16gb", "gd-downscaled_16gb", "gd-checkpoint_4gb", "gd-downscaled_4gb"]
    assert [row.id for row in tableruns.rows_to_run("table5_6", cpu, None, True)] == ["eps1", "eps2", "eps4"]
    assert [row.id for row in tableruns.rows_to_run("table2", smoke, ("gd_4gb",), False)] == ["gd_4gb"]


def test_reproduce_passes_alternatives_to_the_notebooks_that_declare_it(tmp_path, monkeypatch):
    given = {}
    monkeypatch.setattr(reproduce_notebooks, "run_notebook", lambda path, out, parameters, **kw: given.update({path.name[:2]: parameters}))
    monkeypatch.setattr(reproduce_notebooks, "write_report", lambda target, title: target / "REPORT.md")
    assert main(["reproduce", "--profile", "smoke", "--out", str(tmp_path), "--only", "03,07", "--alternatives"]) == 0
    assert given["07"] == {"profile": "smoke", "seeds": 1, "alternatives": True}
    assert "alternatives" not in given["03"]
    reproduce_notebooks.reproduce("smoke", out=tmp_path, only=["07"], progress=False)  # unasked: the profile's choice
    assert "alternatives" not in given["07"]


def test_plans_are_cached_on_disk(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(paperrows, "SHIPPED", tmp_path / "none.json")  # plan, not read the kit's plans

    def fake_plan(*args, **kwargs):
        calls.append(args)
        return SimpleNamespace(batch_size=32, k=None, estimated_peak_bytes=2**33, estimator="fake")
    monkeypatch.setattr(paperrows, "plan", fake_plan)
    settings = PAPER["table1"].settings(PAPER["table1"].row("gd_16gb"))
    first = paperrows.paper_plan(settings, tmp_path / "plans.json")
    again = paperrows.paper_plan(settings, tmp_path / "plans.json")
    assert first == again == {"batch_size": 32, "k": None, "estimated_peak_bytes": 2**33, "estimator": "fake"}
    assert calls == [("gd", "resnet50", 512, "16GB")]
    # ε counts as 1 or "at least 2", as the planner sees it: Table 4's 10% rows (ζ = 11, 8, 6, 4 at
    # max sampled 100, 70, 50, 30%) share one plan; ε = 1 (Table 5/6) is a plan of its own.
    table4 = PAPER["table4"]
    for row in ("s10_m100", "s10_m70", "s10_m50", "s10_m30"):
        paperrows.paper_plan(table4.settings(table4.row(row)), tmp_path / "plans.json")
    table5_6 = PAPER["table5_6"]
    for row in ("eps1", "eps2", "eps4"):
        paperrows.paper_plan(table5_6.settings(table5_6.row(row)), tmp_path / "plans.json")
    assert [c[:3] for c in calls[1:]] == [("patchgd", "resnet50", 2048), ("patchgd", "mobilenet_v2", 512),
                                          ("patchgd", "mobilenet_v2", 512)]


def test_notebooks_are_found_in_order_and_filtered(tmp_path):
    for name in ("06_b.ipynb", "05_a.ipynb", "notes.ipynb", "10_c.ipynb"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in reproduce_notebooks.numbered_notebooks(tmp_path)] == ["05_a.ipynb", "06_b.ipynb", "10_c.ipynb"]
    assert [p.name for p in reproduce_notebooks.numbered_notebooks(tmp_path, ["10"])] == ["10_c.ipynb"]
    with pytest.raises(KitError, match="no notebook numbered 99"):
        reproduce_notebooks.numbered_notebooks(tmp_path, ["99"])


def test_cli_reproduce_errors_are_one_line(capsys):
    assert main(["reproduce", "--only", "99"]) == 2
    assert capsys.readouterr().err.startswith("error: no notebook numbered 99")
    with pytest.raises(SystemExit):
        main(["reproduce", "--profile", "huge"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine may run the paper profile")
def test_paper_profile_needs_a_gpu():
    with pytest.raises(KitError, match="needs a CUDA GPU"):
        reproduce_notebooks.reproduce("paper")


@pytest.mark.slow
def test_reproduce_end_to_end_on_the_smoke_profile(tmp_path):
    """The reproduction notebooks (05 on) headless on the smoke profile: every table and the figure
    written, a paper and a measured value on every row, REPORT.md gathering them."""
    only = [p.name[:2] for p in reproduce_notebooks.numbered_notebooks() if p.name[:2] >= "05"]
    report = reproduce_notebooks.reproduce("smoke", out=tmp_path, only=only, progress=False)
    folder = tmp_path / "smoke"
    assert report == folder / "REPORT.md"
    for suffix in ("png", "svg", "md"):
        assert (folder / f"figure2.{suffix}").stat().st_size > 0
    written = [name for name in OUTPUTS[1:] if (folder / f"{name}.csv").exists()]
    assert {"table1", "table2", "table5_6"} <= set(written)
    text = report.read_text()
    for name in written:
        table = pd.read_csv(folder / f"{name}.csv")
        paper_rows = len(PAPER[name].rows)
        assert len(table) == len(rows_of(PAPER[name], get_profile("smoke").beyond))  # the alternatives follow
        assert table["paper accuracy %"][:paper_rows].notna().all() and table["measured accuracy %"].notna().all()
        assert table["method"][paper_rows:].str.endswith("(not in the paper)").all()
        assert PAPER[name].title in text
    missing = [name for name in OUTPUTS[1:] if name not in written]
    assert (f"Missing (their notebooks have not run or do not exist yet): {', '.join(missing)}." in text) == bool(missing)
    for name in only:
        assert len(list((folder / "notebooks").glob(f"{name}_*.ipynb"))) == 1
    assert all((run / "summary.json").exists() for run in (folder / "store").iterdir())
    # Shared runs are trained once: Table 5/6's ε = 1 is Table 2's PatchGD 16 GB, and Table 1 reads
    # Figure 2's four runs back.
    assert len(list((folder / "store").glob("patchgd-mobilenet_v2-*"))) == 4
    executed = {path.name[:2]: path.read_text() for path in (folder / "notebooks").iterdir()}
    assert executed["06"].count("): from the store") == 4 and executed["08"].count("): from the store") == 1


def test_paper_gpu_hours_scale_the_papers_a100_speed_by_measured_ratios(monkeypatch):
    speeds = {("gd", "resnet50"): 100.0, ("patchgd", "mobilenet_v2"): 200.0}
    monkeypatch.setattr(latency, "inference_speed", lambda method, backbone, *args: speeds[method, backbone])
    table = PAPER["table5_6"]
    config = TrainConfig(method="patchgd", backbone="mobilenet_v2", image_size=64, patch_size=32)
    # 20 test images in 2 s: 10 images/s evaluating, 5 training.
    run = {"history": [{"train_images_per_s": 5.0, "eval_seconds": 2.0}], "final": {}}
    hours, basis = latency.paper_gpu_hours([RowResult(table, table.rows[0], config, FAKE_PLAN, "", [run], 20)])
    gpu_eval = latency.A100_RESNET50_512_IMG_S * 2  # the row's model is twice as fast as ResNet50 here
    paper = get_profile("paper")
    expected = paper.epochs * 10 * (paper.per_class_train / (gpu_eval / 2) + paper.per_class_test / gpu_eval)
    assert hours == pytest.approx(expected / 3600)
    assert basis.startswith("estimated, not measured")


def test_paper_hours_footer_calls_a_coarser_patch_grid_a_lower_bound(monkeypatch):
    monkeypatch.setattr(latency, "paper_gpu_hours", lambda results: (12.3, "estimated, not measured"))
    run = {"history": [], "final": {}}

    def footer(table_name, row_id, image_size, patch_size):
        table = PAPER[table_name]
        config = TrainConfig(method="patchgd", image_size=image_size, patch_size=patch_size, num_classes=6)
        return latency.paper_hours_footer([RowResult(table, table.row(row_id), config, FAKE_PLAN, "", [run])])

    same_grid = footer("table5_6", "eps1", 64, 32)  # 2×2, as the paper's 512/256
    assert same_grid.startswith("**The paper profile**") and "about 12 A100 hours" in same_grid
    assert "lower bound" not in same_grid
    assert "lower bound" in footer("table4", "s10_m100", 128, 32)  # 4×4 where the paper has 16×16


def test_missing_plans_are_made_in_parallel_as_one_process_makes_them_and_as_shipped(tmp_path, monkeypatch):
    table = PAPER["table2"]
    rows = [table.settings(table.row(r)) for r in ("gd_16gb", "gd_4gb")]
    shipped = paperrows.paper_plans(rows, tmp_path / "shipped.json")
    assert not (tmp_path / "shipped.json").exists()  # read from the kit's paper_plans.json, nothing planned
    monkeypatch.setattr(paperrows, "SHIPPED", tmp_path / "none.json")
    parallel = paperrows.paper_plans(rows, tmp_path / "two.json", workers=2)
    assert parallel == paperrows.paper_plans(rows, tmp_path / "one.json", workers=1) == shipped
    assert [p["batch_size"] for p in parallel] == [36, 8]  # the planner's MobileNetV2 batches at 512 px
    assert len(json.loads((tmp_path / "two.json").read_text())) == 2


def test_every_paper_row_has_a_plan_shipped_for_the_current_code():
    stale = paperrows.unshipped_rows()
    assert not stale, (f"{len(stale)} paper rows have no plan shipped for this planner and these traced steps: "
                       "run `python -m patchgd_kit plan --ship` and commit patchgd_kit/planner/paper_plans.json")


def test_the_planners_version_follows_its_code_not_its_words(tmp_path, monkeypatch):
    module = tmp_path / "step.py"

    def version_of(source):
        module.write_text(source)
        monkeypatch.setattr(paperrows, "PLANNED_BY", (SimpleNamespace(__file__=str(module)),))
        return paperrows.planner_version.__wrapped__()
    code = 'def peak(batch):\n    """Bytes."""\n    return 4 * batch  # fp32\n'
    first = version_of(code)
    assert version_of(code.replace("Bytes.", "Bytes of one step.").replace("# fp32", "# float32")) == first
    assert version_of(code.replace("4 * batch", "2 * batch")) != first
