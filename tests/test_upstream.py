"""NumPy's and SciPy's own tests, run against fastla's functions.

The test classes are imported from the installed NumPy/SciPy test modules (never copied) and
subclassed with fastla's function in place of the anchor's. Some upstream tests call the anchor
through the module's globals (``np.matmul(...)``, ``linalg.solve(...)``) rather than through the
class attribute; for those the module global is swapped, for the duration of each test only, for a
proxy of the same module whose function is fastla's, so they test fastla too.

Written exceptions (each test still runs; none is skipped):

* SciPy's softmax tests call ``softmax(x)`` with SciPy's default ``axis=None`` (normalise over the
  whole array). fastla's default is ``axis=-1``, the ML convention (README, "Differences from
  SciPy"), so the substituted function is fastla's with ``axis=None`` as the default.
"""

from __future__ import annotations

import functools
import types

import numpy as np
import pytest

import fastla

tm = pytest.importorskip("numpy._core.tests.test_multiarray")
tl = pytest.importorskip("numpy.linalg.tests.test_linalg")


class _Proxy(types.ModuleType):
    """A module proxy: the given attributes replaced, everything else from ``base``."""

    def __init__(self, base, **replace):
        super().__init__(base.__name__)
        self._base = base
        self.__dict__.update(replace)

    def __getattr__(self, name):
        return getattr(self._base, name)


# --------------------------------------------------------------------------- np.matmul


class TestFastlaMatmul(tm.TestMatmul):
    """``numpy/_core/tests/test_multiarray.py::TestMatmul`` with ``fastla.matmul``."""

    matmul = staticmethod(fastla.matmul)

    @pytest.fixture(autouse=True)
    def _np_matmul_is_fastla(self, monkeypatch):
        monkeypatch.setattr(tm, "np", _Proxy(np, matmul=fastla.matmul))


@pytest.mark.parametrize("backend", ["numba", "loop"])
class TestFastlaMatmulCompiled(tm.MatmulCommon):
    """``MatmulCommon``'s shape, broadcasting and value tests with a compiled (or the loop) backend
    forced, on the dtypes it compiles: integer, bool and complex input is NumPy's by design (see
    ``fastla.matmul``), and a forced compiled backend rejects it with a TypeError."""

    # The value tests loop over ``types[1:]``, the others over all of ``types``: "dfd" gives both
    # float dtypes to each.
    types = "dfd"

    @pytest.fixture(autouse=True)
    def _forced(self, backend):
        self.matmul = functools.partial(fastla.matmul, backend=backend)

    def test_scalar_output(self):
        self._floats_then_bool(super().test_scalar_output)

    def test_vector_vector_values(self):
        self._floats_then_bool(super().test_vector_vector_values)

    def test_vector_matrix_values(self):
        self._floats_then_bool(super().test_vector_matrix_values)

    def test_matrix_vector_values(self):
        self._floats_then_bool(super().test_matrix_vector_values)

    def test_matrix_matrix_values(self):
        self._floats_then_bool(super().test_matrix_matrix_values)

    @staticmethod
    def _floats_then_bool(test):
        # Each of these upstream tests ends with a bool case, which a forced compiled backend
        # rejects; every float case before it must pass.
        with pytest.raises(TypeError, match="bool is not compiled"):
            test()


# --------------------------------------------------------------------------- np.linalg.solve


class TestFastlaSolve(tl.TestSolve):
    """``numpy/linalg/tests/test_linalg.py::TestSolve`` (its generated square and stacked cases
    included) with ``fastla.solve``."""

    @pytest.fixture(autouse=True)
    def _linalg_solve_is_fastla(self, monkeypatch):
        monkeypatch.setattr(tl, "linalg", _Proxy(np.linalg, solve=fastla.solve))


# --------------------------------------------------------------------------- scipy.special

tls = pytest.importorskip("scipy.special.tests.test_logsumexp")


@pytest.fixture
def xp():
    """SciPy's array-API fixture, for NumPy only (fastla's functions take NumPy arrays)."""
    return np


def _scipy_default_axis(fn):
    @functools.wraps(fn)
    def call(x, axis=None, **kwargs):
        return fn(x, axis=axis, **kwargs)

    return call


class TestFastlaSoftmax(tls.TestSoftmax):
    """``scipy/special/tests/test_logsumexp.py::TestSoftmax`` with ``fastla.softmax``."""

    @pytest.fixture(autouse=True)
    def _softmax_is_fastla(self, monkeypatch):
        monkeypatch.setattr(tls, "softmax", _scipy_default_axis(fastla.softmax))


class TestFastlaLogSoftmax(tls.TestLogSoftmax):
    """``scipy/special/tests/test_logsumexp.py::TestLogSoftmax`` with ``fastla.log_softmax``."""

    @pytest.fixture(autouse=True)
    def _log_softmax_is_fastla(self, monkeypatch):
        monkeypatch.setattr(tls, "log_softmax", _scipy_default_axis(fastla.log_softmax))
