"""Float64 NumPy references for every norm, forward and backward, from the math.

Deliberately naive and independent of numbanorm's code: two-pass statistics,
broadcasting, and the textbook gradient of ``y = xhat * w + b`` with
``xhat = (x - mean) * rstd`` over the reduced set of ``M`` elements:
``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``, ``g = dy * w``.
"""

import numpy as np


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def _param(p, shape):
    return None if p is None else _f64(p).reshape(shape)


def _affine(xhat, w, b):
    y = xhat if w is None else xhat * w
    return y if b is None else y + b


def _backward(dy, xhat, rstd, w, reduce, center=True):
    """dx of y = xhat*w (+b) where xhat is normalized over the axes ``reduce``."""
    g = dy if w is None else dy * w
    mg = g.mean(axis=reduce, keepdims=True) if center else 0.0
    mgx = (g * xhat).mean(axis=reduce, keepdims=True)
    return rstd * (g - mg - xhat * mgx)


# ------------------------------------------------------- layer and RMS ---


def _axes(axis, ndim):
    axes = axis if isinstance(axis, tuple) else (axis,)
    return tuple(sorted(a % ndim for a in axes))


def _pshape(x, axes):
    return tuple(x.shape[i] if i in axes else 1 for i in range(x.ndim))


def layer_norm(x, w=None, b=None, axis=-1, eps=1e-5):
    x = _f64(x)
    axes = _axes(axis, x.ndim)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    xhat = (x - mean) / np.sqrt(var + eps)
    return _affine(xhat, _param(w, _pshape(x, axes)), _param(b, _pshape(x, axes)))


