"""The GPU check without a GPU: its dry mode runs every section at a tiny scale on the CPU and
writes its report; the over-budget row carries the planner's refusal and the kit's out-of-memory
text; a failing row is recorded and the rest still runs; the time budget skips rows; latest_check
quotes real checks only. The one CUDA test is skipped here."""
import json
import math

import pytest
import torch

from patchgd_kit.gpu import check as gpu_check, report as gpu_report, rows as gpu_rows
from patchgd_kit.cli import main
from patchgd_kit.gpu.rows import Row

NEEDS_CUDA = "needs CUDA"


def _quiet(line: str) -> None:
    pass


@pytest.fixture(scope="module")
def dry_report(tmp_path_factory):
    """The first row of each section for each method of the dry plan (the whole dry plan is
    `python -m patchgd_kit gpu-check --dry`: one to two minutes on 2 cores)."""
    first = {}
    for row in gpu_rows.dry_plan(gpu_rows.paper_plan()):
        first.setdefault((row.section, row.method), row)
    rows = list(first.values())
    out = tmp_path_factory.mktemp("gpu-check")
    return gpu_check.run_check(out, dry=True, rows=rows, log=_quiet), out


def test_dry_plan_is_the_paper_plan_at_a_tiny_scale():
    paper, dry = gpu_rows.paper_plan(), gpu_rows.dry_plan(gpu_rows.paper_plan())
    assert len(set(dry)) == len(dry) < len(paper)
    for rows in (paper, dry):
        assert {r.section for r in rows} == set(gpu_rows.SECTIONS)
        peak = [r for r in rows if r.section == "peak"]
        assert {(r.method, r.backbone, r.amp) for r in peak} == {
            (m, b, amp) for m in ("gd", "patchgd") for b in ("resnet50", "mobilenet_v2") for amp in (False, True)}
    assert tuple(gpu_check.CHECKS) == gpu_rows.SECTIONS == tuple(gpu_report.TITLES)  # a section: a check, a title
    assert {r.image_size for r in paper} == {512, 2048}
    assert max(r.image_size for r in dry) <= 128 and max(r.batch_size or 0 for r in dry) == 2
    assert all(r.budget in (None, "dry") for r in dry)


@pytest.mark.slow
def test_dry_check_runs_every_section_and_writes_its_report(dry_report):
    report, out = dry_report
    saved = json.loads(next(out.glob("*-cpu-*.json")).read_text())
    assert saved["rows"] == report["rows"] and saved["dry"] and saved["kind"] == "gpu-check"
    assert {(r["section"], r["method"]) for r in report["rows"]} == {
        (s, m) for s in gpu_rows.SECTIONS for m in ("gd", "patchgd")} - {("slice", "gd")}  # the slice: Table 2's PatchGD
    for row in report["rows"]:
        if row["section"] in ("budget", "over-budget"):  # the cap exists on CUDA only: not faked
            assert row["status"] == "skipped" and NEEDS_CUDA in row["reason"], row
        else:
            assert row["status"] == "ok", row
    peaks = [r for r in report["rows"] if r["section"] == "peak"]
    assert peaks and all(math.isfinite(r["ratio_allocated"]) and r["ratio_allocated"] > 0 for r in peaks)
    fp16_epochs = [r for r in report["rows"] if r["section"] == "fp16-epoch"]
    assert all(math.isfinite(r["train_loss"]) and r["precision"] for r in fp16_epochs)  # what the epoch recorded
    assert all(r["images_per_s"] > 0 for r in report["rows"] if r["section"] == "latency")
    summary = report["summary"]
    assert summary["failed"] == 0 and "remain estimates" in summary["verdict"]
    text = next(out.glob("*-cpu-*.md")).read_text()
    assert "**Dry run**" in text and all(title in text for title in gpu_report.TITLES.values())


