"""The README's install command in a fresh virtual environment that has `wheel` and the newest
setuptools: with pip < 25 and no pyproject.toml, pip took the legacy `setup.py develop` path,
and setuptools >= 80 then re-ran pip *with* build isolation, where torch is missing (the build
failed). pyproject.toml's [build-system] makes pip take the PEP 660 path. Needs PyPI (marked
`network`; ALTER_OFFLINE=1 skips it). ALTER_SKIP_EXTENSION=1 keeps it fast (no compile)."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = [pytest.mark.network, pytest.mark.heavy,
              pytest.mark.skipif(os.environ.get("ALTER_OFFLINE", "") not in ("", "0"), reason="ALTER_OFFLINE=1")]


def _run(cmd, cwd, env, timeout=600):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{out[-4000:]}"
    return out


def test_editable_install_in_a_fresh_venv_with_wheel_and_newest_setuptools(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md", "requirements-ci.txt"):
        if os.path.exists(os.path.join(ROOT, name)):
            shutil.copy2(os.path.join(ROOT, name), src / name)
    shutil.copytree(os.path.join(ROOT, "alter_kernels"), src / "alter_kernels",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_NO_BUILD_ISOLATION")}
    env.update(ALTER_SKIP_EXTENSION="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], tmp_path, env)
    py = str(venv / "bin" / "python")
    _run([py, "-m", "pip", "install", "-q", "--upgrade", "setuptools", "wheel"], tmp_path, env)
    # the README's command, as written
    _run([py, "-m", "pip", "install", "-q", "-r", "requirements-ci.txt"], src, env)
    out = _run([py, "-m", "pip", "install", "-e", ".", "--no-build-isolation", "--no-deps"], src, env)
    assert "setup.py develop" not in out, out[-3000:]            # the PEP 660 path, not the legacy one
    where = _run([py, "-c", "import alter_kernels, setuptools; print(alter_kernels.__file__); "
                            "print(setuptools.__version__)"], tmp_path, env).split()
    assert where[0] == str(src / "alter_kernels" / "__init__.py"), where
    assert int(where[1].split(".")[0]) >= 64
    _run([str(venv / "bin" / "alter-unlearn"), "--help"], tmp_path, env)
