"""alter-eval's inputs: the ``--data`` files (:func:`resolve_data`) and the ``--reference`` file
(:func:`read_reference`); bad usage is a :class:`UsageError` (one line, exit status 2), a damaged
file a :class:`RunError` (one line, exit status 1)."""
from __future__ import annotations

import hashlib
import json
import os
import re

REFERENCE_FORMAT = "alter_kernels.tofu_reference"
SPLITS = ("forget", "retain", "real_authors", "world_facts")


class UsageError(Exception):
    """Bad command-line usage: an option or path of the wrong kind; one line, exit status 2."""


class RunError(Exception):
    """The run failed: a damaged input file (a data row, the reference, adapter files), a model
    that cannot be loaded, a failure while evaluating; one line, exit status 1."""



# ------------------------------------------------------------------------------------- data
_FORGET_RE = re.compile(r"^(forget\d+)(_perturbed)?\.jsonl?$")


def _pick(folder: str, names: list[str], what: str) -> str:
    for n in names:
        for ext in (".json", ".jsonl"):
            path = os.path.join(folder, n + ext)
            if os.path.isfile(path):
                return path
    raise UsageError(f"--data {folder}: no {what} file (looked for {', '.join(n + '.json' for n in names)})")


def resolve_data(data: list[str], forget_split: str | None = None) -> dict:
    """{"forget", "retain", "real_authors", "world_facts"} -> file path."""
    if len(data) == 1 and os.path.isdir(data[0]):
        folder = data[0]
        found = sorted({m.group(1) for f in os.listdir(folder) if (m := _FORGET_RE.match(f))})
        if forget_split is None:
            if not found:
                raise UsageError(f"--data {folder}: no forget file (forgetNN_perturbed.json or forgetNN.json)")
            if len(found) > 1:
                raise UsageError(f"--data {folder} holds several forget splits {found}; pick one with --forget-split")
            forget_split = found[0]
        forget = _pick(folder, [f"{forget_split}_perturbed", forget_split], f"{forget_split} forget")
        m = re.fullmatch(r"forget(\d+)", forget_split)
        retain_names = ["retain_perturbed"] + ([f"retain{100 - int(m.group(1)):02d}"] if m else [])
        return {"forget": forget, "retain": _pick(folder, retain_names, "retain"),
                "real_authors": _pick(folder, ["real_authors_perturbed", "real_authors"], "real authors"),
                "world_facts": _pick(folder, ["world_facts_perturbed", "world_facts"], "world facts")}
    for f in data:
        if not os.path.isfile(f):
            raise UsageError(f"--data: {f} is not a file" + (" (a folder must be given alone)" if os.path.isdir(f) else ""))
    if len(data) != 4:
        raise UsageError(f"--data takes one folder or four files (forget, retain, real authors, world facts), "
                         f"got {len(data)} files")
    keys = {"forget": r"forget", "retain": r"retain", "real_authors": r"real[_-]?author", "world_facts": r"world[_-]?fact"}
    by_name = {}
    for f in data:
        hits = [k for k, pat in keys.items() if re.search(pat, os.path.basename(f).lower())]
        if len(hits) == 1 and hits[0] not in by_name:
            by_name[hits[0]] = f
    if len(by_name) == 4:
        return by_name
    return dict(zip(SPLITS, data))


def rows_fingerprint(rows: list[dict]) -> str:
    """A short hash of the rows' questions: which forget set a reference's truth ratios belong to."""
    h = hashlib.sha256()
    for r in rows:
        h.update(r["question"].encode("utf-8") + b"\x00")
    return h.hexdigest()[:16]


def read_json_file(path: str, what: str):
    """json.load(path), or a RunError "<what> (<reason>)"."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{what} ({exc})") from None
    except RecursionError:
        raise RunError(f"{what} (nested too deeply)") from None



# ---------------------------------------------------------------------------------- reference
def read_reference(path: str, truth_ratio: str, fingerprint: str) -> tuple[list[float], dict]:
    ref = read_json_file(path, f"--reference {path}: cannot read it")
    if isinstance(ref, dict) and ref.get("format") == REFERENCE_FORMAT:
        ratios, mode, fp = ref.get("truth_ratios"), ref.get("truth_ratio"), ref.get("forget_fingerprint")
    elif isinstance(ref, dict) and isinstance(ref.get("forget"), dict) and "truth_ratios" in ref["forget"]:
        ratios, mode = ref["forget"]["truth_ratios"], ref.get("truth_ratio_definition")   # an alter-eval output
        fp = (ref.get("meta") or {}).get("forget_fingerprint")
    else:
        raise RunError(f"--reference {path}: neither a reference written by --save-reference nor an alter-eval output")
    from ..eval.metrics import check_truth_ratios
    try:
        ratios = check_truth_ratios(ratios, f"--reference {path}: 'truth_ratios'")
    except ValueError as exc:
        raise RunError(str(exc)) from None
    if mode is not None and mode != truth_ratio:
        raise UsageError(f"--reference {path} holds {mode} truth ratios but --truth-ratio is {truth_ratio}")
    if fp is not None and fp != fingerprint:
        raise UsageError(f"--reference {path} was computed on other forget questions than --data's "
                         f"(fingerprint {fp} vs {fingerprint}); check --data / --task-id")
    return ratios, ref


def reference_generations(ref: dict, retain_fingerprint: str, n: dict, max_new_tokens: int) -> tuple[dict, list]:
    """The retain model's greedy answers {"forget": [...], "retain": [...]} held by a reference file
    (``generations`` of a --save-reference file, or ``forget`` / ``retain`` ``generations`` of an
    alter-eval output), keeping a split only when it answers the same questions (row count, the retain
    fingerprint when recorded) with the same max_new_tokens; and one note per split left out."""
    if ref.get("format") == REFERENCE_FORMAT:
        gens, fp, mnt = ref.get("generations") or {}, ref.get("retain_fingerprint"), ref.get("max_new_tokens")
    else:
        gens = {s: (ref.get(s) or {}).get("generations") for s in ("forget", "retain")}
        fp, mnt = (ref.get("meta") or {}).get("retain_fingerprint"), ref.get("max_new_tokens")
    out, notes = {}, []
    for s in ("forget", "retain"):
        g = gens.get(s) if isinstance(gens, dict) else None
        why = ("it holds no generations" if not isinstance(g, list) or not all(isinstance(t, str) for t in g) else
               f"{len(g)} generations for {n[s]} questions" if len(g) != n[s] else
               "other retain questions (fingerprint)" if s == "retain" and fp is not None and fp != retain_fingerprint
               else f"generated with max_new_tokens {mnt}, not {max_new_tokens}" if mnt is not None
               and mnt != max_new_tokens else None)
        if why:
            notes.append(f"{s} answers: {why}")
        else:
            out[s] = g
    return out, notes
