"""One home per rule (issue 25): the routing defaults and the Shannon tolerance are written once,
in alter_kernels/common/constants.py, and read everywhere else, by Python, Triton, C++ and CUDA
alike (the C++/CUDA kernels get the tolerance as the compile definition ALTER_SHANNON_TOL, see
csrc/include/alter_constants.h). This test greps the source tree for the literals."""
from __future__ import annotations

import pathlib
import re

from alter_kernels.common import constants

ROOT = pathlib.Path(__file__).resolve().parents[2]
HOME = "alter_kernels/common/constants.py"
# the source tree: the package (Python and Triton), csrc/ (C++ and CUDA), the build and tools
SOURCES = ("alter_kernels/**/*.py", "csrc/**/*.cpp", "csrc/**/*.cu", "csrc/**/*.h", "csrc/**/*.cuh",
           "tools/*.py", "setup.py", "CMakeLists.txt")


def _num(value) -> str:
    """A regex for a numeric literal of ``value`` in Python or C (1.2, 1.20, 1.2f, 1e-6, 1e-06, 1E-6f)."""
    mant, exp = f"{value:e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    intpart, _, frac = mant.partition(".")
    e = int(exp)
    frac_re = r"\." + frac + "0*" if frac else r"(\.0*)?"
    sign_re = "-" if e < 0 else r"\+?"
    sci = rf"{intpart}{frac_re}[eE]{sign_re}0*{abs(e)}"
    plain = f"{value:.12f}".rstrip("0")
    whole, _, dec = plain.partition(".")
    plain_re = rf"{whole}\.{dec}0*" if dec else rf"{whole}(\.0*)?"
    return rf"(?<![\w.])(?:{sci}|{plain_re})[fF]?(?!\w|\.\d)"


# (rule, a regex for a line that restates it)
RULES = {
    "threshold default": rf"threshold\W.*{_num(constants.THRESHOLD)}",
    "tau_high default": rf"tau[_-]high\W.*{_num(constants.TAU_HIGH)}",
    "tau_low default": rf"tau[_-]low\W.*{_num(constants.TAU_LOW)}",
    "top_k default": rf"top[_-]k\W.*{_num(constants.TOP_K)}",
    # the tolerance next to q or Shannon (elsewhere 1e-6 may be an unrelated rounding note)
    "Shannon tolerance": rf"(?i)(?=.*(shannon|\bq\b)).*{_num(constants.SHANNON_TOL)}",
}


def copies(root: pathlib.Path = ROOT) -> dict[str, list[str]]:
    """Every line outside the home that restates a rule, by file."""
    out: dict[str, list[str]] = {}
    files = sorted({p for pattern in SOURCES for p in root.glob(pattern) if p.is_file()})
    for path in files:
        rel = path.relative_to(root).as_posix()
        if rel == HOME:
            continue
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for rule, rx in RULES.items():
                if re.search(rx, line):
                    out.setdefault(rel, []).append(f"{rel}:{i} ({rule}): {line.strip()}")
    return out


def test_each_rule_is_written_once():
    found = copies()
    bad = [line for rel, lines in found.items() for line in lines]
    assert not bad, f"restated outside {HOME}; read the constant instead:\n" + "\n".join(bad)


def test_the_home_holds_each_rule_and_the_grep_can_fail(tmp_path):
    home = (ROOT / HOME).read_text()      # the home names the constants (THRESHOLD, not threshold)
    for name in ("THRESHOLD", "TAU_HIGH", "TAU_LOW", "TOP_K", "SHANNON_TOL"):
        assert re.search(rf"^{name} = {_num(getattr(constants, name))}", home, re.M), name
    planted = {
        "alter_kernels/ops/x.py": "def route(h, threshold: float = 1.2, tau_low=1e-2, top_k: int = 3):\n",
        "alter_kernels/kernels/triton/y.py": "    return SHANNON if abs(q - 1.0) < 1e-6 else GENERAL\n",
        "csrc/cuda/z.cu": "  if (std::fabs(q - 1.0) < 1e-06f) return kShannon;\n",
        "csrc/cpu/w.cpp": "// error ~1e-6 relative in Z: not the rule\nconst float tau_high = 0.80;\n",
    }
    for rel, text in planted.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    found = copies(tmp_path)
    rules = {rel: sorted(line.split("(")[1].split(")")[0] for line in lines) for rel, lines in found.items()}
    assert rules == {
        "alter_kernels/ops/x.py": ["tau_low default", "threshold default", "top_k default"],
        "alter_kernels/kernels/triton/y.py": ["Shannon tolerance"],
        "csrc/cuda/z.cu": ["Shannon tolerance"],
        "csrc/cpu/w.cpp": ["tau_high default"],
    }, rules
