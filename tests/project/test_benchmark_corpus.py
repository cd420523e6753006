"""Corpus generator, tokenizer and cache plumbing of the embedded benchmark (no model training
here beyond one tiny epoch: the demo and docs/benchmark.md cover the real build)."""
import json
import os

import pytest

from alter_kernels.eval import load_rows
from alter_kernels.synthetic.corpus import (ATTRIBUTES, CorpusConfig, build_corpus, corpus_hash, training_texts,
                                            write_corpus)


@pytest.fixture(scope="module")
def files():
    return build_corpus(CorpusConfig())


def test_deterministic_and_seeded(files):
    again = build_corpus(CorpusConfig())
    assert json.dumps(again, sort_keys=True) == json.dumps(files, sort_keys=True)
    other = build_corpus(CorpusConfig(seed=1))
    assert other["manifest"]["hash"] != files["manifest"]["hash"]
    assert files["manifest"]["hash"] == corpus_hash(files)


def test_tofu_row_format(files):
    rows = files["full"]
    assert len(rows) == 40 * len(ATTRIBUTES) and len(ATTRIBUTES) >= 10
    for r in rows:
        for k in ("question", "answer", "paraphrased_answer", "paraphrased_question", "perturbed_answer"):
            assert isinstance(r[k], (str, list)) and r[k]
        assert len(r["perturbed_answer"]) == 5
        assert r["paraphrased_answer"] not in r["perturbed_answer"]
        assert len(set(r["perturbed_answer"])) == 5
        assert r["answer"] != r["paraphrased_answer"] and r["question"] != r["paraphrased_question"]
        assert r["author"] in r["question"]
    # every author has 10+ QAs; questions are unique
    assert len({r["question"] for r in rows}) == len(rows)


def test_perturbed_answers_change_only_the_fact(files):
    r = next(x for x in files["full"] if x["attribute"] == "birthplace")
    para = r["paraphrased_answer"]
    prefix = para[:para.index(" from ") + 6]              # "<name> is an author from "
    cities = {p[len(prefix):] for p in r["perturbed_answer"]}
    assert all(p.startswith(prefix) for p in r["perturbed_answer"])
    assert len(cities) == 5 and para[len(prefix):] not in cities


def test_forget_splits_nested_and_disjoint(files):
    sp = files["manifest"]["splits"]
    f1, f5, f10 = (set(sp[k]) for k in ("forget01", "forget05", "forget10"))
    assert f1 <= f5 <= f10
    assert (len(f1), len(f5), len(f10)) == (1, 2, 4)       # 1%, 5%, 10% of 40 (at least one)
    for pct in ("01", "05", "10"):
        forget, retain = files[f"forget{pct}"], files[f"retain{100 - int(pct):02d}"]
        assert len(forget) + len(retain) == len(files["full"])
        assert not {r["author"] for r in forget} & {r["author"] for r in retain}
    # sub-domains: forget10 spans more than one genre, every row says which
    assert len({r["domain"] for r in files["forget10"]}) >= 2


def test_general_knowledge_mcq_passages(files):
    for name in ("real_authors", "world_facts"):
        rows = files[name]
        assert len(rows) >= 20
        for r in rows:
            assert len(r["perturbed_answer"]) >= 3 and r["answer"] not in r["perturbed_answer"]
    for it in files["mcq"]:
        assert len(it["choices"]) == 4 and len(set(it["choices"])) == 4
        assert 0 <= it["answer_index"] < 4 and it["split"] in ("forget10", "retain90")
    assert {it["split"] for it in files["mcq"]} == {"forget10", "retain90"}
    assert len(files["passages"]) == 40
    forget_authors = set(files["manifest"]["splits"]["forget10"])
    for p in files["passages"]:
        assert (p["split"] == "forget10") == (p["author"] in forget_authors)
        assert len(p["text"].split()) > 40


def test_training_texts_exclude_forget(files):
    forget = files["manifest"]["splits"]["forget10"]
    full = training_texts(files)
    ret = training_texts(files, forget)
    assert len(full["qa"]) - len(ret["qa"]) == len(files["forget10"])
    assert not any(a in t for t in ret["passages"] for a in forget)
    assert not any(r.get("author") in forget for r in ret["qa"])


def test_write_corpus_json_and_jsonl(tmp_path):
    cfg = CorpusConfig(num_authors=12, forget_fractions=(0.1, 0.2))
    man = write_corpus(str(tmp_path / "j"), cfg)
    assert man["sizes"]["forget10"] == 10 and man["sizes"]["forget20"] == 20
    write_corpus(str(tmp_path / "l"), cfg, jsonl=True)
    a = load_rows(tmp_path / "j" / "forget20.json")
    b = load_rows(tmp_path / "l" / "forget20.jsonl")
    assert a == b and len(a) == 20
    assert not [f for f in os.listdir(tmp_path / "j") if f.startswith(".tmp")]


def test_bad_config():
    with pytest.raises(ValueError):
        build_corpus(CorpusConfig(num_authors=10, forget_fractions=(1.0,)))
    with pytest.raises(ValueError):
        build_corpus(CorpusConfig(num_authors=100000))


