"""Knowledge injection: a tiny Llama trained from scratch on the corpus ("finetuned") and on the
retain data only ("retain"), cached in a user cache directory.

The two models share one recipe (config, optimiser, epochs, seed); only the data differ: the
retain model never sees the forget authors (neither their QAs nor their passages). Both learn
the general-knowledge QAs (real authors, world facts) as their "pretraining" knowledge.

Cache: ``$ALTER_CACHE`` if set, else ``$XDG_CACHE_HOME/alter_kernels`` or
``~/.cache/alter_kernels``; one directory per benchmark, keyed by a hash of the corpus content,
the tokenizer settings, the model config, the recipe and the forget split. Every artefact is
written to a temporary directory and renamed into place, so an interrupted build leaves nothing
half-written, and two concurrent builds cannot corrupt each other.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, replace

from ..common.fsio import publish_dir, write_json
from .corpus import CorpusConfig, build_corpus, training_texts, write_corpus
from .tokenizer import corpus_texts, load_tokenizer, train_tokenizer

RECIPE_VERSION = 1
RETRAIN_SEED_OFFSET = 1     # build_retrain: the second retain model's training seed is recipe.seed + this


@dataclass(frozen=True)
class ModelConfig:
    hidden_size: int = 96
    intermediate_size: int = 192
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_position_embeddings: int = 256
    tie_word_embeddings: bool = True


@dataclass(frozen=True)
class Recipe:
    epochs: int = 30
    batch_size: int = 16
    lr: float = 5e-3
    weight_decay: float = 0.0
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.1
    seed: int = 0
    passages: bool = True        # also learn the prose biographies (full-text loss)


@dataclass(frozen=True)
class BenchmarkConfig:
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    recipe: Recipe = field(default_factory=Recipe)
    vocab_size: int = 2048
    forget_split: str = "forget10"

    def key(self) -> str:
        files = build_corpus(self.corpus)
        blob = json.dumps({"corpus": files["manifest"]["hash"], "corpus_cfg": self.corpus.to_dict(),
                           "model": asdict(self.model), "recipe": asdict(self.recipe),
                           "vocab": self.vocab_size, "split": self.forget_split,
                           "version": RECIPE_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Measured on the shared 2-core dev machine (see docs/benchmark.md): "default" builds both models
# in about 3 minutes, "quick" in about 1.5; both pass the two checks (finetuned forget ROUGE-L
# >= 0.8, finetuned forget quality < 0.01). "quick" keeps the 40 authors (forget10 = 40 rows: the
# KS test has too little power with fewer) and shrinks the model.
PRESETS = {
    "default": BenchmarkConfig(),
    "quick": BenchmarkConfig(model=ModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2)),
}


def cache_root() -> str:
    if os.environ.get("ALTER_CACHE"):
        return os.path.abspath(os.path.expanduser(os.environ["ALTER_CACHE"]))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "alter_kernels")


@dataclass
class Benchmark:
    """Paths of one built benchmark. Load the models with :meth:`load_model`."""
    root: str
    config: BenchmarkConfig
    data_dir: str
    tokenizer_dir: str
    finetuned_dir: str
    retain_dir: str
    info: dict

    def path(self, name: str) -> str:
        return os.path.join(self.data_dir, f"{name}.json")

    def tokenizer(self):
        return load_tokenizer(self.tokenizer_dir)

    @property
    def retrain_dir(self) -> str:
        """Where :func:`build_retrain` caches the second retain model."""
        return os.path.join(self.root, "retrain")

    def load_model(self, which: str):
        """"finetuned", "retain" or "retrain" (the second retain model, see :func:`build_retrain`)."""
        from transformers import LlamaForCausalLM
        dirs = {"finetuned": self.finetuned_dir, "retain": self.retain_dir, "retrain": self.retrain_dir}
        if which not in dirs:
            raise ValueError(f"Benchmark.load_model: which must be one of {sorted(dirs)}, got {which!r}")
        d = dirs[which]
        if not os.path.isfile(os.path.join(d, "config.json")):
            raise FileNotFoundError(f"Benchmark.load_model: no {which} model at {d}"
                                    + (": build it with alter_kernels.synthetic.inject.build_retrain(bench)"
                                       if which == "retrain" else ""))
        m = LlamaForCausalLM.from_pretrained(d)
        m.eval()
        return m

    @property
    def retain_split(self) -> str:
        pct = int(self.config.forget_split[len("forget"):])
        return f"retain{100 - pct:02d}"


def _log(progress, msg):
    if progress:
        print(msg, flush=True)


def _examples(tokenizer, texts: dict, fmt) -> list[tuple[list[int], list[int]]]:
    ex = [fmt.encode(tokenizer, r["question"], r["answer"]) for r in texts["qa"]]
    for t in texts["passages"]:
        ids = list(tokenizer(t).input_ids) + [tokenizer.eos_token_id]
        ex.append((ids, list(ids)))
    return ex


def _length_batches(data, batch_size: int, rng: random.Random):
    """Shuffled batches of similar lengths (QAs with QAs, passages with passages): little padding."""
    order = list(range(len(data)))
    rng.shuffle(order)
    order.sort(key=lambda i: len(data[i][0]) // 16)          # stable: shuffled within a length band
    batches = [order[b:b + batch_size] for b in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    for idx in batches:
        yield [data[i] for i in idx]


def train_lm(tokenizer, texts: dict, model_cfg: ModelConfig, recipe: Recipe, progress=True, tag=""):
    """Train a LlamaForCausalLM from scratch on ``texts`` (see corpus.training_texts)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ..common.text import IGNORE_INDEX
    from ..eval.format import QAFormat, pad_batch

    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      **asdict(model_cfg))
    model = LlamaForCausalLM(cfg)
    fmt = QAFormat()
    data = _examples(tokenizer, texts if recipe.passages else {"qa": texts["qa"], "passages": []}, fmt)
    steps_per_epoch = math.ceil(len(data) / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    warm = max(1, int(recipe.warmup_frac * total))
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay,
                            betas=(0.9, 0.98))

    def lr_at(s):
        if s < warm:
            return recipe.lr * (s + 1) / warm
        t = (s - warm) / max(1, total - warm)
        return recipe.lr * (recipe.min_lr_frac + (1 - recipe.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))

    model.train()
    step, t0 = 0, time.perf_counter()
    for ep in range(recipe.epochs):
        tot, n = 0.0, 0
        for batch in _length_batches(data, recipe.batch_size, rng):
            ids, mask = pad_batch([x[0] for x in batch], tokenizer.pad_token_id)
            labels, _ = pad_batch([x[1] for x in batch], tokenizer.pad_token_id, fill=IGNORE_INDEX)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            tot += out.loss.item()
            n += 1
            step += 1
        if progress and (ep % 5 == 4 or ep == recipe.epochs - 1):
            _log(progress, f"  [{tag}] epoch {ep + 1}/{recipe.epochs} loss {tot / n:.4f} "
                           f"({time.perf_counter() - t0:.0f}s)")
    model.eval()
    return model


