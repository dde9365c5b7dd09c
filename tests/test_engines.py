"""Both back ends implement the one engine interface (numbanorm._interface)."""

import inspect

import pytest

from numbanorm import _layout
from numbanorm._interface import ENGINE_INTERFACE


@pytest.mark.parametrize("device", [False, True], ids=["cpu", "cuda"])
def test_each_engine_implements_the_interface(device):
    engine = _layout.engine_for(device)
    for name, parameters in ENGINE_INTERFACE.items():
        function = getattr(engine, name, None)
        assert callable(function), f"{engine.__name__} lacks {name}"
        assert tuple(inspect.signature(function).parameters) == parameters, name


def test_the_public_functions_ask_engines_for_nothing_else():
    import pathlib
    import re

    import numbanorm

    package = pathlib.Path(numbanorm.__file__).parent
    asked = set()
    for path in package.glob("_*.py"):
        asked |= set(re.findall(r"\bengine\.([a-z_0-9]+)\(", path.read_text()))
    # moments() runs on the host only and asks the CPU engine for group_m2.
    assert asked - {"group_m2"} <= set(ENGINE_INTERFACE)