@pytest.mark.slow
def test_over_budget_row_names_the_planners_refusal_and_the_out_of_memory_message(dry_report):
    report, _ = dry_report
    rows = [r for r in report["rows"] if r["section"] == "over-budget"]
    assert rows
    for row in rows:
        assert row["planned_batch"] == 2 and row["over_batch"] == 4
        assert "batch size 4" in row["planner_refusal"] and "does not fit the" in row["planner_refusal"]
        assert "the largest batch that fits is 2" in row["planner_refusal"]
        assert row["oom_message"].startswith("CUDA out of memory under the")
        assert "at batch size 4" in row["oom_message"] and "for batch 2" in row["oom_message"]


def test_a_failing_row_is_recorded_and_the_rest_still_runs(tmp_path):
    rows = [Row("speed", "gd", "no-such-backbone", 32, 2), Row("latency", "gd", "mobilenet_v2", 32, 2)]
    report = gpu_check.run_check(tmp_path, dry=True, rows=rows, log=_quiet)
    failed, ok = report["rows"]
    assert failed["status"] == "failed" and failed["error"].startswith("KitError: unknown backbone 'no-such-backbone'")
    assert "(at " in failed["error"]  # where it was raised
    assert ok["status"] == "ok" and ok["images_per_s"] > 0
    assert report["summary"]["failed"] == 1 and report["summary"]["ok"] == 1
    assert "failed: KitError" in next(tmp_path.glob("*.md")).read_text()


def test_rows_after_the_time_budget_are_skipped_and_listed(tmp_path, capsys):
    assert main(["gpu-check", "--dry", "--minutes", "0", "--out", str(tmp_path)]) == 0
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert len(report["rows"]) == len(gpu_rows.dry_plan(gpu_rows.paper_plan()))
    assert all(r["status"] == "skipped" and "time budget" in r["reason"] for r in report["rows"])
    out = capsys.readouterr().out
    assert "GPU check (dry) on CPU (" in out and "threads): 0 ok, 0 failed" in out


def test_cli_refuses_a_negative_time_budget(tmp_path, capsys):
    assert main(["gpu-check", "--dry", "--minutes", "-1", "--out", str(tmp_path)]) == 2
    assert "--minutes -1.0 is not allowed" in capsys.readouterr().err


def _check(folder, name, dry, started, ratios=(0.9, 1.1)):
    summary = {"ratio_reserved": list(ratios), "verdict": "the 10% headroom covers every measured peak"}
    (folder / f"{name}.json").write_text(json.dumps({"kind": "gpu-check", "dry": dry, "started": started,
                                                     "date": started[:10], "device": name, "summary": summary}))


def test_latest_check_quotes_the_newest_real_check_and_ignores_dry_ones(tmp_path):
    assert gpu_report.latest_check(tmp_path) is None
    assert gpu_report.memory_wording(tmp_path).startswith("estimated (the kit's planner; not yet checked on a GPU)")
    _check(tmp_path, "dry-cpu", True, "2030-01-01T00:00:00+00:00")
    (tmp_path / "broken.json").write_text("{")
    assert gpu_report.latest_check(tmp_path) is None
    _check(tmp_path, "old-gpu", False, "2025-01-01T00:00:00+00:00")
    _check(tmp_path, "new-gpu", False, "2026-01-01T00:00:00+00:00", ratios=(0.8, 1.2))
    assert gpu_report.latest_check(tmp_path)["device"] == "new-gpu"
    wording = gpu_report.memory_wording(tmp_path)
    assert "checked on new-gpu on 2026-01-01" in wording and "0.80–1.20" in wording


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_planned_batch_fits_its_cap_and_twice_it_runs_out_of_memory(tmp_path):
    rows = [Row("budget", "gd", "mobilenet_v2", 256, budget="2GB"), Row("over-budget", "gd", "mobilenet_v2", 256, budget="2GB")]
    report = gpu_check.run_check(tmp_path, rows=rows, log=_quiet)
    fits, over = report["rows"]
    assert fits["status"] == "ok" and fits["fits"] and fits["measured_reserved_bytes"] > 0
    assert over["status"] == "ok" and (not over["fits"]) and over["oom_message"].startswith("CUDA out of memory under the 2.00 GiB")
