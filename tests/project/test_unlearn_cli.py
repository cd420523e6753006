"""`alter-unlearn` end to end on a tiny Llama saved with save_pretrained, with TOFU rows on disk."""
import json
import os

import pytest
import torch

import alter_kernels as ak
from alter_kernels.cli import unlearn as cli
from alter_kernels.unlearn.toy import toy_model, toy_rows, toy_tokenizer


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    forget, retain = toy_rows(4, seed=1), toy_rows(4, seed=2, offset=6)
    tok = toy_tokenizer(forget + retain)
    model = toy_model(len(tok))
    model.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    (d / "forget.json").write_text(json.dumps(forget))                       # JSON array
    (d / "retain.jsonl").write_text("\n".join(json.dumps(r) for r in retain))  # JSON lines
    return d


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    parser = cli.build_parser()
    for action in parser._actions:
        assert action.help, f"option {action.option_strings} has no help"
        for s in action.option_strings:
            assert s in out
    for m in ("alter", "asymlora", "lora", "ga", "graddiff", "kl", "npo", "npo_retain"):
        assert m in out


def test_cli_alter_end_to_end_and_resume(files, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--model", str(files / "model"), "--forget", str(files / "forget.json"),
            "--retain", str(files / "retain.jsonl"), "--method", "alter", "--out", str(out),
            "--epochs", "2", "--batch-size", "2", "--checkpoint-every", "1", "--rank", "4",
            "--num-forget-experts", "2", "--threshold-quantile", "0.5", "--device", "cpu", "--no-progress"]
    assert cli.main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 4 and summary["method"] == "alter"
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "metrics.json",
                 "history.json", "checkpoint.pt", "run.json"):
        assert (out / name).is_file(), name
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]            # atomic writes left nothing
    metrics = json.load(open(out / "metrics.json"))
    assert [m["epoch"] for m in metrics] == [1, 2] and "eval_forget_nll" in metrics[-1]
    history = json.load(open(out / "history.json"))
    assert len(history) == 4 and all("tokens_per_s" in h for h in history)
    # the adapter loads onto the base model patched with its config
    from transformers import AutoModelForCausalLM
    cfg, meta = ak.read_adapter_config(out / "adapter")
    assert cfg.rank == 4 and cfg.num_forget_experts == 2 and meta["extra"]["method"] == "alter"
    assert 0 < summary["high_entropy_share"] < 1 and cfg.threshold != 1.2          # theta from the quantile
    m = ak.patch(AutoModelForCausalLM.from_pretrained(files / "model"), cfg)
    ak.load_adapter(m, out / "adapter")
    assert any(float(p.detach().abs().sum()) > 0 for p in ak.adapter_parameters(m)["B"])
    # --resume of a finished run does no more steps and leaves the adapter as it was
    before = (out / "adapter" / "adapter_model.safetensors").read_bytes()
    assert cli.main(args + ["--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 4
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == before

    # continue unlearning: a new forget request gets a new expert; the old ones stay
    (tmp_path / "forget2.json").write_text(json.dumps(toy_rows(2, seed=9, offset=3)))
    out2 = tmp_path / "run2"
    assert cli.main(["--model", str(files / "model"), "--forget", str(tmp_path / "forget2.json"),
                     "--retain", str(files / "retain.jsonl"), "--out", str(out2), "--adapter", str(out / "adapter"),
                     "--add-experts", "1", "--max-steps", "1", "--batch-size", "2", "--no-progress",
                     "--no-eval"]) == 0
    capsys.readouterr()
    cfg2, _ = ak.read_adapter_config(out2 / "adapter")
    assert cfg2.num_forget_experts == 3
    from safetensors.torch import load_file
    a, b = load_file(out / "adapter" / "adapter_model.safetensors"), load_file(out2 / "adapter" / "adapter_model.safetensors")
    assert cfg2.router_input == "prefix_match" and cfg2.router_keys >= cfg.router_keys
    k_old = cfg.router_keys
    for k, v in a.items():
        if k.endswith("lora_B"):
            assert torch.equal(b[k][:3], v)
        elif k.endswith("alter_router.keys"):           # the new request's keys are appended
            assert torch.equal(b[k][:k_old], v)
        elif k.endswith("alter_router.weight"):         # old key rows and the bias row, old expert columns
            assert torch.equal(b[k][:k_old, :3], v[:k_old]) and torch.equal(b[k][-1, :3], v[-1])
        else:
            assert torch.equal(b[k], v)


def test_cli_full_parameter_baseline(files, tmp_path, capsys):
    out = tmp_path / "ga"
    assert cli.main(["--model", str(files / "model"), "--forget", str(files / "forget.json"), "--method", "ga",
                     "--out", str(out), "--max-steps", "1", "--no-progress", "--no-eval"]) == 0
    assert (out / "model" / "config.json").is_file() and (out / "model" / "tokenizer.json").is_file()
    assert json.loads(capsys.readouterr().out)["model"] == str(out / "model")


def test_cli_bad_input(files, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question": "q ?", "answer": "a ."}, {"question": "only a question"}]))
    base = ["--model", str(files / "model"), "--retain", str(files / "retain.jsonl"), "--out", str(tmp_path / "o"),
            "--no-progress"]
    assert cli.main(base + ["--forget", str(bad)]) == 1
    assert f"{bad} row 1: missing field 'answer'" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert cli.main(base + ["--forget", str(empty)]) == 1
    assert "no rows" in capsys.readouterr().err
    assert cli.main(base + ["--forget", str(files / "forget.json"), "--target-modules", "c_attn"]) == 1
    assert "none of the target modules" in capsys.readouterr().err
    assert cli.main(base + ["--forget", str(files / "forget.json"), "--num-forget-experts", "many"]) == 2   # usage
    assert "--num-forget-experts: expected an int or 'auto'" in capsys.readouterr().err
    assert cli.main(["--model", str(tmp_path / "no-model"), "--forget", str(bad), "--out", str(tmp_path / "o")]) == 1
    assert "cannot load" in capsys.readouterr().err


def test_help_shows_the_prompt_newline_and_accepts_it(capsys):
    from alter_kernels.eval import DEFAULT_TEMPLATE
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 'Question: {question}\\nAnswer:')" in out
    p = cli.build_parser()
    base = ["--model", "m", "--forget", "f", "--out", "o"]
    assert p.parse_args(base).prompt_format == DEFAULT_TEMPLATE       # the evaluator's prompt
    assert p.parse_args(base + ["--prompt-format", "Q: {question}\\nA:"]).prompt_format == "Q: {question}\nA:"


def test_cli_prints_rows_and_warns_on_overlap(files, tmp_path, capsys):
    retain = [json.loads(line) for line in (files / "retain.jsonl").read_text().splitlines()]
    forget = json.loads((files / "forget.json").read_text()) + retain[:2]
    both = tmp_path / "forget_overlap.json"
    both.write_text(json.dumps(forget))
    args = ["--model", str(files / "model"), "--forget", str(both), "--retain", str(files / "retain.jsonl"),
            "--method", "graddiff", "--out", str(tmp_path / "o"), "--max-steps", "1", "--batch-size", "2",
            "--device", "cpu", "--no-progress", "--no-eval", "--lr", "1e-6"]
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    # the engine's warnings come out as one "alter-unlearn: warning: ..." line each
    msg = next(line for line in err.splitlines() if "also appear" in line)
    assert msg.startswith("alter-unlearn: warning: ") and "2 of 6 forget rows also appear in the retain set" in msg
    assert retain[0]["question"] in msg and retain[1]["question"] in msg
    assert f"forget: 6 rows from {both}" in err and f"retain: 4 rows from {files / 'retain.jsonl'}" in err


def test_cli_says_when_the_forget_set_was_not_unlearned(files, tmp_path, capsys):
    """At a learning rate far too small the run ends with the forget loss where it started: the CLI
    says so and suggests scaling the rates (issue 27); the summary records it."""
    args = ["--model", str(files / "model"), "--forget", str(files / "forget.json"), "--retain",
            str(files / "retain.jsonl"), "--method", "graddiff", "--out", str(tmp_path / "o"), "--max-steps", "2",
            "--batch-size", "2", "--device", "cpu", "--no-progress", "--lr", "1e-9"]
    assert cli.main(args) == 0
    cap = capsys.readouterr()
    line = next(x for x in cap.err.splitlines() if "not unlearned" in x)
    assert line.startswith("alter-unlearn: warning: unlearn[graddiff]: the forget set is essentially not unlearned")
    assert "--lr 3e-08" in line
    summary = json.loads(cap.out)
    assert summary["forget_unchanged"] is True
    assert summary["forget_nll"]["after"] - summary["forget_nll"]["before"] < 0.6931


def test_unlearn_loader_task_id(tmp_path):
    import warnings
    from alter_kernels.unlearn.data import DataError, load_rows, overlapping_rows
    rows = [dict(r, task_id=str(1 + i // 3)) for i, r in enumerate(toy_rows(9, seed=3))]
    p = tmp_path / "tofu.json"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")               # JSON lines in a .json file
    with pytest.warns(UserWarning, match=r"9 rows in 3 task_id groups \{'1': 3, '2': 3, '3': 3\}"):
        got, _ = load_rows(str(p), "forget")
    assert len(got) == 9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one, where = load_rows(str(p), "forget", task_id="2")
        two, _ = load_rows(str(p), "forget", task_id=["1", 3])
    assert [r["task_id"] for r in one] == ["2"] * 3 and "task_id 2" in where
    assert len(two) == 6 and {r["task_id"] for r in two} == {"1", "3"}
    with pytest.raises(DataError, match=r"no rows with task_id '7'.*'1': 3"):
        load_rows(str(p), "forget", task_id=7)
    # one row in JSON-lines form (a .json file with a single object line) is one row
    single = tmp_path / "one.json"
    single.write_text(json.dumps(rows[0]) + "\n")
    assert load_rows(str(single), "forget")[0] == [rows[0]]
    assert len(overlapping_rows(rows[:4], rows[3:])) == 1
    assert overlapping_rows([{"question": "q ?", "answer": "a  b"}], [{"question": "q ?", "answer": "a b"}])


def test_console_scripts_and_module_run():
    """setup.py's console scripts name the cli package's mains, and ``python -m alter_kernels.cli``
    (what torchrun -m starts) is alter-unlearn."""
    import re
    import subprocess
    import sys

    from alter_kernels.cli import eval as eval_cli
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "setup.py")) as f:
        scripts = dict(re.findall(r'"(alter-\w+)=([\w.]+:\w+)"', f.read()))
    assert scripts == {"alter-unlearn": "alter_kernels.cli.unlearn:main", "alter-eval": "alter_kernels.cli.eval:main",
                       "alter-finetune": "alter_kernels.cli.finetune:main"}
    assert callable(cli.main) and callable(eval_cli.main)
    res = subprocess.run([sys.executable, "-m", "alter_kernels.cli", "--help"], capture_output=True, text=True,
                         cwd=root, env={**os.environ, "PYTHONPATH": root})
    assert res.returncode == 0 and res.stdout.startswith("usage: alter-unlearn"), res.stderr[-2000:]


def test_cli_fused_loss_flag_reaches_the_engine(files, tmp_path, capsys, monkeypatch):
    """--fused-loss off: the step never calls the fused LM-head op; the default (auto) does."""
    from alter_kernels.unlearn import heads
    calls = []
    real = heads.lm_head_token_losses
    monkeypatch.setattr(heads, "lm_head_token_losses", lambda *a, **k: calls.append(1) or real(*a, **k))
    base = ["--model", str(files / "model"), "--forget", str(files / "forget.json"), "--method", "ga",
            "--max-steps", "1", "--no-progress", "--no-eval"]
    assert cli.main(base + ["--out", str(tmp_path / "off"), "--fused-loss", "off"]) == 0
    assert calls == []
    assert cli.main(base + ["--out", str(tmp_path / "auto")]) == 0
    assert calls
    with pytest.raises(SystemExit) as e:                                                     # usage error
        cli.main(base + ["--out", str(tmp_path / "bad"), "--fused-loss", "on"])
    assert e.value.code == 2 and "--fused-loss" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
