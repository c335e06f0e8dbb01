import pytest

from patchgd_kit.data.ultramnist import ensure_dataset


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """UltraMNIST at 64 px: 3 train and 2 test images per class (30 / 20 images)."""
    return ensure_dataset(tmp_path_factory.mktemp("data"), image_size=64, per_class_train=3,
                          per_class_test=2, seed=0, progress=False)
