"""The gpu profile (issue 37): its estimate before anything trains, its rows run tiny on the CPU end to
end (the ImageNet fallback said in one line), the notebooks it leaves out, and the gpu-check's slice."""
import json

import pytest

from patchgd_kit.gpu import check as gpu_check, estimate as gpu_estimate, rows as gpu_rows
from patchgd_kit.report import figure, tables
from patchgd_kit.reproduce import notebooks as reproduce_notebooks, tableruns
from patchgd_kit.runs import profiles, scaling
from patchgd_kit.cli import main
from patchgd_kit.paper.numbers import FIGURE2
from patchgd_kit.runs.profiles import get_profile


def fake_plans(rows, cache):
    """Planned batches with the budgets' regime (4 GB: several times smaller), without tracing."""
    return [{"batch_size": 8 if s["memory_budget"] == "16GB" else 2, "k": 1, "estimated_peak_bytes": 2**33,
             "estimator": "fake"} for s in rows]


@pytest.fixture
def tiny_gpu(tmp_path, monkeypatch):
    """KIT_RUNS in tmp_path, the planner faked, ImageNet weights unavailable (as offline)."""
    monkeypatch.setenv("KIT_RUNS", str(tmp_path))
    monkeypatch.setattr(scaling, "paper_plans", fake_plans)
    monkeypatch.setattr(profiles, "imagenet_unavailable", lambda backbone: "URLError: no network (test)")
    monkeypatch.setattr(profiles, "_FALLBACK_SAID", set())
    return get_profile("gpu", image_size=64, patch_size=32, per_class_train=2, per_class_test=1, epochs=1,
                       warmup_epochs=0, pretrain_steps=2)


def test_the_gpu_profile_is_the_papers_task_sized_for_an_hour():
    gpu, paper = get_profile("gpu"), get_profile("paper")
    for field in ("image_size", "patch_size", "min_digit_side", "batch_scale", "weights", "sampling"):
        assert getattr(gpu, field) == getattr(paper, field), field
    assert gpu.per_class_test >= 200 and gpu.max_batch_size is None and gpu.trunk_lr_scale == 1
    assert set(gpu.skip_notebooks) == {"09", "10"} and all("paper" in why for why in gpu.skip_notebooks.values())
    assert gpu_estimate.estimate(gpu)["total_minutes"] <= 60


def test_estimate_prints_minutes_per_notebook_with_the_source_of_every_figure(capsys):
    assert main(["reproduce", "--profile", "gpu", "--estimate"]) == 0
    out = capsys.readouterr().out
    for notebook in ("03", "05", "06", "07", "08"):
        assert f"  {notebook}: " in out and " min" in out
    runs = [line for line in out.splitlines() if line.startswith("      ")]
    assert len(runs) == 14 and all("A100 40 GB, the paper's Table 3 latency" in line for line in runs)
    assert "09: not estimated (Table 3 runs on PANDA" in out and "digits stand-in's pretraining" in out


def test_a_gpu_checks_measured_images_per_s_replace_the_papers():
    check = {"device": "NVIDIA H100", "date": "2027-01-01", "rows": [
        {"section": "slice", "status": "ok", "method": "patchgd", "backbone": "mobilenet_v2", "image_size": 512,
         "amp": False, "train_images_per_s": 1000.0, "eval_images_per_s": 4000.0}]}
    paper_only = gpu_estimate.estimate("gpu")
    measured = gpu_estimate.estimate("gpu", check)
    row = measured["notebooks"]["08"]["runs"][0]
    assert row["source"] == "NVIDIA H100, gpu-check 2027-01-01: its profile slice" and row["train_images_per_s"] == 1000
    p = get_profile("gpu")
    assert row["minutes"] == pytest.approx(p.epochs * (p.per_class_train * 10 / 1000 + 2000 / 4000) / 60)
    assert measured["notebooks"]["06"] == paper_only["notebooks"]["06"]  # ResNet50: still the paper's figure


@pytest.mark.slow  # 867 s at load 4 on 2 cores (2026-12-06): train() plans every budgeted run on fake tensors
def test_the_gpu_profiles_rows_run_tiny_on_the_cpu_end_to_end(tiny_gpu, tmp_path, capsys):
    folder = profiles.profile_dir(tiny_gpu)
    figure_runs = tableruns.run_table("table1", tiny_gpu, rows=FIGURE2["rows"], progress=False)
    figure.write_figure2(figure_runs, folder)
    for name in ("table1", "table2", "table5_6"):
        tables.write_table(tableruns.run_table(name, tiny_gpu, progress=False), folder)
        table = (folder / f"{name}.md").read_text()
        assert "digits-pretrained" in table and "stand-in for ImageNet" in table  # the init, named
    lines = [line for line in capsys.readouterr().out.splitlines() if "could not be downloaded" in line]
    assert len(lines) == 2 and all("digits-pretrained stand-in" in line for line in lines)  # once per backbone
    assert len(list((folder / "store").iterdir())) >= 14  # Figure 2 and Tables 1, 2, 5/6: 14 distinct runs


def test_reproduce_leaves_out_the_notebooks_the_profile_skips_and_says_why(capsys):
    kept = reproduce_notebooks.skip_notebooks(reproduce_notebooks.numbered_notebooks(), get_profile("gpu"))
    assert {p.name[:2] for p in kept}.isdisjoint({"09", "10"}) and len(kept) >= 10
    assert "09_table3_panda.ipynb: not run at profile 'gpu': Table 3 runs on PANDA" in capsys.readouterr().out
    with pytest.raises(profiles.KitError, match="left out at profile 'gpu'"):
        reproduce_notebooks.skip_notebooks(reproduce_notebooks.numbered_notebooks(only=["09"]), get_profile("gpu"))


def test_the_dry_gpu_check_runs_the_profile_slice_and_records_the_hour(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr(scaling, "paper_plans", fake_plans)
    monkeypatch.setattr(profiles, "imagenet_unavailable", lambda backbone: "URLError: no network (test)")
    rows = [r for r in gpu_rows.dry_plan(gpu_rows.paper_plan()) if r.section == "slice"]
    assert len(rows) == 1 and rows[0].image_size == 64
    result = gpu_check.run_check(tmp_path / "check", dry=True, rows=rows, log=lambda line: None)
    row = result["rows"][0]
    assert row["status"] == "ok", row
    assert row["train_images_per_s"] > 0 and row["eval_images_per_s"] > 0 and "stand-in" in row["init"]
    saved = json.loads(next((tmp_path / "check").glob("*.json")).read_text())
    assert saved["hour_estimate"]["minutes"] == pytest.approx(gpu_estimate.estimate("gpu")["total_minutes"], abs=0.1)
    assert "The gpu profile's hour" in next((tmp_path / "check").glob("*.md")).read_text()
    assert not (tmp_path / "runs").exists()  # the slice trains in the check's scratch folder
