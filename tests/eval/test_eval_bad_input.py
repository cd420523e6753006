"""`alter-eval` on bad input (issue 26's audit cases): each case ends with exactly one line
``alter-eval: error: ...`` naming what was wrong, exit 2 (usage) or 1 (a damaged input, a model
that cannot be loaded), before any model work, with no output written and every input unchanged."""
import hashlib
import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from alter_kernels.cli import eval as cli
from test_eval_cli import FAST, _jsonl, setup  # noqa: F401  (the module's fixture: models, data, ALTER adapter)

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py

OUT = "{tmp}/eval.json"


def _rows(d, split="forget10_perturbed.json"):
    return [json.loads(line) for line in (d / "tofu" / split).read_text().splitlines() if line.strip()]


def _data_with(d, tmp, field, value):
    """A copy of the four data files whose forget file's row 2 has ``field`` set to ``value``."""
    data = tmp / "data"
    data.mkdir(exist_ok=True)
    for f in os.listdir(d / "tofu"):
        (data / f).write_bytes((d / "tofu" / f).read_bytes())
    rows = _rows(d)
    rows[2][field] = value
    _jsonl(data / "forget10_perturbed.json", rows)
    return str(data)


def _reference(tmp, ratios, raw=None):
    p = tmp / "ref.json"
    p.write_text(raw if raw is not None else json.dumps({"format": cli.REFERENCE_FORMAT, "truth_ratio": "geometric",
                                                         "truth_ratios": ratios}))
    return str(p)


def _alter_adapter(d, tmp, damage):
    """A copy of the fixture's ALTER adapter, damaged by ``damage(config dict, weights path)``."""
    a = tmp / "adapter"
    a.mkdir()
    for f in os.listdir(d / "alter_adapter"):
        (a / f).write_bytes((d / "alter_adapter" / f).read_bytes())
    meta = json.loads((a / "adapter_config.json").read_text())
    meta = damage(meta, a / "adapter_model.safetensors") or meta
    (a / "adapter_config.json").write_text(json.dumps(meta))
    return str(a)


def _weights(fill):
    def damage(meta, w):
        t = load_file(w)
        save_file({k: torch.full_like(v, fill) if "lora_B" in k else v for k, v in t.items()}, w)
        meta["weights_sha256"] = hashlib.sha256(w.read_bytes()).hexdigest()     # a consistent save of bad weights
    return damage


def _corrupt(meta, w):
    w.write_bytes(w.read_bytes()[:40])


