"""ak.finetune and alter-finetune on a tiny random Llama (issue 22): the training NLL goes down,
the output folder loads and holds exactly the trained weights (full and LoRA merged), resume after
a stop equals an uninterrupted run, and bad input is one line with the right exit status."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import alter_kernels as ak
from alter_kernels.cli import finetune as cli
from alter_kernels.unlearn import OptionError
from alter_kernels.unlearn.checkpoint import load_checkpoint
from alter_kernels.unlearn.data import collate, prepare
from alter_kernels.unlearn.toy import toy_model, toy_rows, toy_tokenizer

ROWS = toy_rows(8, seed=1)
TOK = toy_tokenizer(ROWS)
FAST = dict(progress=False, eval_each_epoch=False)

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def model():
    return toy_model(len(TOK), seed=0)


def train_nll(m) -> float:
    """Mean answer-token NLL of ROWS, computed here with HF's own loss (not the engine's)."""
    _, ex = prepare(ROWS, TOK, "rows")
    ids, att, lab = collate(ex, TOK.pad_token_id)
    with torch.no_grad():
        return float(m(input_ids=ids, attention_mask=att, labels=lab).loss)


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("lora", [False, True])
def test_finetune_lowers_nll_and_writes_the_trained_model(tmp_path, lora):
    m = model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    nll0 = train_nll(m)
    res = ak.finetune(m, ROWS, TOK, lora=lora, epochs=4, batch_size=4, lr=1e-2 if lora else 5e-3,
                      out_dir=str(tmp_path / "ft"), **FAST)
    assert res.method == ("finetune_lora" if lora else "finetune") and res.steps == 8 and res.model is m
    nll1 = train_nll(m)
    assert nll1 < nll0 - (0.2 if lora else 0.5), (nll0, nll1)     # LoRA: no LM head, slower
    assert type(m).__name__ == "LlamaForCausalLM" and not any("lora" in k for k in m.state_dict())
    assert any(not torch.equal(v, before[k]) for k, v in m.state_dict().items())
    if lora:      # merged LoRA: the embeddings and norms are untouched, the targeted linears moved
        assert torch.equal(m.model.embed_tokens.weight, before["model.embed_tokens.weight"])
        assert not torch.equal(m.model.layers[0].self_attn.q_proj.weight, before["model.layers.0.self_attn.q_proj.weight"])
    loaded = AutoModelForCausalLM.from_pretrained(res.model_dir)
    same_weights(loaded, m)
    assert train_nll(loaded) == pytest.approx(nll1, abs=1e-6)
    assert json.loads((tmp_path / "ft" / "history.json").read_text())[-1]["step"] == 8
    assert all(p.requires_grad for p in m.parameters())           # the model's own flags are back


@pytest.mark.parametrize("lora", [False, True])
def test_resume_equals_uninterrupted(tmp_path, lora):
    kw = dict(lora=lora, epochs=2, batch_size=3, lr=1e-2, checkpoint_every=2, **FAST)   # 3 steps per epoch
    full = ak.finetune(model(), ROWS, TOK, out_dir=str(tmp_path / "full"), **kw)

    class Stop(Exception):
        pass

    def stop_at_5(rec):
        if rec["step"] == 5:
            raise Stop()
    cut = model()
    with pytest.raises(Stop):
        ak.finetune(cut, ROWS, TOK, out_dir=str(tmp_path / "cut"), callback=stop_at_5, **kw)
    assert load_checkpoint(str(tmp_path / "cut"))["step"] == 4
    assert not any("lora" in k for k in cut.state_dict())          # a failed LoRA run leaves no LoRA behind
    resumed = ak.finetune(model(), ROWS, TOK, out_dir=str(tmp_path / "cut"), resume=True, **kw)
    same_weights(resumed.model, full.model)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    same_weights(AutoModelForCausalLM.from_pretrained(resumed.model_dir), full.model)


def test_bad_arguments():
    with pytest.raises(OptionError, match="lr"):
        ak.finetune(model(), ROWS, TOK, lr=-1.0, **FAST)
    with pytest.raises(OptionError, match="lora_rank"):
        ak.finetune(model(), ROWS, TOK, lora=True, lora_rank=0, **FAST)
    with pytest.raises(OptionError, match="none of"):
        ak.finetune(model(), ROWS, TOK, lora=True, target_modules=("c_attn",), max_steps=1, **FAST)
    with pytest.raises(TypeError, match="unknown option"):
        ak.finetune(model(), ROWS, TOK, beta=2.0, **FAST)
    with pytest.raises(ak.DataError, match="missing field 'answer'"):
        ak.finetune(model(), [{"question": "q ?"}], TOK, **FAST)
    with pytest.raises(OptionError, match="resume"):
        ak.finetune(model(), ROWS, TOK, resume=True, **FAST)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("ftcli")
    m = model()
    m.save_pretrained(d / "model")
    TOK.save_pretrained(d / "model")
    (d / "a.json").write_text(json.dumps(ROWS[:4]))
    (d / "b.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS[4:]))
    return d


def test_cli_finetune_then_unlearn_and_eval(folder, tmp_path, capsys):
    out = tmp_path / "ft"
    assert cli.main(["--model", str(folder / "model"), "--data", str(folder / "a.json"), str(folder / "b.jsonl"),
                     "--out", str(out), "--epochs", "2", "--lr", "5e-3", "--no-progress", "--no-eval"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == str(out / "model") and summary["steps"] == 4
    assert json.loads((out / "run.json").read_text())["lr"] == 5e-3
    loaded = AutoModelForCausalLM.from_pretrained(out / "model")
    assert train_nll(loaded) < train_nll(model()) - 0.2
    # the folder is what the other commands take
    from alter_kernels.cli import unlearn as unlearn_cli
    assert unlearn_cli.main(["--model", str(out / "model"), "--forget", str(folder / "a.json"), "--retain",
                             str(folder / "b.jsonl"), "--method", "graddiff", "--max-steps", "1", "--out",
                             str(tmp_path / "u"), "--no-progress", "--no-eval"]) == 0


def test_cli_bad_input_is_one_line(folder, tmp_path, capsys):
    base = ["--model", str(folder / "model"), "--data", str(folder / "a.json"), "--no-progress"]
    cases = [(["--out", str(tmp_path / "o"), "--lr", "-1"], 2, "--lr: expected a finite number > 0"),
             (["--out", str(tmp_path / "o"), "--epochs", "0"], 2, "--epochs: expected an int >= 1"),
             (["--out", str(tmp_path / "o"), "--lora", "--lora-rank", "0"], 2, "--lora-rank: expected an int >= 1"),
             (["--out", str(folder / "model")], 2, "contains (or is) the model directory"),
             (["--out", str(tmp_path / "o"), "--data", str(tmp_path / "missing.json")], 2, "not found")]
    for extra, code, msg in cases:
        assert cli.main(base + extra) == code
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1 and "Traceback" not in err, (extra, err)
    with pytest.raises(SystemExit) as e:                           # argparse: exit 2, one line
        cli.main(base + ["--out", str(tmp_path / "o"), "--lr"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "expected one argument" in err and err.count("\n") == 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question": "q ?"}]))
    assert cli.main(base[:2] + ["--data", str(bad), "--out", str(tmp_path / "o2"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "row 0: missing field 'answer'" in err and err.count("\n") == 1



def test_cli_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage: alter-finetune")
    for action in cli.build_parser()._actions:
        assert action.help, f"option {action.option_strings} has no help"
        assert all(s in out for s in action.option_strings)
