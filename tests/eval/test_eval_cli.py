"""`alter-eval` end to end: tiny random Llama models saved with save_pretrained, an ALTER and a
PEFT adapter, and TOFU-format files (JSON lines in .json, task_id groups) made here."""
import json
import os

import pytest
import torch

import alter_kernels as ak
from alter_kernels.cli import eval as cli
from alter_kernels.eval import QAFormat, evaluate_tofu, load_rows
from alter_kernels.unlearn.toy import toy_model, toy_rows, toy_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py

FAST = ["--max-new-tokens", "6", "--batch-size", "8", "--device", "cpu", "--no-progress"]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("evalcli")
    forget = [dict(r, task_id="1") for r in toy_rows(6, seed=1)]
    forget += [dict(r, task_id="2") for r in toy_rows(4, seed=5, offset=3)]     # a second task_id group
    retain = [dict(r, task_id="1") for r in toy_rows(5, seed=2, offset=6)]
    real = toy_rows(3, seed=3, offset=2)
    world = toy_rows(3, seed=4, offset=4)
    tok = toy_tokenizer(forget + retain + real + world)
    data = d / "tofu"
    data.mkdir()
    _jsonl(data / "forget10_perturbed.json", forget)          # the public TOFU files are JSON lines
    _jsonl(data / "retain_perturbed.json", retain)
    (data / "real_authors_perturbed.json").write_text(json.dumps(real))
    _jsonl(data / "world_facts_perturbed.json", world)
    for name, seed in (("model", 0), ("retain_model", 1)):
        m = toy_model(len(tok), seed=seed)
        m.save_pretrained(d / name)
        tok.save_pretrained(d / name)
    # an ALTER adapter with non-zero B (a fresh adapter is the identity)
    m = toy_model(len(tok), seed=0)
    ak.patch(m, ak.AlterConfig(rank=4, num_forget_experts=2, target_modules=("q_proj", "v_proj")))
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for name, p in ak.adapter_state_dict(m).items():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    ak.save_adapter(m, d / "alter_adapter")
    return d, tok


def _run(args, capsys):
    rc = cli.main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for action in cli.build_parser()._actions:
        assert action.help
        for s in action.option_strings:
            assert s in out
    assert "(default: 'Question: {question}\\nAnswer:')" in " ".join(out.split())