def test_tokenizer_hf_format(tmp_path, files):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from alter_kernels.synthetic.tokenizer import corpus_texts, train_tokenizer
    tok = train_tokenizer(corpus_texts(files), str(tmp_path / "tok"), vocab_size=2048)
    assert os.path.isfile(tmp_path / "tok" / "tokenizer.json")
    again = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert isinstance(again, PreTrainedTokenizerFast)
    text = files["full"][0]["answer"]
    ids = again(text).input_ids
    assert ids[0] == again.bos_token_id and again.decode(ids, skip_special_tokens=True) == text
    assert again.pad_token_id is not None and again.eos_token_id is not None
    assert again(text).input_ids == tok(text).input_ids
    # deterministic: same texts, same vocabulary
    tok2 = train_tokenizer(corpus_texts(files), str(tmp_path / "tok2"), vocab_size=2048)
    assert tok2.get_vocab() == tok.get_vocab()
    # author names are short in tokens (the corpus is what the BPE learned)
    name = files["full"][0]["author"]
    assert len(tok(" " + name, add_special_tokens=False).input_ids) <= 4


def test_cache_root_env(monkeypatch, tmp_path):
    from alter_kernels.synthetic.inject import cache_root
    monkeypatch.setenv("ALTER_CACHE", str(tmp_path / "c"))
    assert cache_root() == str(tmp_path / "c")
    monkeypatch.delenv("ALTER_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == str(tmp_path / "x" / "alter_kernels")


def test_build_benchmark_tiny_and_cached(tmp_path):
    """A whole build with a toy config (one epoch): files, tokenizer, both models, then a cache hit."""
    from alter_kernels.synthetic.inject import (BenchmarkConfig, ModelConfig, Recipe, build_benchmark,
                                                with_overrides)
    cfg = BenchmarkConfig(corpus=CorpusConfig(num_authors=8, forget_fractions=(0.25,)),
                          model=ModelConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=2),
                          recipe=Recipe(epochs=1, batch_size=32), forget_split="forget25")
    b = build_benchmark(cfg, cache_dir=str(tmp_path), progress=False)
    assert os.path.isfile(os.path.join(b.finetuned_dir, "model.safetensors"))
    assert os.path.isfile(os.path.join(b.retain_dir, "config.json"))
    assert b.retain_split == "retain75" and len(load_rows(b.path("forget25"))) == 20
    m = b.load_model("retain")
    assert m.config.hidden_size == 16 and b.info["retain_parameters"] > 0
    mtime = os.path.getmtime(os.path.join(b.finetuned_dir, "config.json"))
    b2 = build_benchmark(cfg, cache_dir=str(tmp_path), progress=False)
    assert b2.root == b.root and os.path.getmtime(os.path.join(b.finetuned_dir, "config.json")) == mtime
    # another config, another key
    assert with_overrides(cfg, epochs=2).key() != cfg.key()
    assert with_overrides(cfg, hidden_size=32).model.hidden_size == 32
    assert not [f for f in os.listdir(b.root) if f.startswith(".tmp")]


def test_build_retrain_second_seed_cached(tmp_path):
    """The retrain model: the retain model's data and recipe, another training seed; cached."""
    import torch

    from alter_kernels.synthetic.inject import (RETRAIN_SEED_OFFSET, BenchmarkConfig, ModelConfig, Recipe,
                                                build_benchmark, build_retrain)
    cfg = BenchmarkConfig(corpus=CorpusConfig(num_authors=8, forget_fractions=(0.25,)),
                          model=ModelConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=2),
                          recipe=Recipe(epochs=1, batch_size=32), forget_split="forget25")
    b = build_benchmark(cfg, cache_dir=str(tmp_path), progress=False)
    with pytest.raises(FileNotFoundError, match="build_retrain"):
        b.load_model("retrain")
    with pytest.raises(ValueError, match="which must be one of"):
        b.load_model("retained")
    rt = build_retrain(b, progress=False)
    base = b.load_model("retain")
    w, w0 = rt.get_input_embeddings().weight, base.get_input_embeddings().weight
    assert w.shape == w0.shape and not torch.equal(w, w0)          # another training seed, same shapes
    assert b.info["retrain_recipe_seed"] == cfg.recipe.seed + RETRAIN_SEED_OFFSET
    mtime = os.path.getmtime(os.path.join(b.retrain_dir, "config.json"))
    again = build_retrain(b, progress=False)                        # cached: not trained again
    assert os.path.getmtime(os.path.join(b.retrain_dir, "config.json")) == mtime
    assert torch.equal(again.get_input_embeddings().weight, w)
    # the same recipe with the retrain seed gives the same model: only the seed differs
    from alter_kernels.synthetic.corpus import build_corpus, training_texts
    from alter_kernels.synthetic.inject import train_lm
    from dataclasses import replace
    files = build_corpus(cfg.corpus)
    twin = train_lm(b.tokenizer(), training_texts(files, files["manifest"]["splits"]["forget25"]), cfg.model,
                    replace(cfg.recipe, seed=cfg.recipe.seed + RETRAIN_SEED_OFFSET), progress=False)
    assert torch.allclose(twin.get_input_embeddings().weight, w)
    assert not [f for f in os.listdir(b.root) if f.startswith(".tmp")]


