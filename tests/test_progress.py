"""Progress bars honour TQDM_DISABLE even though the kit passes disable= to tqdm explicitly."""
import pytest
from tqdm.auto import tqdm

from patchgd_kit.progress import bar_disabled


@pytest.mark.parametrize("value, disabled", [("1", True), ("True", True), ("0", False), ("", False), ("false", False)])
def test_environment_decides_when_progress_is_asked_for(monkeypatch, value, disabled):
    monkeypatch.setenv("TQDM_DISABLE", value)
    assert bar_disabled(True) is disabled
    assert bar_disabled(False) is True


def test_a_bar_built_the_kits_way_is_off_under_tqdm_disable(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert tqdm(range(3), disable=bar_disabled(True)).disable
    assert not tqdm(range(3), disable=not True, file=open("/dev/null", "w")).disable  # what tqdm alone would do
