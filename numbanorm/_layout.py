"""Validation and canonical views, written once for every norm and back end.

A public function validates its arguments here, maps ``x`` to one of the two
kernel shapes and hands the back end C-contiguous, read-only arrays:

* a **row view** ``(rows, length)``: the normalized axes moved last
  (layer, RMS and weight norm; :func:`numbanorm.moments` uses it as
  ``(rows, 1, 1, L)``);
* a **channel view** ``(N, P, C, Q)``: ``N`` the batch axis (1 for batch
  norm), ``C`` the channel axis, ``P`` the axes between them and ``Q`` the
  axes after it. It is a plain reshape, so C-contiguous input is not copied.

Every check runs before any output or running statistic is written.
"""

import functools
import math
import numbers
import sys
import threading
from typing import NamedTuple

import numpy as np

from ._cpu import memory
from ._types import NormStats

_MIXED = (
    "{name} is {what} array but x is {other}: every array of one call must be on "
    "the same device (NumPy arrays on the host, or device arrays)"
)


# -------------------------------------------------------------- devices ---


def is_device_array(a):
    """Whether ``a`` is a GPU array: it exposes ``__cuda_array_interface__``
    (Numba, CuPy, PyTorch CUDA) or is a Numba CUDA-simulator array."""
    return hasattr(a, "__cuda_array_interface__") or bool(
        getattr(type(a), "__cuda_ndarray__", False)
    )


_cpu_engine = []  # the CPU engine, once imported


def engine_for(device):
    """The one dispatch point: the engine of the back end for host
    (``device=False``) or device arrays. Each back end, and with it Numba, is
    imported on first use: ``import numbanorm`` imports neither."""
    if not device:
        if _cpu_engine:
            return _cpu_engine[0]
        from ._cpu import engine

        _cpu_engine.append(engine)
        return engine
    from ._cuda import engine

    return engine


def is_dask_array(a):
    """Whether ``a`` is a ``dask.array.Array`` (known without importing Dask)."""
    cls = type(a)
    return cls.__name__ == "Array" and cls.__module__.startswith("dask.array")


#: The module that defines Dask arrays: until it is imported, no argument is one.
_DASK_ARRAY = "dask.array"


def dask_dispatch(function):
    """The Dask dispatch, beside :func:`engine_for`: a public function whose
    ``x`` (or backward's ``dy`` or ``x``) is a Dask array runs its twin in
    :mod:`numbanorm._dask.norms`, which builds a graph of CPU-kernel calls."""
    name = function.__name__

    @functools.wraps(function)
    def dispatch(*args, **kwargs):
        if _DASK_ARRAY in sys.modules:  # else no Dask array exists
            arrays = args[:2] if len(args) >= 2 else (*args, *kwargs.values())
            for a in arrays:
                if type(a) is not np.ndarray and is_dask_array(a):
                    from ._dask import norms

                    return getattr(norms, name)(*args, **kwargs)
        return function(*args, **kwargs)

    return dispatch


def _target():
    from ._cuda import target

    return target


def shares_memory(a, b, device):
    """``np.may_share_memory`` for host or device arrays."""
    return _target().may_share_memory(a, b) if device else np.may_share_memory(a, b)


def writeable(a, device):
    """Whether ``a`` may be written (device arrays: unless their owner said read-only)."""
    return not _target().read_only(a) if device else a.flags.writeable


# ---------------------------------------------------------------- dtypes ---

#: Dtypes kept as they are (:func:`result_dtype`).
_FLOATS = frozenset(np.dtype(t) for t in (np.float16, np.float32, np.float64))
_FLOAT32, _FLOAT64 = np.dtype(np.float32), np.dtype(np.float64)


def result_dtype(x, name="x"):
    """The dtype of a norm's output for input ``x``.

    float16/float32/float64 are kept; bool and integers promote to float64
    (as ``np.mean`` does); anything else is a ``TypeError``.
    """
    if x.dtype in _FLOATS:  # the common case, fast
        return x.dtype
    return result_dtype_of(x.dtype, name)


