"""CPU back end: Numba ``parallel=True`` kernels over canonical views.

:mod:`.engine` composes the kernels into norms (the interface
:mod:`numbanorm._cuda.engine` mirrors), :mod:`.compile` decides how every
kernel is compiled and run, :mod:`.memory` makes outputs and work arrays, and
the kernels live in :mod:`.rows`, :mod:`.channels` and :mod:`.finish`. The
kernels know nothing of axes: they see a row view ``(rows, length)`` or a
channel view ``(N, P, C, Q)`` (see :mod:`numbanorm._layout`). Every input
array is C-contiguous; accumulation is float64.
"""
