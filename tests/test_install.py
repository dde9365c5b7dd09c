"""numbanorm as installed: a read-only install, the warm-up command, the sdist."""

import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _read_only_tree(path):
    for d, dirs, files in os.walk(path):
        for f in files:
            os.chmod(os.path.join(d, f), 0o444)
        os.chmod(d, 0o555)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX permissions")
def test_a_read_only_install_imports_and_computes_with_one_warning(tmp_path):
    # A system or container install: the package folder is read-only and the
    # user has no writable home, so Numba has nowhere to keep its cache.
    site = tmp_path / "site"
    shutil.copytree(ROOT / "numbanorm", site / "numbanorm",
                    ignore=shutil.ignore_patterns("__pycache__"))
    home = tmp_path / "home"
    home.mkdir()
    _read_only_tree(site)
    _read_only_tree(home)
    os.chmod(tmp_path, 0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "PYTHONPATH")}
    env.update(HOME=str(home), PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1")
    code = textwrap.dedent("""
        import warnings
        import numpy as np
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import numbanorm as nn
            assert nn.__file__.startswith(%r), nn.__file__
            x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4)
            y, saved = nn.layer_norm(x)
            dx = nn.layer_norm_backward(np.ones_like(x), x, saved)[0]
            yb, sb = nn.batch_norm(x)
        assert np.allclose(y.mean(-1), 0, atol=1e-6) and np.isfinite(dx).all()
        assert np.allclose(yb.mean((0, 2)), 0, atol=1e-6)
        messages = [str(w.message) for w in caught]
        assert len(messages) == 1, messages
        assert "NUMBA_CACHE_DIR" in messages[0], messages
        print("ok")
    """ % str(site))
    command = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        # Permissions do not bind root: mount both folders read-only in a
        # mount namespace of the child's own.
        if shutil.which("unshare") is None:
            pytest.skip("running as root without unshare(1): cannot make a folder read-only")
        remount = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1"'
        command = [
            "unshare", "-m", "sh", "-c",
            f'{remount} && shift && {remount} && shift && exec "$@"',
            "sh", str(site), str(home), *command,
        ]
    done = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_import_leaves_numba_to_the_first_call():
    """``import numbanorm`` imports neither back end, so neither Numba (a
    third of a second); the first call imports the CPU one."""
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import numbanorm as nn
        assert not [m for m in sys.modules if m.split(".")[0] == "numba"], "numba imported"
        assert "numbanorm._cpu.engine" not in sys.modules
        layer = nn.LayerNorm(4)  # building a layer needs no kernel either
        assert "numba" not in sys.modules
        nn.layer_norm(np.ones((2, 4), np.float32))
        assert "numba" in sys.modules and "numbanorm._cpu.engine" in sys.modules
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_warmup_runs_every_first_call_and_reports_them(capsys):
    from numbanorm.warmup import main, warm_and_report

    main(["--dtype", "float32", "--quiet", "--by-function"])
    out = capsys.readouterr().out
    assert "first calls:" in out
    assert "compiling, by function" in out
    # numbanorm is imported before main runs: only --cold, which imports it
    # in a fresh process, has an import time to report.
    assert "import numbanorm" not in out
    warm_and_report(["float32"], False, import_s=0.25)
    out = capsys.readouterr().out
    assert "import numbanorm: 0.25 s" in out and "first calls:" in out
    assert "compiling, by function" not in out


def test_compile_times_count_each_functions_own_seconds():
    """``--by-function``'s listener: a function's nested compiles count for
    the helper, not again for its caller, and nothing outside ``with``."""
    from numba import njit

    from numbanorm.warmup import CompileTimes

    def helper_to_time(a):
        return a * 2

    inner = njit(helper_to_time)

    def caller_to_time(a):
        return inner(a) + 1

    outer = njit(caller_to_time)
    start = time.perf_counter()
    with CompileTimes() as times:
        outer(3)
    elapsed = time.perf_counter() - start
    names = {name.rsplit(".", 1)[-1] for name in times.seconds}
    assert {"helper_to_time", "caller_to_time"} <= names
    assert all(s > 0 for s in times.seconds.values())
    assert sum(times.seconds.values()) <= elapsed  # the helper's seconds counted once
    with CompileTimes() as later:
        pass
    outer(4.0)  # compiles after the block: not counted
    assert not later.seconds


def test_the_sdist_carries_what_its_tests_need(tmp_path):
    # Its tests import conftest.py, helpers.py and reference.py.
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from setuptools import build_meta; "
         "print(build_meta.build_sdist(sys.argv[1]))", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "deprecated" not in done.stderr.lower(), done.stderr
    name = done.stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / name) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("LICENSE", "numbanorm/py.typed", "tests/conftest.py", "tests/helpers.py",
                   "tests/reference.py", "tests/test_contract.py", "examples/conv_norms.py"):
        assert needed in names, needed


def _array_to_slice_assignments(path):
    """``a[..., i:j, ...] = <not a constant>`` statements in a module."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Assign) or isinstance(node.value, ast.Constant):
            continue
        for target in node.targets:
            if isinstance(target, ast.Subscript) and any(
                isinstance(part, ast.Slice) for part in ast.walk(target.slice)
            ):
                found.append(f"{path.name}:{node.lineno}")
    return found


def test_cpu_kernels_copy_arrays_into_slices_with_a_loop():
    """Numba compiles a slice assignment from an array with a formatted
    shape-mismatch message: seconds of string-formatting code on every cold
    start. Kernels use ``copy_into`` instead."""
    cpu = Path(__file__).resolve().parents[1] / "numbanorm" / "_cpu"
    found = [hit for path in sorted(cpu.glob("*.py")) for hit in _array_to_slice_assignments(path)]
    assert found == []