def layer_norm_backward(dy, x, w=None, axis=-1, eps=1e-5):
    x, dy = _f64(x), _f64(dy)
    axes = _axes(axis, x.ndim)
    other = tuple(i for i in range(x.ndim) if i not in axes)
    mean = x.mean(axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    dx = _backward(dy, xhat, rstd, _param(w, _pshape(x, axes)), axes)
    return dx, (dy * xhat).sum(axis=other), dy.sum(axis=other)


def _machine_eps(x):
    """RMS norm's default eps: the machine epsilon of ``x``'s float dtype."""
    dtype = np.asarray(x).dtype
    return float(np.finfo(dtype if dtype.kind == "f" else np.float64).eps)


def rms_norm(x, w=None, axis=-1, eps=None):
    eps = _machine_eps(x) if eps is None else eps
    x = _f64(x)
    axes = _axes(axis, x.ndim)
    rstd = 1.0 / np.sqrt((x * x).mean(axis=axes, keepdims=True) + eps)
    return _affine(x * rstd, _param(w, _pshape(x, axes)), None)


def rms_norm_backward(dy, x, w=None, axis=-1, eps=None):
    eps = _machine_eps(x) if eps is None else eps
    x, dy = _f64(x), _f64(dy)
    axes = _axes(axis, x.ndim)
    other = tuple(i for i in range(x.ndim) if i not in axes)
    rstd = 1.0 / np.sqrt((x * x).mean(axis=axes, keepdims=True) + eps)
    xhat = x * rstd
    dx = _backward(dy, xhat, rstd, _param(w, _pshape(x, axes)), axes, center=False)
    return dx, (dy * xhat).sum(axis=other)


# ----------------------------------------------------------- batch norm ---


def _channel_shape(x, axis):
    return tuple(x.shape[i] if i == axis % x.ndim else 1 for i in range(x.ndim))


def batch_norm(x, w=None, b=None, axis=1, eps=1e-5):
    """Training mode: normalize with the batch's statistics."""
    x = _f64(x)
    axis %= x.ndim
    reduce = tuple(i for i in range(x.ndim) if i != axis)
    cs = _channel_shape(x, axis)
    mean = x.mean(axis=reduce, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=reduce, keepdims=True)
    xhat = (x - mean) / np.sqrt(var + eps)
    return _affine(xhat, _param(w, cs), _param(b, cs)), mean.ravel(), var.ravel()


def batch_norm_eval(x, running_mean, running_var, w=None, b=None, axis=1, eps=1e-5):
    x = _f64(x)
    cs = _channel_shape(x, axis)
    xhat = (x - _f64(running_mean).reshape(cs)) / np.sqrt(_f64(running_var).reshape(cs) + eps)
    return _affine(xhat, _param(w, cs), _param(b, cs))


def batch_norm_backward(dy, x, w=None, axis=1, eps=1e-5):
    x, dy = _f64(x), _f64(dy)
    axis %= x.ndim
    reduce = tuple(i for i in range(x.ndim) if i != axis)
    mean = x.mean(axis=reduce, keepdims=True)
    rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=reduce, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    dx = _backward(dy, xhat, rstd, _param(w, _channel_shape(x, axis)), reduce)
    return dx, (dy * xhat).sum(axis=reduce), dy.sum(axis=reduce)


def batch_norm_eval_backward(dy, x, running_mean, running_var, w=None, axis=1, eps=1e-5):
    x, dy = _f64(x), _f64(dy)
    axis %= x.ndim
    reduce = tuple(i for i in range(x.ndim) if i != axis)
    cs = _channel_shape(x, axis)
    rstd = 1.0 / np.sqrt(_f64(running_var).reshape(cs) + eps)
    xhat = (x - _f64(running_mean).reshape(cs)) * rstd
    g = dy if w is None else dy * _f64(w).reshape(cs)
    return g * rstd, (dy * xhat).sum(axis=reduce), dy.sum(axis=reduce)


# ----------------------------------------------- group and instance norm ---


def _grouped(x, groups, axis):
    """x with channels on axis 1, viewed as (N, G, C/G, rest)."""
    xc = np.moveaxis(x, axis % x.ndim, 1)
    n, c = xc.shape[:2]
    return xc.reshape(n, groups, c // groups, -1), xc.shape


def group_norm(x, groups, w=None, b=None, axis=1, eps=1e-5):
    x = _f64(x)
    xg, cshape = _grouped(x, groups, axis)
    mean = xg.mean(axis=(2, 3), keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=(2, 3), keepdims=True)
    xhat = ((xg - mean) / np.sqrt(var + eps)).reshape(cshape)
    ps = (1, cshape[1]) + (1,) * (len(cshape) - 2)
    y = _affine(xhat, _param(w, ps), _param(b, ps))
    return np.moveaxis(y, 1, axis % x.ndim)


def group_norm_backward(dy, x, groups, w=None, axis=1, eps=1e-5):
    x, dy = _f64(x), _f64(dy)
    xg, cshape = _grouped(x, groups, axis)
    dyg, _ = _grouped(dy, groups, axis)
    mean = xg.mean(axis=(2, 3), keepdims=True)
    rstd = 1.0 / np.sqrt(((xg - mean) ** 2).mean(axis=(2, 3), keepdims=True) + eps)
    xhat = (xg - mean) * rstd
    wg = None if w is None else _f64(w).reshape(1, groups, -1, 1)
    dx = _backward(dyg, xhat, rstd, wg, (2, 3)).reshape(cshape)
    n, c = cshape[:2]
    dw = (dyg * xhat).reshape(n, c, -1).sum(axis=(0, 2))
    db = dyg.reshape(n, c, -1).sum(axis=(0, 2))
    return np.moveaxis(dx, 1, axis % x.ndim), dw, db


def instance_norm(x, w=None, b=None, axis=1, eps=1e-5):
    return group_norm(x, x.shape[axis], w, b, axis, eps)


def instance_norm_backward(dy, x, w=None, axis=1, eps=1e-5):
    return group_norm_backward(dy, x, x.shape[axis], w, axis, eps)


# ---------------------------------------------------------- weight norm ---


def weight_norm(v, g, axis=0):
    v = _f64(v)
    if axis is None:
        return _f64(g).reshape(()) * v / np.sqrt((v * v).sum())
    axis %= v.ndim
    other = tuple(i for i in range(v.ndim) if i != axis)
    norm = np.sqrt((v * v).sum(axis=other, keepdims=True))
    return _f64(g).reshape(norm.shape) * v / norm


def weight_norm_backward(dw, v, g, axis=0):
    v, dw = _f64(v), _f64(dw)
    other = tuple(i for i in range(v.ndim) if axis is None or i != axis % v.ndim)
    norm = np.sqrt((v * v).sum(axis=other, keepdims=True))
    gg = _f64(g).reshape(norm.shape)
    t = (dw * v).sum(axis=other, keepdims=True)
    dv = gg / norm * dw - gg * t / norm**3 * v
    return dv, (t / norm).reshape(np.shape(g))
