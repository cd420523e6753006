"""bench/tofu_real.py end to end on a few TOFU rows (issue 22): finetune (full model and retain
model), unlearn, score; the runner's numbers equal alter-eval's on the same models and rows; a
second run reuses every cached cell. Skips with a reason when ``../shared/tofu`` (beside the
repository; ``ALTER_TOFU_DATA`` overrides) is absent.

The CI test runs on a tiny random Llama with a word-level tokenizer trained on the TOFU rows
(seconds); the packaged SmolLM2-135M-Instruct variant is marked ``heavy`` (minutes on 2 cores;
``scripts/test.sh --full`` runs it).
"""
from __future__ import annotations

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOFU = os.environ.get("ALTER_TOFU_DATA") or os.path.join(os.path.dirname(ROOT), "shared", "tofu")
sys.path.insert(0, os.path.join(ROOT, "bench"))

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not os.path.isdir(TOFU), reason=f"the TOFU files are not at {TOFU} (../shared/tofu)")]


def _rows(name, task_id=None):
    from alter_kernels.common.rows import load_rows
    return load_rows(os.path.join(TOFU, name), name, task_id=task_id)[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Llama + a word-level tokenizer covering the TOFU rows the smoke size reads."""
    from alter_kernels.unlearn.toy import toy_model, toy_tokenizer
    rows = _rows("forget01_perturbed.json", task_id="1,2")
    for name in ("retain_perturbed.json", "real_authors_perturbed.json",
                 "world_facts_perturbed.json"):
        rows += _rows(name)
    tok = toy_tokenizer(rows)
    d = tmp_path_factory.mktemp("tiny") / "model"
    toy_model(len(tok), hidden_size=32, layers=2).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def _run(model, work, methods="alter,graddiff"):
    import tofu_real
    return tofu_real.main(["--size", "smoke", "--model", model, "--work", str(work), "--results", str(work),
                           "--methods", methods, "--device", "cpu", "--quiet", "--checkpoint-every", "2"])


def test_smoke_pipeline_matches_alter_eval_and_resumes(tiny, tmp_path, capsys):
    work = tmp_path / "work"
    assert _run(tiny, work) == 0
    res = json.loads((work / "tofu_real_smoke.json").read_text())
    rows = {r["model"]: r for r in res["rows"]}
    assert list(rows) == ["finetuned", "retain", "alter", "graddiff"]
    for r in rows.values():
        assert 0.0 <= r["FQ"] <= 1.0 and 0.0 <= r["MU"] <= 1.0 and r["repetition"] is not None
    assert res["verdict"].startswith("incomplete")                       # 2 of 8 methods
    assert res["sets"]["test_forget"]["authors"] == [180] and res["sets"]["dev_forget"]["authors"] == [182]
    for name in ("full", "retain"):                                       # HF folders the CLIs take
        assert (work / "models" / name / "model" / "config.json").is_file()
        assert not (work / "models" / name / "checkpoint.pt").exists()
    # alter-eval on the same models and rows gives the runner's finetuned-model numbers
    sets = _smoke_rows(tmp_path)
    from alter_kernels.cli import eval as eval_cli
    out = tmp_path / "eval.json"
    assert eval_cli.main(["--model", str(work / "models" / "full" / "model"), "--data", *sets,
                          "--retain-model", str(work / "models" / "retain" / "model"), "--out", str(out),
                          "--max-new-tokens", "4", "--batch-size", "16", "--no-progress"]) == 0
    got = json.loads(out.read_text())
    cell = json.loads((work / "cells" / "test" / "finetuned.json").read_text())
    assert got["forget_quality"] == pytest.approx(cell["forget_quality"], rel=1e-6)
    assert got["model_utility"] == pytest.approx(cell["model_utility"], rel=1e-6)
    # a second run reuses every cell (nothing retrained or rescored)
    stamps = {p: p.stat().st_mtime_ns for p in (work / "cells").rglob("*.json")}
    assert _run(tiny, work) == 0
    assert {p: p.stat().st_mtime_ns for p in (work / "cells").rglob("*.json")} == stamps


def _smoke_rows(tmp_path) -> list[str]:
    """The smoke size's TEST rows as the four files alter-eval reads."""
    import tofu_real
    from tofu_data import build_sets, load_tofu
    s = build_sets(load_tofu(TOFU), tofu_real.SIZES["smoke"])
    paths = []
    for name, rows in (("forget", s.test_forget), ("retain", s.retain_eval), ("real_authors", s.real_authors),
                       ("world_facts", s.world_facts)):
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(rows))
        paths.append(str(p))
    return paths


def test_sets_are_whole_authors_and_disjoint():
    import tofu_real
    from tofu_data import TofuDataError, build_sets, check_sets, load_tofu
    t = load_tofu(TOFU)
    s = build_sets(t, tofu_real.SIZES["cpu"])
    assert s.report["test_forget"] == {"rows": 40, "authors": [180, 181]}
    assert s.report["dev_forget"] == {"rows": 20, "authors": [182]}
    assert s.report["retain_train"] == {"rows": 40, "authors": 2} and s.report["finetune_rows"] == 100
    g = build_sets(t, tofu_real.SIZES["gpu"])
    assert g.report["retain_models"] == {"retain_test": 3600, "retain_dev": 3600} and g.report["finetune_rows"] == 4000
    assert {(r["question"], r["answer"]) for r in g.retain_models["retain_test"]} == \
        {(r["question"], r["answer"]) for r in _rows("retain90.json")}          # TOFU's retain90 model
    s.retain_train.append({"question": s.test_forget[0]["question"], "answer": s.test_forget[0]["answer"]})
    with pytest.raises(TofuDataError, match="retain set vs test forget split: 1 shared author"):
        check_sets(t, s)


def test_skips_with_a_reason_without_the_files(tmp_path, capsys):
    import tofu_real
    assert tofu_real.main(["--data", str(tmp_path), "--work", str(tmp_path / "w")]) == tofu_real.SKIPPED
    assert "SKIPPED: the TOFU files are not in" in capsys.readouterr().err


@pytest.mark.heavy          # SmolLM2-135M on the CPU: minutes (scripts/test.sh --full runs it)
def test_smoke_pipeline_on_the_packaged_model(tmp_path):
    pytest.importorskip("gguf", reason="the packaged model needs gguf (pip install gguf)")
    assert _run("smollm2-135m-instruct", tmp_path / "work", methods="alter") == 0
    res = json.loads((tmp_path / "work" / "tofu_real_smoke.json").read_text())
    assert [r["model"] for r in res["rows"]] == ["finetuned", "retain", "alter"]
