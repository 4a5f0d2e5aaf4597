"""Run the runnable Examples sections of every fastla module."""

import doctest
import importlib
import pkgutil

import pytest

import fastla

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(fastla.__path__, "fastla.") if ".__main__" not in m.name
)


@pytest.mark.parametrize("name", MODULES)
def test_module_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.failed == 0