def result_dtype_of(dtype, name="x"):
    """:func:`result_dtype` for an array of ``dtype``."""
    if dtype in _FLOATS:
        return dtype
    kind = dtype.kind
    if kind in "biu":
        return _FLOAT64
    if kind == "f" and dtype.itemsize <= 8:
        return dtype.newbyteorder("=")  # big-endian input: the native dtype of its precision
    if is_bfloat16(dtype):
        return dtype
    raise TypeError(
        f"{name} must be a real array (bfloat16, float16, float32, float64, integer or "
        f"bool), got dtype {dtype}"
    )


def is_bfloat16(dtype):
    """Whether ``dtype`` is ``ml_dtypes.bfloat16``, NumPy's bfloat16 (as JAX
    uses), known by name so that ml_dtypes stays optional."""
    return dtype.kind == "V" and dtype.name == "bfloat16" and dtype.itemsize == 2


def is_float(dtype):
    """Whether ``dtype`` is a floating-point dtype, bfloat16 included."""
    return dtype.kind == "f" or is_bfloat16(dtype)


def compute_dtype(result):
    """Kernel dtype: float16 and bfloat16 are computed in float32 (accumulation
    is float64)."""
    return _FLOAT64 if result == _FLOAT64 else _FLOAT32


def as_input(x, name="x"):
    """``x`` as an array of its back end, and whether it is a device array."""
    if type(x) is np.ndarray:  # the common case, fast
        return x, False
    device = is_device_array(x)
    return as_array(x, name, device), device


def as_array(x, name="x", device=False):
    """``x`` as a NumPy array (``device=False``) or a Numba device array
    (``device=True``); an array on the other side is a ``TypeError``, as is
    anything that is not an array."""
    if type(x) is np.ndarray:  # the common case, fast
        if device:
            raise TypeError(_MIXED.format(name=name, what="a host (NumPy)", other="a device array"))
        return x
    if is_device_array(x):
        if not device:
            raise TypeError(_MIXED.format(name=name, what="a device", other="a NumPy array"))
        return _target().as_device_array(x, name)
    if device:
        raise TypeError(
            f"{name} must be a device array like x (anything with __cuda_array_interface__), "
            f"got {type(x).__name__}"
        )
    if isinstance(x, np.ndarray):
        return not_masked(x, name)
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - numpy's own message is kept
        raise TypeError(f"{name} could not be converted to an array: {exc}") from exc


def not_masked(a, name):
    """``a``, which must not be a NumPy masked array: its mask would be ignored."""
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a masked array, and numbanorm does not support masks: pass "
            f"{name}.filled(value) or {name}.data to normalize every value"
        )
    return a


def same_dtype(a, b):
    """Whether dtypes ``a`` and ``b`` are the same type, in either byte order."""
    return a == b or a.newbyteorder("=") == b.newbyteorder("=")


# ------------------------------------------------------------ arguments ---


def normalize_axis(axis, ndim, name="axis"):
    """One axis as a non-negative int, with a message naming ``name``."""
    if type(axis) is int and -ndim <= axis < ndim:  # the common case, fast
        return axis % ndim
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {axis!r}")
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of range for an array with {ndim} dimensions")
    return axis % ndim


def normalize_axes(axis, ndim, name="axis"):
    """An int or a tuple of ints as a sorted tuple of distinct axes."""
    if type(axis) is int:  # the common case, fast
        return _normalize_axes((axis,), ndim, name)
    axes = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    if all(type(a) is int for a in axes):
        # Only plain ints reach the cache: 1.0 and True hash and compare
        # equal to 1, and a cached 1 must not let them through.
        return _normalize_axes(axes, ndim, name)
    return _normalize_axes.__wrapped__(axes, ndim, name)


@functools.lru_cache(maxsize=256)
def _normalize_axes(axes, ndim, name):
    if not axes:
        raise ValueError(f"{name} must name at least one axis, got {axes!r}")
    out = tuple(normalize_axis(a, ndim, name) for a in axes)
    if len(set(out)) != len(out):
        raise ValueError(f"{name}={axes if len(axes) > 1 else axes[0]!r} repeats an axis")
    return tuple(sorted(out))


def check_eps(eps, name="eps"):
    """``eps`` as a float; it must be a finite, non-negative real number."""
    if type(eps) is float and 0.0 <= eps < math.inf:  # the common case, fast
        return eps
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {eps!r}")
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0.0:
        raise ValueError(f"{name} must be finite and >= 0, got {eps!r}")
    return eps