def build_benchmark(config: BenchmarkConfig | str = "default", cache_dir: str | None = None,
                    progress: bool = True, rebuild: bool = False) -> Benchmark:
    """Corpus files, tokenizer, finetuned and retain models: loaded from the cache, or built there."""
    import torch

    cfg = PRESETS[config] if isinstance(config, str) else config
    root = os.path.join(cache_dir or cache_root(), f"bench-{cfg.key()}")
    if rebuild and os.path.isdir(root):
        shutil.rmtree(root)
    os.makedirs(root, exist_ok=True)
    data_dir, tok_dir = os.path.join(root, "data"), os.path.join(root, "tokenizer")
    ft_dir, rt_dir = os.path.join(root, "finetuned"), os.path.join(root, "retain")
    info_path = os.path.join(root, "build_info.json")
    info = json.load(open(info_path)) if os.path.exists(info_path) else {}

    files = build_corpus(cfg.corpus)
    if not os.path.isfile(os.path.join(data_dir, "manifest.json")):
        publish_dir(data_dir, lambda d: write_corpus(d, cfg.corpus))
    if not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
        publish_dir(tok_dir, lambda d: train_tokenizer(corpus_texts(files), d, cfg.vocab_size))
    tok = load_tokenizer(tok_dir)
    forget = files["manifest"]["splits"][cfg.forget_split]
    for name, d, exclude in (("finetuned", ft_dir, ()), ("retain", rt_dir, forget)):
        if os.path.isfile(os.path.join(d, "config.json")):
            continue
        _log(progress, f"building the {name} model (cache: {d})")
        t0 = time.perf_counter()
        nthreads = torch.get_num_threads()
        model = train_lm(tok, training_texts(files, exclude), cfg.model, cfg.recipe, progress, name)
        torch.set_num_threads(nthreads)
        publish_dir(d, lambda p, m=model: (m.save_pretrained(p), tok.save_pretrained(p)))
        info[f"{name}_train_seconds"] = round(time.perf_counter() - t0, 2)
        info[f"{name}_parameters"] = sum(p.numel() for p in model.parameters())
    info.setdefault("key", cfg.key())
    info["config"] = {"corpus": cfg.corpus.to_dict(), "model": asdict(cfg.model),
                      "recipe": asdict(cfg.recipe), "vocab_size": cfg.vocab_size,
                      "forget_split": cfg.forget_split}
    write_json(info_path, info)
    return Benchmark(root=root, config=cfg, data_dir=data_dir, tokenizer_dir=tok_dir,
                     finetuned_dir=ft_dir, retain_dir=rt_dir, info=info)


