"""CPU back end: Numba ``parallel=True`` kernels over canonical views.

:mod:`.engine` composes the kernels into norms (the interface that
:mod:`numbanorm._cuda.engine` mirrors), :mod:`.compile` decides how every
kernel is compiled and run, and :mod:`.memory` bounds what is kept between
calls. The kernels live in :mod:`.rows`, :mod:`.channels` (chunked),
:mod:`.samples` (per sample) and :mod:`.finish`; the channel kernels' loop
bodies in :mod:`.channel_loops`. The kernels know nothing of axes: they see
a row view ``(rows, length)`` or a channel view ``(N, P, C, Q)`` (see
:mod:`numbanorm._layout`). Every input array is C-contiguous; accumulation
is float64.
"""