def check_param(p, shape, name, device=False):
    """An affine parameter as an array of ``shape`` (or None) on x's side
    (``device``); converted later, once, to the kernel's dtype."""
    if p is None:
        return None
    if type(p) is np.ndarray and not device and p.shape == shape and p.dtype in _FLOATS:
        return p  # the common case, fast
    p = as_array(p, name, device)
    result_dtype(p, name)
    if tuple(p.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(p.shape)}")
    return p


def param_grad_dtype(p):
    """Gradients of a parameter (a validated array) come back in the
    parameter's (promoted) dtype."""
    return result_dtype(p, "parameter")


def _param_grad(engine, grad, dtype, shape):
    """``grad`` (new, the engine's) as ``dtype`` and ``shape``: itself when it
    already is (no copy), else a new array."""
    if grad.dtype == dtype and tuple(grad.shape) == shape:
        return grad
    return engine.cast(grad.reshape(shape), dtype)


def check_like(a, shape, dtype, name, like="x", device=False):
    """``a`` must be an array with ``like``'s shape and the expected dtype."""
    a = as_array(a, name, device)
    if tuple(a.shape) != tuple(shape):
        raise ValueError(
            f"{name} must have the shape of {like}, {tuple(shape)}, got {tuple(a.shape)}"
        )
    if not same_dtype(a.dtype, dtype):
        raise TypeError(f"{name} must have dtype {dtype} (that of {like}), got {a.dtype}")
    return a


def check_out(out, shape, dtype, inputs, name="out", device=False):
    """``out`` must be a writeable array of ``shape`` and ``dtype`` on x's side
    (an ndarray, or a device array) that shares no memory with any of
    ``inputs`` (a dict name -> array)."""
    if out is None:
        return None
    if device:
        out = as_array(out, name, device)
    elif not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    else:
        not_masked(out, name)
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(out.shape)}")
    if not same_dtype(out.dtype, dtype):
        raise TypeError(f"{name} must have dtype {dtype}, got {out.dtype}")
    if not writeable(out, device):
        raise ValueError(f"{name} is read-only")
    for other_name, other in inputs.items():
        if other is not None and shares_memory(out, other, device):
            raise ValueError(f"{name} must not share memory with {other_name}")
    return out


def check_saved(saved):
    """``saved`` must be the :class:`NormStats` a forward pass returned."""
    if not isinstance(saved, NormStats):
        raise TypeError(
            "saved must be the NormStats that the forward pass returned (its second "
            f"result), got {type(saved).__name__}"
        )
    return saved


def check_stats(a, shape, name, engine, device=False):
    """A saved statistic from a forward pass must have the expected shape;
    returned as a contiguous float64 array of x's back end."""
    if a is None:
        raise ValueError(f"{name} is missing: pass the `saved` returned by the forward pass")
    a = as_array(a, name, device)
    if tuple(a.shape) != tuple(shape):
        raise ValueError(
            f"{name} has shape {tuple(a.shape)}, expected {tuple(shape)}: "
            "was `saved` produced by the forward pass of this x?"
        )
    return engine.stats(a)


# ---------------------------------------------------------------- views ---


class View(NamedTuple):
    """How ``x`` maps to a kernel array: transpose by ``perm``, reshape to ``kshape``.

    Views are cached per shape and axes (:func:`row_view`, :func:`channel_view`),
    so repeated calls on the same shapes do no layout arithmetic.
    """

    shape: tuple  # shape of x
    perm: tuple  # axes of x in kernel order
    kshape: tuple  # kernel shape
    inverse: tuple  # perm's inverse
    identity: bool  # perm is the identity: the kernel array is a reshape of x

    def to_kernel(self, a, dtype):
        """``a`` (shaped like x) as a C-contiguous, read-only kernel array.

        Copies only when ``a`` is strided, transposed or of another dtype.
        The result is a read-only view (``a`` itself is untouched), so one
        compiled specialization serves writeable and read-only inputs alike,
        and kernels cannot write to their inputs.
        """
        if not (self.identity and a.dtype == dtype and a.flags.c_contiguous):
            a = np.ascontiguousarray(a.transpose(self.perm) if not self.identity else a, dtype)
        return read_only(a, self.kshape)

    def output(self, dtype, result, out):
        """A kernel-shaped buffer to write into, and a function giving the result.

        The kernel writes straight into ``out`` when its memory already has the
        kernel's layout and dtype; otherwise into a new array that is then cast
        and/or copied.
        """
        if out is None and self.identity and result == dtype:  # the common case, fast
            y = np.empty(self.shape, dtype)
            return (y if self.kshape == self.shape else y.reshape(self.kshape)), lambda: y
        if out is not None and out.dtype == dtype:
            t = out if self.identity else out.transpose(self.perm)
            if t.flags.c_contiguous:
                return t.reshape(self.kshape), lambda: out
        moved = self.kshape if self.identity else tuple(self.shape[i] for i in self.perm)
        buf = np.empty(moved, dtype)

        def finish():
            y = buf.reshape(self.shape) if self.identity else buf.transpose(self.inverse)
            if out is not None:
                np.copyto(out, y, casting="unsafe")
                return out
            return y if result == dtype else y.astype(result)

        return buf.reshape(self.kshape), finish