def _peft_adapter(d, tmp, damage):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(d / "model")
    pm = peft.get_peft_model(m, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    pm.save_pretrained(tmp / "peft")
    w = tmp / "peft" / "adapter_model.safetensors"
    if damage == "corrupt":
        w.write_bytes(w.read_bytes()[:40])
    else:
        save_file({k: torch.full_like(v, 3e38) if "lora_B" in k else v for k, v in load_file(w).items()}, w)
    return str(tmp / "peft")


def _symlink(tmp):
    (tmp / "elsewhere.json").write_text("{}")
    os.symlink(tmp / "elsewhere.json", tmp / "link.json")
    return str(tmp / "link.json")


# (id, extra args built from (d = fixture dir, tmp), exit code, text of the error line)
CASES = [
    # ---- --out / --save-reference over an input, or not writable (usage, 2)
    ("out-is-model-config", lambda d, t: ["--out", str(d / "model" / "config.json")], 2,
     "lies under the --model directory"),
    ("out-is-data-file", lambda d, t: ["--out", str(d / "tofu" / "retain_perturbed.json")], 2,
     "is the retain data file"),
    ("out-is-reference", lambda d, t: ["--reference", _reference(t, [1.0] * 6), "--out", str(t / "ref.json")], 2,
     "is the --reference file"),
    ("out-under-adapter", lambda d, t: ["--adapter", str(d / "alter_adapter"), "--out",
                                        str(d / "alter_adapter" / "eval.json")], 2, "lies under the --adapter directory"),
    ("save-reference-in-retain-model", lambda d, t: ["--retain-model", str(d / "retain_model"), "--save-reference",
                                                     str(d / "retain_model" / "config.json")], 2,
     "--save-reference: ", ),
    ("save-reference-is-out", lambda d, t: ["--retain-model", str(d / "retain_model"), "--save-reference",
                                            OUT.format(tmp=t)], 2, "are the same file"),
    ("out-symlink", lambda d, t: ["--out", _symlink(t)], 2, "symbolic link"),
    ("out-directory", lambda d, t: ["--out", str(t)], 2, "is a directory"),
    ("out-in-proc", lambda d, t: ["--out", "/proc/alter-eval.json"], 2, "cannot write to /proc"),
    ("out-in-sys", lambda d, t: ["--out", "/sys/alter-eval/eval.json"], 2, "cannot write to /sys"),
    ("out-dev-null", lambda d, t: ["--out", "/dev/null"], 2, "not a regular file"),
    ("out-name-too-long", lambda d, t: ["--out", str(t / ("e" * 250 + ".json"))], 2, "File name too long"),
    ("out-under-a-file", lambda d, t: ["--out", str(d / "tofu" / "retain_perturbed.json" / "e.json")], 2,
     "lies under the retain data file"),
    # ---- options (usage, 2)
    ("seed-negative", lambda d, t: ["--seed", "-1"], 2, "--seed: expected an int in 0..2**32-1, got -1"),
    ("seed-2**40", lambda d, t: ["--seed", str(2 ** 40)], 2, "--seed: expected an int in 0..2**32-1"),
    ("max-new-tokens-1e9", lambda d, t: ["--max-new-tokens", "1000000000"], 2, "--max-new-tokens: expected an int in "
                                                                               "1..4096"),
    ("max-new-tokens-0", lambda d, t: ["--max-new-tokens", "0"], 2, "--max-new-tokens: expected an int in 1..4096"),
    ("max-new-tokens-over-positions", lambda d, t: ["--max-new-tokens", "300"], 2, "has 256 positions"),
    ("batch-size-0", lambda d, t: ["--batch-size", "0"], 2, "--batch-size: expected an int in 1.."),
    ("prompt-format-unknown-field", lambda d, t: ["--prompt-format", "Q: {question} {topic}"], 2,
     "--prompt-format: has field(s) {topic}"),
    ("prompt-format-no-question", lambda d, t: ["--prompt-format", "Answer:"], 2, "has no {question} field"),
    ("prompt-format-stray-brace", lambda d, t: ["--prompt-format", "Q: {question"], 2, "is not a valid format string"),
    ("chat-template-missing", lambda d, t: ["--chat-template"], 2, "--chat-template on: the tokenizer of"),
    ("reference-missing", lambda d, t: ["--reference", str(t / "nowhere.json")], 2, "--reference: "),
    ("task-id-empty", lambda d, t: ["--task-id", ","], 2, "--task-id: expected a task_id"),
    ("device-cuda", lambda d, t: ["--device", "cuda:7"], 2, "--device cuda:7: "),
    ("model-dir-without-config", lambda d, t: ["--model", str(t)], 2, "has no config.json"),
    # ---- data rows (run, 1): file, row and field named
    ("perturbed-answer-empty", lambda d, t: ["--data", _data_with(d, t, "perturbed_answer", [])], 1,
     "row 2: field 'perturbed_answer' must be a string or a non-empty list of strings, got []"),
    ("perturbed-answer-int", lambda d, t: ["--data", _data_with(d, t, "perturbed_answer", 5)], 1,
     "row 2: field 'perturbed_answer' must be a string or a non-empty list of strings, got 5"),
    ("question-int", lambda d, t: ["--data", _data_with(d, t, "question", 5)], 1,
     "row 2: field 'question' must be a string, got 5"),
    ("answer-null", lambda d, t: ["--data", _data_with(d, t, "answer", None)], 1,
     "row 2: field 'answer' must be a string, got None"),
    ("paraphrased-answer-list", lambda d, t: ["--data", _data_with(d, t, "paraphrased_answer", ["a"])], 1,
     "row 2: field 'paraphrased_answer' must be a string"),
    ("task-id-absent", lambda d, t: ["--task-id", "9"], 1, "no rows with task_id '9'"),
    # ---- the reference (run, 1)
    ("reference-nan", lambda d, t: ["--reference", _reference(t, [1.0, math.nan] + [1.0] * 4)], 1,
     "entry 1 is nan; expected a finite number >= 0"),
    ("reference-inf", lambda d, t: ["--reference", _reference(t, [math.inf] + [1.0] * 5)], 1, "entry 0 is inf"),
    ("reference-negative", lambda d, t: ["--reference", _reference(t, [1.0, 1.0, -0.5] + [1.0] * 3)], 1,
     "entry 2 is -0.5"),
    ("reference-bool", lambda d, t: ["--reference", _reference(t, [True] * 6)], 1, "entry 0 is True"),
    ("reference-deep", lambda d, t: ["--reference", _reference(t, None, "[" * 100_000 + "]" * 100_000)], 1,
     "nested too deeply"),
    ("reference-not-json", lambda d, t: ["--reference", _reference(t, None, "{not json")], 1, "cannot read it"),
    # ---- adapters (run, 1)
    ("alter-format-version-string", lambda d, t: ["--adapter", _alter_adapter(d, t, lambda m, w: {
        **m, "format_version": "1"})], 1, "'format_version' must be an int >= 0, got '1'"),
    ("alter-weights-corrupt", lambda d, t: ["--adapter", _alter_adapter(d, t, _corrupt)], 1,
     "does not match the sha256 that adapter_config.json records"),
    ("alter-weights-corrupt-legacy", lambda d, t: ["--adapter", _alter_adapter(d, t, lambda m, w: (
        _corrupt(m, w), m.pop("weights_sha256")) and m)], 1, "is truncated or corrupted"),
    ("alter-b-3e38", lambda d, t: ["--adapter", _alter_adapter(d, t, _weights(3e38))], 1, "magnitude 3e+38"),
    ("alter-b-nan", lambda d, t: ["--adapter", _alter_adapter(d, t, _weights(math.nan))], 1, "non-finite"),
    ("alter-config-deep", lambda d, t: _deep_adapter(d, t), 1, "nested too deeply"),
    ("peft-weights-corrupt", lambda d, t: ["--adapter", _peft_adapter(d, t, "corrupt")], 1, "truncated or corrupted"),
    ("peft-b-3e38", lambda d, t: ["--adapter", _peft_adapter(d, t, "huge")], 1, "magnitude 3e+38"),
    ("model-not-loadable", lambda d, t: ["--model", str(t / "no-model")], 1, "cannot load"),
]


def _deep_adapter(d, t):
    a = _alter_adapter(d, t, lambda m, w: None)
    with open(os.path.join(a, "adapter_config.json"), "w") as f:
        f.write("[" * 100_000 + "]" * 100_000)
    return ["--adapter", a]


def _digest(d) -> str:
    h = hashlib.sha256()
    for root, _, names in sorted(os.walk(d)):
        for n in sorted(names):
            with open(os.path.join(root, n), "rb") as f:
                h.update(n.encode() + f.read())
    return h.hexdigest()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_before_any_model_work(setup, tmp_path, capsys, monkeypatch, case):
    from transformers import AutoModelForCausalLM
    d, _ = setup
    _, build, code, needle = case
    before = _digest(d)
    extra = build(d, tmp_path)
    loads = []
    real = AutoModelForCausalLM.from_pretrained.__func__
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        classmethod(lambda cls, *a, **k: loads.append(a) or real(cls, *a, **k)))
    args = ["--model", str(d / "model"), "--data", str(d / "tofu"), "--task-id", "1", "--out", OUT.format(tmp=tmp_path)]
    args = args + FAST + extra                 # later flags win: a case's --out / --model / ... replaces the default
    rc = cli.main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("alter-eval: error: ")]
    assert rc == code and len(lines) == 1 and needle in lines[0], (rc, err)
    assert "Traceback" not in err
    assert not loads or code == 1 and "cannot load" in needle, f"model weights loaded before the error: {loads}"
    assert not os.path.exists(OUT.format(tmp=tmp_path))
    if case[0] == "out-symlink":
        assert (tmp_path / "elsewhere.json").read_text() == "{}"
    assert _digest(d) == before, "an input was changed"