def test_alter_adapter_end_to_end_and_reference(setup, tmp_path, capsys):
    d, tok = setup
    out, ref = tmp_path / "eval.json", tmp_path / "ref.json"
    base = ["--model", str(d / "model"), "--adapter", str(d / "alter_adapter"), "--data", str(d / "tofu"),
            "--task-id", "1"] + FAST
    rc, stdout, err = _run(base + ["--retain-model", str(d / "retain_model"), "--save-reference", str(ref),
                                   "--out", str(out)], capsys)
    assert rc == 0, err
    res = json.loads(out.read_text())
    assert res["forget"]["n"] == 6 and res["retain"]["n"] == 5           # task_id 1 of the forget file
    assert 0 <= res["forget_quality"] <= 1 and 0 <= res["model_utility"] <= 1
    assert set(res["utility_parts"]) == {f"{s}_{k}" for s in ("retain", "real_authors", "world_facts")
                                         for k in ("probability", "rouge", "truth_ratio")}
    assert res["truth_ratio_definition"] == "geometric" and res["max_new_tokens"] == 6
    assert res["meta"]["adapter_type"] == "alter" and res["meta"]["retain_model"] == str(d / "retain_model")
    assert len(res["forget"]["truth_ratios"]) == 6 and len(res["forget"]["generations"]) == 6
    assert "forget quality" in stdout and "model utility" in stdout and "world facts" in stdout
    assert "rows: forget 6" in err
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]
    reference = json.loads(ref.read_text())
    assert reference["n"] == 6 and reference["truth_ratio"] == "geometric"
    # fluency per split, "degenerate" judged against the retain model's own answers (issue 24)
    from alter_kernels.eval import fluency as fl
    assert [len(reference["generations"][s]) for s in ("forget", "retain")] == [6, 5]
    for s in ("forget", "retain"):
        f, gens, rgens = res[f"fluency_{s}"], res[s]["generations"], reference["generations"][s]
        assert f["n"] == len(gens) and f["repetition"] == pytest.approx(fl.fluency_stats(gens)["repetition"])
        assert f["degenerate_threshold"] == pytest.approx(fl.repetition_threshold(rgens))
        assert f["degenerate_share"] == pytest.approx(fl.degenerate_share(gens, fl.repetition_threshold(rgens)))
        assert f"fluency, {s} answers: repetition (2-grams) {f['repetition']:.3f}" in stdout
    assert "fluency" in res and stdout.count("degenerate n/a") == 0

    # the same numbers from the saved reference (the retain model is not loaded), deterministic
    out2 = tmp_path / "eval2.json"
    rc, _, err = _run(base + ["--reference", str(ref), "--out", str(out2)], capsys)
    assert rc == 0, err
    res2 = json.loads(out2.read_text())
    for k in ("forget_quality", "model_utility", "forget_rouge", "retain_rouge", "utility_parts", "fluency_forget",
              "fluency_retain"):
        assert res2[k] == res[k], k
    assert res2["forget"]["generations"] == res["forget"]["generations"]
    # an earlier alter-eval output of the retain model also serves as the reference
    out3 = tmp_path / "retain_eval.json"
    rc, stdout3, err = _run(["--model", str(d / "retain_model"), "--data", str(d / "tofu"), "--task-id", "1",
                             "--out", str(out3)] + FAST, capsys)
    assert rc == 0 and "forget quality and degenerate shares are not computed" in err
    res3 = json.loads(out3.read_text())          # no reference: no degenerate share, and the output says so
    assert res3["fluency_forget"]["degenerate_share"] is None and res3["fluency_retain"]["degenerate_share"] is None
    assert stdout3.count("degenerate n/a (no retain-model answers") == 2
    assert res3["forget"]["generations"] == reference["generations"]["forget"]
    assert json.loads(out3.read_text())["forget"]["truth_ratios"] == pytest.approx(reference["truth_ratios"])
    out4 = tmp_path / "eval4.json"
    assert _run(base + ["--reference", str(out3), "--out", str(out4)], capsys)[0] == 0
    assert json.loads(out4.read_text())["forget_quality"] == pytest.approx(res["forget_quality"])
    assert json.loads(out4.read_text())["fluency_retain"] == res["fluency_retain"]

    # the adapter is applied: same numbers as patching + load_adapter by hand, not the base model's
    model = load_model_plain(d / "model")
    ak.patch(model, ak.read_adapter_config(d / "alter_adapter")[0])
    ak.load_adapter(model, d / "alter_adapter")
    rows = {s: load_rows(d / "tofu" / f"{s}_perturbed.json", task_id="1") for s in
            ("forget10", "retain")}
    mine = evaluate_tofu(model, tok, rows["forget10"], rows["retain"], load_rows(d / "tofu" / "real_authors_perturbed.json"),
                         load_rows(d / "tofu" / "world_facts_perturbed.json"), batch_size=8, max_new_tokens=6,
                         reference_truth_ratios=reference["truth_ratios"])
    assert mine["forget"]["truth_ratios"] == pytest.approx(res["forget"]["truth_ratios"], rel=1e-5)
    assert mine["model_utility"] == pytest.approx(res["model_utility"], rel=1e-5)
    from alter_kernels.eval import truth_ratios
    plain = truth_ratios(load_model_plain(d / "model"), tok, rows["forget10"])["ratio"].tolist()
    assert max(abs(a / b - 1) for a, b in zip(plain, res["forget"]["truth_ratios"])) > 1e-3


def load_model_plain(path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path).eval()


def test_peft_adapter_and_files(setup, tmp_path, capsys):
    peft = pytest.importorskip("peft")
    d, tok = setup
    m = load_model_plain(d / "model")
    pm = peft.get_peft_model(m, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                init_lora_weights=False))
    pm.save_pretrained(d / "peft_adapter")
    merged = pm.merge_and_unload().eval()
    files = [str(d / "tofu" / f) for f in ("world_facts_perturbed.json", "retain_perturbed.json",
                                           "forget10_perturbed.json", "real_authors_perturbed.json")]
    out = tmp_path / "sub" / "eval.json"
    rc, _, err = _run(["--model", str(d / "model"), "--adapter", str(d / "peft_adapter"), "--data", *files,
                       "--task-id", "1", "--truth-ratio", "arithmetic", "--out", str(out)] + FAST, capsys)
    assert rc == 0, err
    res = json.loads(out.read_text())
    assert res["meta"]["adapter_type"] == "peft" and res["truth_ratio_definition"] == "arithmetic"
    from alter_kernels.eval import truth_ratios
    want = truth_ratios(merged, tok, load_rows(files[2], task_id="1"), QAFormat(), mode="arithmetic")["ratio"]
    assert res["forget"]["truth_ratios"] == pytest.approx(want.tolist(), rel=1e-5)


