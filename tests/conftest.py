import numpy as np
import pytest

import fastla
from tests.helpers import DTYPES, LAYOUTS


@pytest.fixture(params=DTYPES, ids=lambda d: np.dtype(d).name)
def dtype(request):
    return request.param


@pytest.fixture(params=LAYOUTS)
def layout(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(20261123)


@pytest.fixture(autouse=True)
def _restore_global_settings():
    """Tests that change the global backend must not leak it into other tests."""
    before = fastla.get_backend()
    yield
    fastla.set_backend(before)
