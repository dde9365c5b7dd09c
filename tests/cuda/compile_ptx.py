"""Compile every CUDA kernel to PTX for an H100 (sm_90), without a GPU.

The CUDA simulator runs kernels as Python and checks no types, so a kernel
that would not compile on a real GPU can pass the simulator tests. This script
type-checks and compiles each kernel with numba-cuda's real compiler (NVVM,
installed from pip by the ``ptx`` extra) for every argument type the engine
launches it with. ``make test`` runs it in its own virtual environment
(``.venv-ptx``): numba-cuda replaces ``numba.cuda``, and the main suite keeps
the simulator that ships with numba.

Exit status 1 if a kernel fails to compile or has no signature listed here.
"""

import sys
import types

import numba.cuda.dispatcher as cuda_dispatcher
from numba import cuda
from numba.core import types as T

from numbanorm._cuda import channels, finish, rows, target

# Device functions ask the current device for its compute capability while a
# kernel that calls them compiles; with no GPU, answer for an H100.
cuda_dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=(9, 0))

CC = (9, 0)


def arr(dtype, ndim, layout="C"):
    return T.Array(dtype, ndim, layout)


def signatures():
    """(kernel, argument types) for every launch the CUDA engine makes."""
    f16, f32, f64, i64, b = T.float16, T.float32, T.float64, T.int64, T.boolean
    D1, D2, D3 = arr(f64, 1), arr(f64, 2), arr(f64, 3)
    sigs = []
    for dt in (f32, f64):  # kernel dtypes: float16 is computed in float32
        A1, A2, A4 = arr(dt, 1), arr(dt, 2), arr(dt, 4)
        sigs += [
            (rows._row_forward, (A2, A1, A1, f64, b, A2, D1, D1)),
            (rows._row_forward_residual, (A2, A2, A1, A1, f64, b, A2, A2, D1, D1)),
            (rows._row_backward_dx, (A2, A2, D1, D1, A1, b, A2, A2)),
            (rows._row_param_partials, (A2, A2, D1, D1, i64, D2, D2)),
            (rows._row_scale_forward, (A2, D1, A2, D1)),
            (rows._row_scale_backward, (A2, A2, D1, D1, A2, D1)),
            (channels._sums_runs, (A4, A4, D2, b, i64, D3, D3)),
            (channels._sums_rows, (A4, A4, D2, b, i64, D3, D3)),
            (channels._channel_affine, (A4, D2, D2, D1, D1, A4)),
            (channels._channel_backward_apply, (A4, A4, D2, D2, D1, D2, D2, A4)),
            (finish._group_shift, (A4, D2)),
        ]
    # Strided copies: input (any real dtype) to kernel dtype, results back to
    # float16 and to out= of the result dtype, parameters to float64.
    copy_pairs = [(src, dst) for src in (f16, f32, f64, T.int64, T.int32, T.uint8, T.boolean)
                  for dst in (f32, f64)]
    copy_pairs += [(f32, f16), (f64, f16), (f16, f16)]
    sigs += [(finish._copy6, (arr(s, 6, "A"), arr(d, 6, "A"))) for s, d in copy_pairs]
    for dt in (f16, f32, f64):  # running statistics keep their own float dtype
        sigs.append((finish._running_update, (arr(dt, 1), arr(dt, 1), D1, D1, f64, f64)))
    for dt in (f32, f64):
        sigs.append((finish._fill, (arr(dt, 1), f64)))
    sigs += [
        (finish._sum_blocks, (D2, D1)),
        (finish._finish_moments, (D3, D3, D2, i64, i64, D2, D2)),
        (finish._rstd_of, (D1, f64, D1)),
        (finish._instance_batch_stats, (D2, D2, f64, D1, D1)),
        (finish._channel_totals, (D3, D3, D2, D2)),
        (finish._backward_coefficients, (D2, D2, D1, D2, i64, D2, D2)),
        (finish._param_totals, (D2, D2, D2, D1, D1)),
    ]
    return sigs


def kernels():
    """Every kernel defined in the CUDA back end's kernel modules."""
    found = set()
    for module in (rows, channels, finish):
        for value in vars(module).values():
            if hasattr(value, "py_func") and not value.targetoptions.get("device", False):
                found.add(value)
    return found


def main():
    if target.SIMULATOR:
        print("unset NUMBA_ENABLE_CUDASIM: the simulator does not compile")
        return 1
    failures = 0
    sigs = signatures()
    for kernel, args in sigs:
        try:
            cuda.compile_ptx(kernel.py_func, args, cc=CC)
        except Exception as exc:  # report every failure, not only the first
            failures += 1
            print(f"FAILED {kernel.py_func.__name__}{args}:\n{exc}\n")
    unlisted = kernels() - {k for k, _ in sigs}
    for kernel in unlisted:
        failures += 1
        print(f"NOT CHECKED {kernel.py_func.__name__}: add its signatures to compile_ptx.py")
    print(f"compiled {len(sigs) - failures} of {len(sigs)} kernel signatures to PTX for sm_"
          f"{CC[0]}{CC[1]} with {cuda.__name__} ({'no' if not unlisted else len(unlisted)} "
          "kernels unlisted)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
