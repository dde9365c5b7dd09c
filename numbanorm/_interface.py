"""The engine interface: what the public functions ask of a back end.

:mod:`numbanorm._cpu.engine` and :mod:`numbanorm._cuda.engine` each implement
every function below with these parameters (``tests/test_engines.py`` checks
it); :func:`numbanorm._layout.engine_for` picks one by array type. An engine
sees only canonical kernel views (see :mod:`numbanorm._layout`) and float64
statistics.

Array steps
    ``to_kernel(view, a, dtype)``, ``output(view, dtype, result, out)``,
    ``stats(a)``, ``float64_copy(a)``, ``cast(a, dtype)``, ``zeros(n)``.
Statistics
    ``rstd_of(var, eps)``; ``running_update(running_mean, running_var, mean,
    var, momentum, unbiased)`` in place; ``instance_batch_stats(mean, rstd,
    eps)``, per-channel averages of instance statistics.
Channel norms on an ``(N, P, C, Q)`` view with groups of channels
    ``group_moments(xk, groups)``, ``group_apply(xk, mean, rstd, weight,
    bias, yk)``, ``group_backward(dyk, xk, mean, rstd, weight, batch_stats,
    param_grads, dxk)``.
Steps, worked out once per signature
    ``row_forward_steps(kshape, dtype, center)``,
    ``row_forward_residual_steps(kshape, dtype, center)``,
    ``row_backward_steps(kshape, dtype, center, param_grads, weight_dtype)``
    (its steps take an optional ``dhk`` after the weight),
    ``sample_forward_steps(kshape, groups)``,
    ``sample_backward_steps(kshape, groups, param_grads)``,
    ``weight_norm_forward_steps(kshape)``, ``weight_norm_backward_steps(kshape)``:
    each returns ``steps(xk, yk, *params)`` (forward) or ``steps(dyk, xk,
    dxk, stats, *params)`` (backward) for :func:`numbanorm._layout.forward`
    and :func:`numbanorm._layout.backward`.
"""

#: Each engine function's name and parameters.
ENGINE_INTERFACE = {
    "to_kernel": ("view", "a", "dtype"),
    "output": ("view", "dtype", "result", "out"),
    "stats": ("a",),
    "float64_copy": ("a",),
    "cast": ("a", "dtype"),
    "zeros": ("n",),
    "rstd_of": ("var", "eps"),
    "running_update": ("running_mean", "running_var", "mean", "var", "momentum", "unbiased"),
    "instance_batch_stats": ("mean", "rstd", "eps"),
    "group_moments": ("xk", "groups"),
    "group_apply": ("xk", "mean", "rstd", "weight", "bias", "yk"),
    "group_backward": (
        "dyk", "xk", "mean", "rstd", "weight", "batch_stats", "param_grads", "dxk",
    ),
    "row_forward_steps": ("kshape", "dtype", "center"),
    "row_forward_residual_steps": ("kshape", "dtype", "center"),
    "row_backward_steps": ("kshape", "dtype", "center", "param_grads", "weight_dtype"),
    "sample_forward_steps": ("kshape", "groups"),
    "sample_backward_steps": ("kshape", "groups", "param_grads"),
    "weight_norm_forward_steps": ("kshape",),
    "weight_norm_backward_steps": ("kshape",),
}
