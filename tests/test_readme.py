"""README's first screen serves three readers: the learn command, the two reproduce commands, and the
profile table (wall time, what the numbers can and cannot show) all sit in its first 60 lines."""
from pathlib import Path

from patchgd_kit.runs.profiles import PROFILES

README = Path(__file__).resolve().parents[1] / "README.md"


def test_first_screen_has_learn_reproduce_and_the_profile_table():
    first = README.read_text().splitlines()[:60]
    text = "\n".join(first)
    assert any(line.startswith("make lab") for line in first)
    assert any(line.startswith("make reproduce   # the main job") for line in first)
    assert any(line.startswith("make test        # all tests") for line in first)
    assert "| profile | wall time | what its numbers can show | what they cannot |" in text
    for name in PROFILES:
        assert any(line.startswith(f"| `{name}`") for line in first), name


def test_readme_and_notebook_05_print_the_same_profile_table():
    from patchgd_kit.face.profile_times import CPU_MINUTES, PAPER_A100_HOURS, profile_table_markdown

    assert profile_table_markdown() in README.read_text()
    notebook = (README.parent / "notebooks" / "05_figure2.ipynb").read_text()
    assert "profile_times.profile_table_markdown()" in notebook
    assert round(sum(CPU_MINUTES.values())) == 125 and sum(PAPER_A100_HOURS.values()) == 1716
