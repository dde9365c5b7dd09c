"""The one table of cases that the tests and the benchmark share (as numbagg's
``COMPARISONS``): for every norm, its forward and backward call on an input
of a given layout, the layouts it runs in and the affine parameters it
takes. The tests pair each norm with its float64 reference
(``tests/reference.py``); :mod:`numbanorm.bench` times each against PyTorch.
A change of the public API is made here once.
"""

from typing import Callable, NamedTuple

from ._grouped_norms import (
    batch_norm,
    batch_norm_backward,
    group_norm,
    group_norm_backward,
    instance_norm,
    instance_norm_backward,
)
from ._row_norms import layer_norm, layer_norm_backward, rms_norm, rms_norm_backward
from ._weight_norm import weight_norm, weight_norm_backward

#: The axis of the parameters in each layout: the row's last axis, or the
#: channel axis of NCHW and channels-last data.
AXIS = {"rows": -1, "nchw": 1, "nhwc": -1}


class Case(NamedTuple):
    """How to run one norm.

    ``forward(x, weight, bias, axis, **options) -> (y, saved)`` and
    ``backward(dy, x, saved, weight, axis) -> (dx, *parameter gradients)``,
    with ``axis`` from :data:`AXIS` and parameters of
    :func:`param_length` values (``bias`` is ignored unless ``"bias"`` is
    in ``params``; weight norm's ``weight`` is its ``g``). ``options`` go to
    the public function (``groups`` for group norm, default 2).
    """

    forward: Callable
    backward: Callable
    layouts: tuple
    params: tuple


def _group_forward(x, w, b, axis, groups=2, **options):
    return group_norm(x, groups, weight=w, bias=b, axis=axis, **options)


CASES = {
    "layer": Case(
        lambda x, w, b, axis, **o: layer_norm(x, weight=w, bias=b, axis=axis, **o),
        lambda dy, x, s, w, axis: layer_norm_backward(dy, x, s, weight=w, axis=axis),
        ("rows",), ("weight", "bias"),
    ),
    "rms": Case(
        lambda x, w, b, axis, **o: rms_norm(x, weight=w, axis=axis, **o),
        lambda dy, x, s, w, axis: rms_norm_backward(dy, x, s, weight=w, axis=axis),
        ("rows",), ("weight",),
    ),
    "batch": Case(
        lambda x, w, b, axis, **o: batch_norm(x, weight=w, bias=b, axis=axis, **o),
        lambda dy, x, s, w, axis: batch_norm_backward(dy, x, s, weight=w, axis=axis),
        ("nchw", "nhwc"), ("weight", "bias"),
    ),
    "group": Case(
        _group_forward,
        lambda dy, x, s, w, axis: group_norm_backward(dy, x, s, weight=w, axis=axis),
        ("nchw", "nhwc"), ("weight", "bias"),
    ),
    "instance": Case(
        lambda x, w, b, axis, **o: instance_norm(x, weight=w, bias=b, axis=axis, **o),
        lambda dy, x, s, w, axis: instance_norm_backward(dy, x, s, weight=w, axis=axis),
        ("nchw", "nhwc"), ("weight", "bias"),
    ),
    "weight": Case(
        lambda v, g, b, axis, **o: weight_norm(v, g, axis=0, **o),
        lambda dw, v, s, g, axis: weight_norm_backward(dw, v, g, s, axis=0),
        ("rows",), ("g",),
    ),
}


def param_length(norm, shape, layout):
    """The length of ``norm``'s parameters for an input of ``shape`` in ``layout``."""
    if norm == "weight":
        return shape[0]
    return shape[AXIS[layout]]


def calls(norm, layout, shape, weight, bias, **options):
    """``(forward, backward)`` of ``norm`` for inputs of ``shape`` in
    ``layout``: ``forward(x) -> (y, saved)``, ``backward(dy, x, saved) ->
    gradients``, with the first :func:`param_length` values of ``weight``
    and ``bias`` (either may be None)."""
    case = CASES[norm]
    n = param_length(norm, shape, layout)
    axis = AXIS[layout]
    w = None if weight is None else weight[:n]
    b = None if bias is None or "bias" not in case.params else bias[:n]

    def forward(x):
        return case.forward(x, w, b, axis, **options)

    def backward(dy, x, saved):
        return case.backward(dy, x, saved, w, axis)

    return forward, backward
