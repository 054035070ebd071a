import pytest
import torch
from core_helpers import seeded_images


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def images() -> torch.Tensor:
    return seeded_images(2)