def test_answers_truncated_to_fit_are_reported(setup, tmp_path, capsys):
    d, _ = setup
    rows = _rows(d)
    rows[0]["answer"] = " ".join(["word"] * 400)        # longer than the model's 256 positions
    data = _data_with(d, tmp_path, "answer", rows[2]["answer"])
    _jsonl(tmp_path / "data" / "forget10_perturbed.json", rows)
    rc = cli.main(["--model", str(d / "model"), "--data", data, "--task-id", "1", "--out", str(tmp_path / "e.json"),
                   "--max-new-tokens", "250"] + FAST[2:])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "alter-eval: warning: 1 of " in err and "longer than the model's 256 positions; truncated to fit" in err
    assert "answers were generated with fewer than max_new_tokens=250" in err


def test_table_never_claims_no_reference_was_given():
    split = {"n": 1, "probability": 0.5, "rouge": 0.5, "truth_ratio": 0.5}
    res = {"forget_quality": None, "model_utility": 0.5, "truth_ratio_definition": "geometric", "max_new_tokens": 6,
           **{s: dict(split) for s in cli.SPLITS}}
    assert "n/a (no --retain-model / --reference)" in cli.format_table({**res, "meta": {"model": "m"}})
    table = cli.format_table({**res, "meta": {"model": "m", "reference": "/r.json", "reference_n": 6}})
    assert "n/a (not computable from the truth ratios)" in table and "no --retain-model" not in table