def read_only(a, kshape):
    """A read-only view of the C-contiguous ``a`` in shape ``kshape``: no
    compiled kernel writes to its inputs, and one specialization serves
    writeable and read-only inputs alike."""
    k = a.reshape(kshape)
    k.setflags(write=False)  # cheaper than through ``k.flags``
    return k


def _view(shape, perm, kshape):
    inverse = tuple(int(i) for i in np.argsort(perm))
    return View(shape, perm, kshape, inverse, perm == tuple(range(len(shape))))


@functools.lru_cache(maxsize=512)
def row_view(shape, axes):
    """Row view: the axes not in ``axes`` become rows, ``axes`` the row.

    Returns the view, the shape of per-row statistics (``shape`` without
    ``axes``) and the shape of one row (``shape`` over ``axes``).
    """
    keep = tuple(i for i in range(len(shape)) if i not in axes)
    stat_shape = tuple(shape[i] for i in keep)
    length = math.prod(shape[i] for i in axes)
    row_shape = tuple(shape[i] for i in axes)
    view = _view(shape, keep + tuple(axes), (math.prod(stat_shape), length))
    return view, stat_shape, row_shape


@functools.lru_cache(maxsize=512)
def channel_view(shape, axis, batched):
    """Channel view ``(N, P, C, Q)`` of an array with channel axis ``axis``.

    ``batched``: axis 0 is a batch axis kept apart (group/instance norm);
    otherwise ``N = 1`` and every axis but ``axis`` is reduced (batch norm).
    """
    ndim = len(shape)
    if batched:
        n = shape[0]
        p = math.prod(shape[1:axis])
    else:
        n = 1
        p = math.prod(shape[:axis])
    kshape = (n, p, shape[axis], math.prod(shape[axis + 1 :]))
    return _view(shape, tuple(range(ndim)), kshape)


def require_nonempty_reduction(count, what, *args):
    """Reductions over no elements are an error, not a silent NaN.

    ``what.format(*args)`` describes the reduction in the message; it is
    formatted only on error (this check runs on every call).
    """
    if count == 0:
        raise ValueError(
            f"cannot normalize over an empty set of elements ({what.format(*args)})"
        )


# -------------------------------------------------------------- runners ---
# A public function checks what its arguments' shapes, dtypes, layouts and
# settings decide and has the engine work out the steps they lead to
# (``engine.*_steps``), once per signature. For host calls on C-contiguous
# arrays it keeps those steps in a runner under the call's key
# (:func:`runner_key`, the one place keys are made), and a repeated call
# with the same key runs it without the checks the key already covers.
# What a key cannot cover is checked on every call: ``eps`` and the saved
# statistics a backward pass gets.

#: The runners, by key; at most :data:`RUNNERS_MAX` (the oldest dropped first).
RUNNERS_MAX = 256
runners = {}
_runners_lock = threading.Lock()
_KEY_SETTING_TYPES = (int, bool, str, type(None))


