"""tools/extension_check.py, which lets scripts/test.sh skip the rebuild of a current extension:
each way an extension can be stale is caught, and a stamp written by write_stamp (what setup.py
calls after a build) makes a tree current."""
import importlib.util
import json
import os
import pathlib
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("extension_check", os.path.join(ROOT, "tools", "extension_check.py"))
ec = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ec)
WANT = {"torch": "9.9.9+cpu", "cuda": None}


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "csrc" / "cpu").mkdir(parents=True)
    (tmp_path / "csrc" / "cpu" / "op.cpp").write_text("// op")
    (tmp_path / "alter_kernels" / "kernels").mkdir(parents=True)
    (tmp_path / "alter_kernels" / "__init__.py").write_text("")
    os.utime(tmp_path / "csrc" / "cpu" / "op.cpp", (1000, 1000))
    return tmp_path


def _so(tree, mtime=2000):
    so = tree / "alter_kernels" / "kernels" / ("_C" + sysconfig.get_config_var("EXT_SUFFIX"))
    so.write_bytes(b"\0")
    os.utime(so, (mtime, mtime))
    return so


def test_no_extension_needs_a_build(tree):
    assert "does not exist" in ec.reasons(str(tree), WANT, try_import=False)[0]


def test_an_extension_without_a_stamp_is_an_unknown_build(tree):
    _so(tree)
    assert "_C.build.json is missing" in ec.reasons(str(tree), WANT, try_import=False)[0]


def test_a_stamp_of_another_torch_needs_a_build(tree):
    so = _so(tree)
    (so.parent / ec.STAMP_NAME).write_text(json.dumps({"torch": "2.0.0", "cuda": None}))
    assert ec.reasons(str(tree), WANT, try_import=False) == ["built for torch 2.0.0, installed torch is 9.9.9+cpu"]


def test_written_stamp_makes_it_current_until_a_source_changes(tree, monkeypatch):
    monkeypatch.setattr(ec, "stamp", lambda: dict(WANT))
    so = _so(tree)
    path = ec.write_stamp(str(so))
    assert os.path.basename(path) == ec.STAMP_NAME and json.load(open(path))["torch"] == WANT["torch"]
    assert ec.reasons(str(tree), WANT, try_import=False) == []
    os.utime(tree / "csrc" / "cpu" / "op.cpp", (3000, 3000))          # an edited source
    assert ec.reasons(str(tree), WANT, try_import=False) == [f"{os.path.join('csrc', 'cpu', 'op.cpp')} is newer "
                                                              "than the extension"]


def test_an_extension_that_does_not_import_needs_a_build(tree, monkeypatch):
    monkeypatch.setattr(ec, "stamp", lambda: dict(WANT))
    ec.write_stamp(str(_so(tree)))                  # one NUL byte: not a loadable library
    why = ec.reasons(str(tree), WANT)
    assert len(why) == 1 and why[0].startswith(f"import {ec.EXT_MODULE} failed")


def test_the_checked_module_is_the_one_setup_builds():
    setup_py = (pathlib.Path(__file__).resolve().parents[2] / "setup.py").read_text()
    assert f'EXT_NAME = "{ec.EXT_MODULE}"' in setup_py