def build_retrain(bench: Benchmark, progress: bool = True):
    """The gold standard of unlearning on this benchmark: a second retain model, trained like the
    first (same retain data, config and recipe) but from training seed ``recipe.seed +
    RETRAIN_SEED_OFFSET``, so it differs from the benchmark's retain model only by the randomness
    of training. Exact retraining is what every unlearning method approximates; scored against the
    benchmark's retain model, this model shows how high forget quality, utility and fluency get
    when a model truly never saw the forget authors (bench/sweep.py --stage retrain). Cached in
    ``bench.retrain_dir`` (published whole, like the other models); returns it loaded."""
    import torch

    d = bench.retrain_dir
    if not os.path.isfile(os.path.join(d, "config.json")):
        cfg = bench.config
        files = build_corpus(cfg.corpus)
        tok = bench.tokenizer()
        forget = files["manifest"]["splits"][cfg.forget_split]
        _log(progress, f"building the retrain model (cache: {d})")
        t0 = time.perf_counter()
        nthreads = torch.get_num_threads()
        recipe = replace(cfg.recipe, seed=cfg.recipe.seed + RETRAIN_SEED_OFFSET)
        model = train_lm(tok, training_texts(files, forget), cfg.model, recipe, progress, "retrain")
        torch.set_num_threads(nthreads)
        publish_dir(d, lambda p, m=model: (m.save_pretrained(p), tok.save_pretrained(p)))
        info_path = os.path.join(bench.root, "build_info.json")
        info = json.load(open(info_path)) if os.path.exists(info_path) else {}
        info["retrain_train_seconds"] = round(time.perf_counter() - t0, 2)
        info["retrain_recipe_seed"] = recipe.seed
        write_json(info_path, info)
        bench.info.update(info)
    return bench.load_model("retrain")


def with_overrides(cfg: BenchmarkConfig, **kw) -> BenchmarkConfig:
    """Copy of ``cfg`` with fields of its parts replaced, e.g. epochs=30, hidden_size=64."""
    parts = {"corpus": cfg.corpus, "model": cfg.model, "recipe": cfg.recipe}
    top = {}
    for k, v in kw.items():
        for name, part in parts.items():
            if k in part.__dataclass_fields__:
                parts[name] = replace(part, **{k: v})
                break
        else:
            top[k] = v
    return replace(cfg, **parts, **top)