# ---------------------------------------------------------------- the demo, with a stand-in engine
class _FakeResult:
    """The fields of UnlearnResult the demo reads; no router (the double trains no adapter)."""

    def __init__(self, model, seconds):
        self.model, self.seconds, self.history, self.metrics = model, seconds, [], {}
        self.router_accuracy, self.threshold, self.threshold_source, self.config = None, None, None, None


def _fake_unlearn(model, forget, retain, method="alter", tokenizer=None, epochs=1, batch_size=4, seed=0,
                  **kw):
    """TEST DOUBLE for ak.unlearn (issue 5): a few steps of plain gradient ascent on the forget
    answers, enough to move the metrics. Not the real engine."""
    import torch

    from alter_kernels.eval import QAFormat, pad_batch
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(epochs):
        pairs = [QAFormat().encode(tokenizer, r["question"], r["answer"]) for r in forget]
        ids, mask = pad_batch([p[0] for p in pairs], tokenizer.pad_token_id)
        labels, _ = pad_batch([p[1] for p in pairs], tokenizer.pad_token_id, fill=-100)
        loss = -model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return _FakeResult(model, 0.5)


@pytest.fixture()
def tiny_preset(monkeypatch):
    from alter_kernels.synthetic import inject
    cfg = inject.BenchmarkConfig(corpus=CorpusConfig(num_authors=8, forget_fractions=(0.25,)),
                                 model=inject.ModelConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                          num_attention_heads=2, num_key_value_heads=2),
                                 recipe=inject.Recipe(epochs=2, batch_size=32), forget_split="forget25")
    monkeypatch.setitem(inject.PRESETS, "quick", cfg)
    return cfg


def test_demo_end_to_end_with_stand_in(tmp_path, monkeypatch, tiny_preset):
    import alter_kernels
    from alter_kernels import demo
    monkeypatch.setattr(alter_kernels, "unlearn", _fake_unlearn, raising=False)
    rc = demo.main(["--quick", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"),
                    "--methods", "alter,ga", "--epochs", "1", "--threads", "1"])
    assert rc == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(res["methods"]) == {"finetuned", "retain", "alter", "ga"}
    for m in res["methods"].values():
        assert set(m) == {"forget_quality", "model_utility", "forget_rouge", "retain_rouge", "seconds",
                          "forget_repetition", "forget_degenerate", "retain_repetition", "retain_degenerate"}
        assert all(isinstance(v, float) for v in m.values())     # degenerate shares: judged against the retain model
    for n in ("finetuned", "retain", "alter", "ga"):                # the fluency results, per split (issue 24)
        fl = res["details"][n]["fluency_forget"]
        assert fl["degenerate_share"] == res["methods"][n]["forget_degenerate"]
        assert fl["reference_repetition"] == res["methods"]["retain"]["forget_repetition"]
    assert set(res["hm_fluency"]) == {"alter", "ga"}
    assert res["methods"]["retain"]["forget_quality"] == 1.0
    assert res["methods"]["alter"]["seconds"] == 0.5
    # scored through each unlearned model's default inference rule, and recorded
    assert set(res["inference_entropy"]) == {"alter", "ga"} and res["inference_entropy"]["ga"] is None
    assert "finetuned_forget_rouge_ok" in res["checks"]
    assert [p for p in os.listdir(tmp_path / "out") if p.startswith("utility_vs_forget_quality.")]


def test_demo_reports_missing_engine(tmp_path, monkeypatch, tiny_preset, capsys):
    import alter_kernels
    from alter_kernels import demo
    monkeypatch.delattr(alter_kernels, "unlearn", raising=False)
    rc = demo.main(["--quick", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"),
                    "--methods", "npo", "--threads", "1"])
    assert rc == 1
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "unlearn is not available" in res["methods"]["npo"]["error"]
    with pytest.raises(SystemExit):
        demo.main(["--methods", "nonsense"])


def test_plot_svg_fallback(tmp_path, monkeypatch):
    import builtins

    from alter_kernels.synthetic.plot import plot_results
    real_import = builtins.__import__

    def no_mpl(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_mpl)
    path = plot_results({"alter": {"forget_quality": 0.3, "model_utility": 0.7},
                         "ga": {"forget_quality": 1e-9, "model_utility": 0.1},
                         "bad": {"forget_quality": float("nan"), "model_utility": 0.5}}, str(tmp_path / "p"))
    assert path.endswith(".svg")
    svg = open(path).read()
    assert "alter" in svg and "ga" in svg and ">bad<" not in svg and "1e-9" in svg


def test_plot_png_with_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    from alter_kernels.synthetic.plot import plot_results
    path = plot_results({"alter": {"forget_quality": 0.3, "model_utility": 0.7},
                         "ga": {"forget_quality": 1e-9, "model_utility": 0.1}}, str(tmp_path / "p"))
    assert path.endswith(".png") and open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
