"""docs/DESIGN.md's per-folder import table, enforced: each folder of the package imports only the
folders its row's "may import" cell names (and itself). The table is read from DESIGN.md, so the
document is the one home of the rule; the coarse layers are tests/project/test_layering.py's."""
from __future__ import annotations

import pathlib
import re

from test_layering import ROOT, graph   # tests/project is on sys.path under pytest's rootdir-relative import

DESIGN = ROOT / "docs" / "DESIGN.md"
# bottom to top: what "X and below" covers
ORDER = ("common", "kernels", "ops", "model")


def _folder_module(cell_name: str) -> str:
    """`common/` -> alter_kernels.common, `config.py` -> alter_kernels.config, `__init__.py` -> alter_kernels."""
    name = cell_name.strip("`").rstrip("/")
    if name == "__init__.py":
        return "alter_kernels"
    return "alter_kernels." + name.removesuffix(".py")


def read_table(text: str | None = None) -> dict[str, set[str] | None]:
    """{folder module: the folder modules it may import (None: everything)} from DESIGN.md."""
    text = DESIGN.read_text() if text is None else text
    rows = [ln for ln in text.splitlines() if ln.startswith("| `")]
    groups: dict[str, list[str]] = {}          # the first folder of a row names the row ("common/" ...)
    cells = {}
    for ln in rows:
        folders_cell, _, may = [c.strip() for c in ln.strip("|").split("|")][:3]
        folders = [_folder_module(f) for f in re.findall(r"`([^`]+)`", folders_cell)]
        key = folders[0].rsplit(".", 1)[-1]
        groups[key] = folders
        cells[tuple(folders)] = re.sub(r"\s*\([^)]*\)", "", may)     # notes in parentheses are notes
    table: dict[str, set[str] | None] = {}
    for folders, may in cells.items():
        if may == "everything":
            allowed = None
        else:
            allowed = set(folders)
            for part in ([] if may.startswith("nothing") else [p.strip() for p in may.split(",")]):
                word, below = (part[:-len(" and below")], True) if part.endswith(" and below") else (part, False)
                names = ORDER[:ORDER.index(word) + 1] if below else (word,)
                for n in names:
                    allowed.update(groups[n])
        for f in folders:
            table[f] = allowed
    return table


def folder_of(mod: str, table) -> str | None:
    best = None
    for f in table:                     # the package root ("__init__.py") is that one module, not a prefix
        if (mod == f or (f != "alter_kernels" and mod.startswith(f + "."))) and (best is None or len(f) > len(best)):
            best = f
    return best


def violations(table=None) -> list[str]:
    table = read_table() if table is None else table
    bad = []
    for mod, deps in graph().items():
        src = folder_of(mod, table)
        assert src is not None, f"{mod} is in no folder of docs/DESIGN.md's import table"
        allowed = table[src]
        if allowed is None:
            continue
        for dep, line in deps.items():
            if dep == "alter_kernels._C":           # the compiled extension, read by its loader only
                dep_folder = "alter_kernels.kernels" if src == "alter_kernels.kernels" else "alter_kernels._C"
            else:
                dep_folder = folder_of(dep, table)
            if dep_folder not in allowed:
                bad.append(f"{mod}:{line} imports {dep}; docs/DESIGN.md lets {src} import only "
                           f"{sorted(a.removeprefix('alter_kernels.') for a in allowed)}")
    return bad


def test_every_folder_imports_only_what_design_md_allows():
    bad = violations()
    assert not bad, "\n".join(bad)


def test_the_table_is_read_and_can_fail():
    table = read_table()
    assert table["alter_kernels.synthetic"] is not None and table["alter_kernels.cli"] is None
    assert "alter_kernels.model" not in table["alter_kernels.ops"]
    strict = dict(table)
    strict["alter_kernels.unlearn"] = {"alter_kernels.unlearn", "alter_kernels.common"}   # no model/
    assert any(v.startswith("alter_kernels.unlearn") for v in violations(strict))
