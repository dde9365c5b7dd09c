"""Device-array counterparts of the host-side layout steps.

:class:`numbanorm._layout.View` maps ``x`` to a kernel array with NumPy; these
functions do the same for device arrays, on the device: a contiguous input of
the kernel's dtype is used in place, anything else (strided, transposed,
float16, integer) is copied once by a strided-copy kernel. Nothing goes
through the host.
"""

import numpy as np

from . import finish
from .target import c_contiguous, empty, strided, transpose


def _merged_axes(shape, *strides):
    """Shape and strides with size-1 axes dropped and adjacent axes merged
    where every array's memory allows it (fewer axes, same elements)."""
    axes = [i for i, n in enumerate(shape) if n != 1]
    out_shape = []
    out_strides = [[] for _ in strides]
    for i in axes:
        if out_shape and all(
            st[-1] == s[i] * shape[i] for st, s in zip(out_strides, strides)
        ):
            out_shape[-1] *= shape[i]
            for st, s in zip(out_strides, strides):
                st[-1] = s[i]
        else:
            out_shape.append(shape[i])
            for st, s in zip(out_strides, strides):
                st.append(s[i])
    return out_shape, out_strides


def copy_cast(src, dst):
    """``dst[...] = src`` for device arrays of one shape (any strides), cast to
    ``dst``'s dtype, by one kernel."""
    if 0 in tuple(dst.shape):
        return dst
    shape, (s_src, s_dst) = _merged_axes(tuple(dst.shape), tuple(src.strides), tuple(dst.strides))
    if len(shape) > finish.COPY_NDIM:
        raise ValueError(
            f"device arrays whose memory layout needs more than {finish.COPY_NDIM} "
            f"strided axes are not supported (shape {tuple(dst.shape)}); "
            "make the array contiguous first"
        )
    pad = finish.COPY_NDIM - len(shape)
    shape = [1] * pad + shape
    finish.copy6(
        strided(src, shape, [0] * pad + s_src), strided(dst, shape, [0] * pad + s_dst)
    )
    return dst


def cast(a, dtype):
    """A new C-contiguous device array: ``a`` converted to ``dtype``."""
    return copy_cast(a, empty(a.shape, dtype))


def contiguous(a, dtype):
    """``a`` itself when it is C-contiguous of ``dtype``, else a converted copy."""
    if a.dtype == dtype and c_contiguous(a):
        return a
    return cast(a, dtype)


def to_kernel(view, a, dtype):
    """``a`` (shaped like x) as a C-contiguous kernel array of ``dtype``
    (device counterpart of :meth:`numbanorm._layout.View.to_kernel`)."""
    if view.identity and a.dtype == dtype and c_contiguous(a):
        return a.reshape(view.kshape)
    return cast(transpose(a, view.perm), dtype).reshape(view.kshape)


def output(view, dtype, result, out):
    """A kernel-shaped device buffer and a function giving the result
    (device counterpart of :meth:`numbanorm._layout.View.output`)."""
    if out is not None and out.dtype == dtype:
        t = transpose(out, view.perm)
        if c_contiguous(t):
            return t.reshape(view.kshape), lambda: out
    moved = tuple(view.shape[i] for i in view.perm)
    buf = empty(moved, dtype)

    def finish_output():
        y = transpose(buf, view.inverse)
        if out is not None:
            return copy_cast(y, out)
        return y if result == dtype else cast(y, result)

    return buf.reshape(view.kshape), finish_output


def full(n, value, dtype=np.float64):
    """A new 1-d device array of ``n`` copies of ``value``."""
    a = empty((n,), dtype)
    finish.fill(a, value)
    return a


def param(p, n, value, dtype=np.float64):
    """A parameter as a contiguous 1-d device array of ``dtype`` (``value``
    repeated when ``p`` is None). ``p`` itself (reshaped) when it already is
    one: kernels only read parameters, and ``out`` may not overlap them."""
    if p is None:
        return full(n, value, dtype)
    return contiguous(p, dtype).reshape(n)
