"""Every public name is documented: a numpydoc docstring whose Parameters
match the signature, a formula, and an entry in the API reference."""

import inspect
import pathlib

import pytest

import numbanorm as nn

docscrape = pytest.importorskip("numpydoc.docscrape")
API = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "api.rst").read_text()


def _callables():
    for name in nn.__all__:
        obj = getattr(nn, name)
        if inspect.isclass(obj):
            yield name, obj.__init__ if "__init__" in vars(obj) else None, obj
        else:
            yield name, obj, obj


@pytest.mark.parametrize("name", nn.__all__)
def test_public_name_is_in_the_api_reference(name):
    assert f"numbanorm.{name}" in API


@pytest.mark.parametrize("name, func, obj", list(_callables()), ids=[n for n, *_ in _callables()])
def test_docstring_parameters_match_the_signature(name, func, obj):
    assert obj.__doc__ and obj.__doc__.strip(), f"{name} has no docstring"
    if func is None:
        return
    doc = docscrape.ClassDoc(obj) if inspect.isclass(obj) else docscrape.FunctionDoc(obj)
    documented = []
    for p in doc["Parameters"]:
        documented += [n.strip() for n in p.name.split(",")]
    params = [
        p for p in inspect.signature(func).parameters if p not in ("self",)
    ]
    assert documented == params, f"{name}: documented {documented}, signature {params}"


@pytest.mark.parametrize("name", [n for n in nn.__all__ if n.endswith("_norm") or n == "moments"])
def test_forward_functions_state_their_formula(name):
    assert ".. math::" in getattr(nn, name).__doc__