def runner_key(kind, settings, *arrays):
    """The key of a host call's runner: its ``kind`` (a string), its
    ``settings`` (a tuple of ints, bools, strings or None) and, for each of
    ``arrays`` (NumPy arrays or None), its shape, dtype and strides; None
    when the call gets no runner (an argument of another type).

    Every argument that decides the steps must be in the key. Each setting
    goes in with its type: ``1``, ``1.0`` and ``True`` are equal dict keys.
    Strides rather than the C-contiguity flag: an array with the same shape,
    dtype and strides as a C-contiguous one is C-contiguous too.
    """
    key = [kind, *settings]
    for value in settings:
        kind_of = type(value)
        if kind_of not in _KEY_SETTING_TYPES:
            return None
        key.append(kind_of)
    for a in arrays:
        if type(a) is np.ndarray:
            key.append(a.shape)
            key.append(a.dtype)
            key.append(a.strides)
        elif a is None:
            key.append(None)
        else:
            return None
    return tuple(key)


def gets_runner(key, x, view, dtype, result):
    """Whether a host call with ``key`` gets a runner that reshapes ``x``
    (C-contiguous, of the kernels' ``dtype``, its ``view`` a reshape) and
    gives a new output of the ``result`` dtype."""
    return (
        key is not None and view.identity
        and x.dtype == dtype == result and x.flags.c_contiguous
    )


@memory.on_release
def _clear_runners():
    with _runners_lock:
        runners.clear()


def keep_runner(key, run):
    """Keep ``run`` for ``key``; returns ``run``."""
    with _runners_lock:  # another thread's insertion would break the iteration
        if len(runners) >= RUNNERS_MAX:
            del runners[next(iter(runners))]
        runners[key] = run
    return run


def forward(key, engine, view, dtype, result, steps, saved, x, params, out):
    """The end of a checked forward call: ``steps(xk, yk, *params)``
    (``engine.*_steps``) on the kernel views of ``x`` and of the output, and
    ``saved`` of what it returns for the caller. For a host call that
    :func:`gets_runner` allows, a runner ``run(x, *params)`` kept under ``key``
    does it, this call first: ``x`` reshaped, a new output, the steps of
    ``to_kernel`` and ``output`` that apply."""
    if gets_runner(key, x, view, dtype, result):
        kshape = view.kshape
        new_output = functools.partial(np.empty, view.shape, dtype)

        def run(x, *params):
            y = new_output()
            return y, saved(steps(read_only(x, kshape), y.reshape(kshape), *params))

        return keep_runner(key, run)(x, *params)
    xk = engine.to_kernel(view, x, dtype)
    yk, finish = engine.output(view, dtype, result, out)
    stats = saved(steps(xk, yk, *params))
    return finish(), stats


def backward(key, engine, view, dtype, result, steps, statistics, grads, dy, x, saved, params):
    """The end of a checked backward call: ``statistics(saved)`` checks the
    saved statistics (on every call) and gives them as the steps take them,
    ``steps(dyk, xk, dxk, stats, *params)`` runs on the kernel views, and
    ``grads`` of what it returns gives the caller's gradients after ``dx``.
    For a host call that :func:`gets_runner` allows (``dy`` C-contiguous too), a
    runner ``run(dy, x, saved, *params)`` kept under ``key`` does it, this
    call first."""
    if gets_runner(key, x, view, dtype, result) and dy.flags.c_contiguous:
        kshape = view.kshape
        new_output = functools.partial(np.empty, view.shape, dtype)

        def run(dy, x, saved, *params):
            stats = statistics(saved)
            dx = new_output()
            dyk, xk = read_only(dy, kshape), read_only(x, kshape)
            sums = steps(dyk, xk, dx.reshape(kshape), stats, *params)
            return (dx, *grads(sums))

        return keep_runner(key, run)(dy, x, saved, *params)
    stats = statistics(saved)
    dxk, finish = engine.output(view, dtype, result, None)
    dyk, xk = engine.to_kernel(view, dy, dtype), engine.to_kernel(view, x, dtype)
    sums = steps(dyk, xk, dxk, stats, *params)
    return (finish(), *grads(sums))


def grads_maker(engine, weight, has_bias, result, shape):
    """:func:`param_grads` for a weight (a validated array, or None) like
    ``weight``: ``grads((dweight, dbias))``, with the dtype worked out once."""
    dtype = param_grad_dtype(weight) if weight is not None else result
    has_weight = weight is not None

    def grads(sums):
        dweight, dbias = sums
        return (
            _param_grad(engine, dweight, dtype, shape) if has_weight else None,
            _param_grad(engine, dbias, dtype, shape) if has_bias else None,
        )

    return grads