def test_task_id_warning_and_model_from_adapter(setup, tmp_path, capsys, monkeypatch):
    d, _ = setup
    out = tmp_path / "eval.json"
    # no --model: the ALTER adapter names its base model, stored as an absolute path
    monkeypatch.chdir(d)
    m = load_model_plain("model")                                  # a relative path, as typed
    ak.patch(m, ak.AlterConfig(rank=2, num_forget_experts=1, target_modules=("q_proj",)))
    ak.save_adapter(m, "rel_adapter")
    meta = json.loads((d / "rel_adapter" / "adapter_config.json").read_text())
    assert meta["base_model"] == str(d / "model")
    monkeypatch.chdir(tmp_path)
    rc, _, err = _run(["--adapter", str(d / "rel_adapter"), "--data", str(d / "tofu"), "--out", str(out)] + FAST,
                      capsys)
    assert rc == 0, err
    assert "alter-eval: warning: " in err and "10 rows in 2 task_id groups {'1': 6, '2': 4}" in err
    assert json.loads(out.read_text())["forget"]["n"] == 10
    assert json.loads(out.read_text())["meta"]["model"] == str(d / "model")


def test_usage_errors_are_one_line_exit_2(setup, tmp_path, capsys):
    d, _ = setup
    out = str(tmp_path / "e.json")
    data = ["--data", str(d / "tofu")]
    cases = [
        (["--model", str(d / "model"), "--out", out], "the following arguments are required: --data"),
        (["--model", str(d / "model"), "--out", out, *data, "--retain-model", "x", "--reference", "y"],
         "not allowed with argument"),
        (["--model", str(d / "model"), "--out", out, "--data", str(tmp_path / "nowhere.json")], "is not a file"),
        # a --task-id the data lacks and a model that cannot be loaded are run errors (exit 1): tests/eval/test_eval_bad_input.py
        (["--model", str(d / "model"), "--out", out, *data, "--adapter", str(tmp_path)], "no adapter_config.json"),
        (["--model", str(d / "model"), "--out", out, *data, "--save-reference", "r.json"], "needs --retain-model"),
        (["--out", out, *data], "--model is required"),
        (["--model", str(d / "model"), "--out", out, *data, "--truth-ratio", "mean"], "invalid choice"),
    ]
    for args, msg in cases:
        try:
            code = cli.main(args + FAST)
        except SystemExit as e:                   # argparse's own errors
            code = e.code
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        lines = [ln for ln in err.splitlines() if ln.startswith("alter-eval: error: ")]
        assert len(lines) == 1 and msg in lines[0], (msg, err)
    # a reference computed with the other truth-ratio definition is refused
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"format": cli.REFERENCE_FORMAT, "truth_ratio": "arithmetic", "truth_ratios": [1.0]}))
    rc, _, err = _run(["--model", str(d / "model"), "--out", out, *data, "--task-id", "1", "--reference", str(ref)]
                      + FAST, capsys)
    assert rc == 2 and "holds arithmetic truth ratios but --truth-ratio is geometric" in err
    assert not os.path.exists(out)


def test_resolve_data_names(tmp_path):
    for n in ("forget01.json", "forget10.json", "retain90.json", "retain99.json", "real_authors.json",
              "world_facts.json"):
        (tmp_path / n).write_text("[]")
    with pytest.raises(cli.UsageError, match="several forget splits"):
        cli.resolve_data([str(tmp_path)])
    got = cli.resolve_data([str(tmp_path)], "forget10")          # the embedded benchmark's names
    assert os.path.basename(got["retain"]) == "retain90.json"
    assert os.path.basename(cli.resolve_data([str(tmp_path)], "forget01")["retain"]) == "retain99.json"
    a, b, c, e = (str(tmp_path / f"{x}.json") for x in "abce")
    for f in (a, b, c, e):
        open(f, "w").write("[]")
    assert cli.resolve_data([a, b, c, e]) == {"forget": a, "retain": b, "real_authors": c, "world_facts": e}
