"""Notebook 02's hand-written Algorithm 1 (the cell tagged `algorithm1`) gives the same gradients as
`patchgd.train_batch` on the same batch and schedule, and the check notices when it is broken."""
from pathlib import Path

import nbformat
import pytest
import torch

from patchgd_kit.face.teaching.watch import TinyPatchGD, gradients_beside_train_batch

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "02_zblock_filling.ipynb"


def _algorithm1_source() -> str:
    cells = [c for c in nbformat.read(NOTEBOOK, as_version=4).cells if "algorithm1" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "notebook 02 has one cell tagged 'algorithm1'"
    return cells[0].source


def _algorithm1(source: str):
    namespace = {}
    exec(compile(source, str(NOTEBOOK), "exec"), namespace)
    return namespace["algorithm1"]


def _batch():
    torch.manual_seed(0)
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return TinyPatchGD(image_size=64, patch_size=16), images, torch.tensor([1, 4, 7])


def test_the_small_algorithm_is_short():
    lines = [line for line in _algorithm1_source().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) <= 25 + 4  # the algorithm and its patch helper; imports aside


@pytest.mark.parametrize("k, zeta, epsilon", [(4, 4, 1), (3, 6, 4), (16, 1, 1)])
def test_small_algorithm_gradients_equal_train_batch(k, zeta, epsilon):
    """ε = 1, ε that does not divide ζ (a shorter last group) with k not dividing m·n (top-up), and all at once."""
    model, images, labels = _batch()
    check = gradients_beside_train_batch(_algorithm1(_algorithm1_source()), model, images, labels,
                                         k=k, zeta=zeta, epsilon=epsilon)
    assert len(check) == -(-zeta // epsilon)
    assert check["equal"].all(), check


def test_the_check_fails_when_the_fill_keeps_its_graph():
    source = _algorithm1_source()
    fill = next(line for line in source.splitlines() if "torch.no_grad()" in line)
    broken = source.replace(fill, fill[:len(fill) - len(fill.lstrip())] + "if True:")
    model, images, labels = _batch()
    check = gradients_beside_train_batch(_algorithm1(broken), model, images, labels, k=4, zeta=4, epsilon=1)
    assert not check["equal"].iloc[0]


def test_the_figure3_schematic_highlights_the_sampled_cells():
    import numpy as np
    from matplotlib.colors import to_hex

    from patchgd_kit.face import viz
    from patchgd_kit.face.schematic import GRADIENT

    image = np.zeros((64, 64), dtype=np.uint8)
    fig = viz.figure3_schematic(image, 16, torch.tensor([0, 5, 15]))
    z_axes = fig.axes[2]
    orange = [p for p in z_axes.patches if to_hex(p.get_facecolor()) == GRADIENT]
    assert len(fig.axes) == 4 and len(orange) == 3
    with pytest.raises(ValueError, match="multiple of p = 24"):
        viz.figure3_schematic(image, 24, [0])
