#!/usr/bin/env python
"""Benchmarks on a real pretrained model (issue 21, item 6): SmolLM2-135M-Instruct on the CPU.

    python bench/real_model.py [--parts gemm,train,decode,unlearn] [--threads 2] [--reps 5] [--update]
    # -> bench/results/real_model.{json,md}
    # --update: rerun only --parts and keep the other parts of the existing results file, each with
    # the machine line and load averages of the run that measured it (its "carried" field)

Side by side in one process (round robin: every variant once per repetition, medians; ratios are
the median of the per-repetition paired ratios), on the model's real shapes:

- gemm: the CPU's achievable fp32 GEMM FLOP/s, torch.matmul at the model's linear shapes (q, k, v,
  o, gate, up, down x 30 layers + the tied head), M = 512 (a training batch), 1 and 8 (decoding):
  the denominators of the FLOP-estimate ratios below.
- train: one unlearning step of the engine for ALTER (``ak.unlearn``'s own step: patched model,
  routing inputs with the cached base entropies, the masked backward, fused losses, AdamW on the
  lr_A / lr_B / lr_router groups) against PEFT LoRA (same rank 8, alpha 16 and targets; HF loss,
  AdamW) on the same batch (2 forget + 2 retain TOFU rows, 128 tokens each).
- decode: greedy tokens/s of ``ak.generate`` with inference_entropy="base" and of HF ``generate``
  on the patched model, against the base model's own decoding (HF ``generate`` and ``ak.generate``
  on the unpatched model, the faster a user would pick), at batch 1 and 8.
- unlearn: wall time of ``ak.unlearn`` for every method of the engine, same data, batch and steps.

FLOP estimate: tokens/s x 6 x params (training; decoding 2 x params) over the measured GEMM FLOP/s
(a frozen-base LoRA step needs ~4 x params per token, the 6 x params convention is kept).
Memory: peak extra bytes of one call from torch.profiler (bench/common.peak_memory) and the peak
RSS above the RSS before the call (sampled every 20 ms).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore", category=RuntimeWarning, module="alter_kernels")

import alter_kernels as ak  # noqa: E402
from bench.common import RssPeak, machine, md_table, peak_memory, round_robin, rss_peak, write_results  # noqa: E402

MODEL_ALIAS = "smollm2-135m-instruct"
TOFU = "/work/shared/tofu"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
METHOD_ORDER = ("alter", "asymlora", "lora", "ga", "graddiff", "kl", "npo", "npo_retain")


# ----------------------------------------------------------------------------------- set-up
def load_model():
    """(model fp32 eval, tokenizer) of SmolLM2-135M-Instruct by its alias (``ak.load_pretrained``:
    the packaged GGUF, converted once into the cache)."""
    model, tok = ak.load_pretrained(MODEL_ALIAS, dtype=torch.float32, progress=False)
    return model.eval(), tok


def tofu_rows(name, n, per_row=3):
    """n QA rows of the TOFU file ``name``: each answer joins ``per_row`` consecutive answers (so
    that a row fills 128 tokens)."""
    with open(os.path.join(TOFU, name + ".json")) as f:
        src = [json.loads(line) for line in f if line.strip()]
    return [{"question": src[i * per_row]["question"],
             "answer": " ".join(src[i * per_row + j]["answer"] for j in range(per_row))} for i in range(n)]


def load_avg():
    return list(os.getloadavg())


def paired(times, k, ref):
    """Median over repetitions of ref time / k time (> 1: k is faster)."""
    return statistics.median(a / b for a, b in zip(times[ref], times[k]))


# ----------------------------------------------------------------------------------- GEMM FLOP/s
def linear_shapes(model):
    """[(d_in, d_out, count)] of the model's linears and its head."""
    counts = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            key = (m.in_features, m.out_features)
            counts[key] = counts.get(key, 0) + 1
    return [(i, o, c) for (i, o), c in sorted(counts.items())]


def gemm_flops(model, ms=(512, 1, 8), reps=5):
    """fp32 FLOP/s of torch.matmul over the model's linear shapes at M rows: one 'forward' worth of
    GEMMs per repetition, median of repetitions."""
    out = {}
    shapes = linear_shapes(model)
    ws = {(i, o): torch.randn(o, i) for i, o, _ in shapes}     # nn.Linear's layout, used as x @ W^T
    for m in ms:
        xs = {i: torch.randn(m, i) for i, _, _ in shapes}
        flops = sum(2 * m * i * o * c for i, o, c in shapes)

        def fwd():
            for i, o, c in shapes:
                for _ in range(c):
                    torch.matmul(xs[i], ws[(i, o)].t())
        t = round_robin({"f": fwd}, reps, warmup=1)["f"]
        out[m] = {"M": m, "flop": flops, "seconds": statistics.median(t), "GFLOP_s": flops / statistics.median(t) / 1e9}
    return out


# ----------------------------------------------------------------------------------- train step
def engine_run(model, method, tok, forget, retain, batch_size, steps, **hp):
    """The engine's run context and train state of ``ak.unlearn(method=...)`` (its set-up, without
    the loop): ``step(i)`` then runs the engine's own training step i."""
    from alter_kernels.unlearn import loop, setup, trainer
    run = trainer._new_run(model, method, tok, dict(hp), epochs=1, max_steps=steps, batch_size=batch_size, seed=0,
                           device=None, progress=False, out_dir=None, distributed="none")
    setup.prepare_run(run, forget, retain, tok, None)
    if run.spec.adapter:
        setup.install_train_hooks(run)
    st = loop.start_training(run, 1, steps)
    model.train()
    return run, st, (lambda i: loop._train_step(run, st, i, 0, i % st.steps_per_epoch))


def bench_train(model, tok, flops, reps, seq=128):
    """ALTER (the engine's step) vs PEFT LoRA, same batch (2 forget + 2 retain rows x seq tokens)."""
    from peft import LoraConfig, get_peft_model
    forget, retain = tofu_rows("forget01", 8), tofu_rows("retain90", 8)
    alter_model = copy.deepcopy(model)
    run, _, alter_step = engine_run(alter_model, "alter", tok, forget, retain, 2, 1000, max_length=seq,
                                    eval_each_epoch=False, router_eval=False)
    batch = run.data.step_batch(0, 0, 2, 0, run.dev)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=8, lora_alpha=16, target_modules=list(TARGETS),
                                                                lora_dropout=0.0))
    peft_model.train()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    # PEFT on the engine's batch of step 0 (the ALTER steps cycle over the same 4 batches of 4 rows)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}

    def peft_step():
        out = peft_model(**inputs)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    counter = [0]

    def alter():
        rec = alter_step(counter[0] % 4)
        counter[0] += 1
        return rec
    fns = {"peft_lora": peft_step, "alter (engine step)": alter}
    load0 = load_avg()
    times = round_robin(fns, reps)
    load1 = load_avg()
    mem = {k: peak_memory(fn) for k, fn in fns.items()}
    rss = {k: rss_peak(fn) for k, fn in fns.items()}
    ntok = int(batch["attention_mask"].sum())
    n_params = sum(p.numel() for p in model.parameters())
    high = run.data.step_batch(0, 0, 2, 0, run.dev)
    high_share = float(((high["entropy"][:, 1:] > run.cfg.threshold) & (high["labels"][:, 1:] != -100)).sum()
                       / (high["labels"][:, 1:] != -100).sum())
    rows = []
    for k, v in times.items():
        med = statistics.median(v)
        rows.append({"part": "train", "variant": k, "batch": f"{batch['input_ids'].shape[0]}x{batch['input_ids'].shape[1]}",
                     "step_s": med, "step_min_s": min(v), "x_peft_time": paired(times, "peft_lora", k),
                     "tokens_per_s": ntok / med, "flop_ratio_6N": ntok / med * 6 * n_params / (flops[512]["GFLOP_s"] * 1e9),
                     "peak_MiB_profiler": mem[k] / 2 ** 20, "peak_rss_MiB": rss[k] / 2 ** 20, "raw_s": v})
    del alter_model, peft_model
    return rows, {"load_avg_before": load0, "load_avg_after": load1, "tokens": ntok, "threshold": run.cfg.threshold,
                  "high_entropy_share_answer_tokens": high_share, "num_forget_experts": run.cfg.num_forget_experts,
                  "router_input": run.cfg.router_input}


# ----------------------------------------------------------------------------------- decoding
def decode_models(model, seed=0):
    """(base, patched copy): random B experts and router, so that routing and adapters run."""
    gated = copy.deepcopy(model)
    ak.patch(gated, ak.AlterConfig(num_forget_experts=2, init_seed=seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in ak.adapter_state_dict(gated).items():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            elif name.endswith("alter_router.weight"):
                p.copy_(torch.randn(p.shape, generator=g))
    return model.eval(), gated.eval()


def decode_variants(base, gated, pad_id):
    def ak_gen(m, **kw):
        def run(ids, new):
            out = ak.generate(m, ids, new, return_dict=True, pad_token_id=pad_id, **kw)
            return out.decode_s
        return run

    def hf(m):
        def run(ids, new):
            with torch.inference_mode():
                m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, pad_token_id=pad_id, eos_token_id=None)
            return None
        return run
    return {"hf_base": hf(base), "ak_base": ak_gen(base), "alter_base": ak_gen(gated, entropy="base"),
            "hf_alter": hf(gated)}


def prompts(tok, bsz, length):
    """bsz prompts of ``length`` tokens: TOFU questions + answers, tokenised and cut."""
    rows = tofu_rows("retain90", bsz, per_row=2)
    ids = [tok(r["question"] + " " + r["answer"])["input_ids"][:length] for r in rows]
    return torch.tensor(ids)


def bench_decode(model, tok, flops, reps, batches=(1, 8), prompt=64, new=64):
    """Greedy decode: total time of each variant, and (ak loops) the decode-loop time; HF's decode
    time = its time for ``new`` tokens - its time for 1 token (the prefill and the first token)."""
    base, gated = decode_models(model)
    fns = decode_variants(base, gated, tok.pad_token_id if tok.pad_token_id is not None else 2)
    n_params = sum(p.numel() for p in model.parameters())
    rows, loads = [], {}
    for bsz in batches:
        ids = prompts(tok, bsz, prompt)
        for fn in fns.values():                             # warm-up
            fn(ids, 4)
        total = {k: [] for k in fns}
        dec = {k: [] for k in fns}
        loads[bsz] = [load_avg()]
        for _ in range(reps):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                d = fn(ids, new)
                t = time.perf_counter() - t0
                if d is None:                               # HF: decode = total(new) - total(1)
                    t1 = time.perf_counter()
                    fn(ids, 1)
                    d = t - (time.perf_counter() - t1)
                total[k].append(t)
                dec[k].append(d)
            print(f"  batch {bsz}:", {k: round(v[-1], 2) for k, v in dec.items()}, load_avg(), flush=True)
        loads[bsz].append(load_avg())
        best_base = "ak_base" if statistics.median(dec["ak_base"]) < statistics.median(dec["hf_base"]) else "hf_base"
        mem = {k: peak_memory(lambda: fn(ids, 8)) for k, fn in fns.items()}
        for k in fns:
            tok_s = bsz * (new - 1) / statistics.median(dec[k])
            rows.append({"part": "decode", "variant": k, "batch": bsz, "prompt": prompt, "new": new,
                         "decode_tok_s": tok_s, "decode_x_best_base": paired(dec, k, best_base),
                         "decode_x_hf_base": paired(dec, k, "hf_base"), "decode_x_ak_base": paired(dec, k, "ak_base"),
                         "e2e_tok_s": bsz * new / statistics.median(total[k]),
                         "e2e_x_best_base": paired(total, k, best_base),
                         "flop_ratio_2N": tok_s * 2 * n_params / (flops[bsz]["GFLOP_s"] * 1e9),
                         "peak_MiB_profiler": mem[k] / 2 ** 20, "best_base": best_base,
                         "raw_decode_s": dec[k], "raw_total_s": total[k]})
    del gated
    return rows, {"load_avg": loads}


DECODE_COLS = ["variant", "batch", "decode_tok_s", "decode_x_best_base", "decode_x_hf_base", "decode_x_ak_base",
               "e2e_tok_s", "e2e_x_best_base", "flop_ratio_2N", "peak_MiB_profiler"]


# ----------------------------------------------------------------------------------- unlearning
def bench_unlearn(model, tok, reps, steps, methods=METHOD_ORDER, seq=128, n_rows=8):
    """Wall time of ``ak.unlearn`` per method (set-up + ``steps`` steps; each on a fresh copy of
    the model), the median step time from its history, and the peak extra RSS of the call."""
    forget, retain = tofu_rows("forget01", n_rows), tofu_rows("retain90", n_rows)
    times = {m: [] for m in methods}
    step_s = {m: [] for m in methods}
    rss = {m: 0 for m in methods}
    loads = [load_avg()]
    for _ in range(reps):
        for m in methods:
            work = copy.deepcopy(model)
            with RssPeak() as r:
                res = ak.unlearn(work, forget, retain, method=m, tokenizer=tok, max_steps=steps, batch_size=2,
                                 progress=False, max_length=seq, eval_each_epoch=False, router_eval=False)
            rss[m] = max(rss[m], r.extra)
            times[m].append(res.seconds)
            step_s[m] += [h["seconds"] for h in res.history]
            ntok = statistics.median(h["tokens"] for h in res.history)
            print(f"  {m}: wall {res.seconds:.1f} s, steps {[round(h['seconds'], 1) for h in res.history]}, "
                  f"peak RSS +{r.extra / 2 ** 20:.0f} MiB", load_avg(), flush=True)
            del work, res
        loads.append(load_avg())
    rows = []
    for m in methods:
        rows.append({"part": "unlearn", "variant": m, "steps": steps, "wall_s": statistics.median(times[m]),
                     "step_s": statistics.median(step_s[m]), "setup_s": statistics.median(times[m]) -
                     steps * statistics.median(step_s[m]), "x_alter_step": statistics.median(step_s[m]) /
                     statistics.median(step_s["alter"]) if "alter" in step_s else float("nan"),
                     "tokens_per_s": ntok / statistics.median(step_s[m]), "peak_rss_MiB": rss[m] / 2 ** 20,
                     "raw_wall_s": times[m]})
    return rows, {"load_avg": loads, "tokens_per_step": ntok}


# ----------------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="gemm,train,decode,unlearn")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--unlearn-reps", type=int, default=1)
    ap.add_argument("--unlearn-steps", type=int, default=3)
    ap.add_argument("--unlearn-rows", type=int, default=8, help="forget rows (and as many retain rows)")
    ap.add_argument("--methods", default=",".join(METHOD_ORDER))
    ap.add_argument("--new", type=int, default=64, help="decoded tokens per call")
    ap.add_argument("--update", action="store_true",
                    help="keep the parts not in --parts from the existing --out JSON (with their own run's details)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "real_model"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = args.parts.split(",")
    t0 = time.perf_counter()
    model, tok = load_model()
    n_params = sum(p.numel() for p in model.parameters())
    res = {"machine": machine(), "args": vars(args), "model": MODEL_ALIAS, "params": n_params,
           "load_s": time.perf_counter() - t0, "load_avg_start": load_avg(), "backends": ak.backends(), "rows": []}
    if args.update:
        carry_over(res, args.out + ".json", parts)
    print(f"loaded {MODEL_ALIAS} ({n_params / 1e6:.1f} M params) in {res['load_s']:.0f} s", flush=True)
    flops = gemm_flops(model, reps=args.reps)
    res["gemm"] = list(flops.values())
    print(md_table(res["gemm"], ["M", "flop", "seconds", "GFLOP_s"]), flush=True)
    for part, fn in (("train", lambda: bench_train(model, tok, flops, args.reps)),
                     ("decode", lambda: bench_decode(model, tok, flops, args.reps, new=args.new)),
                     ("unlearn", lambda: bench_unlearn(model, tok, args.unlearn_reps, args.unlearn_steps,
                                                       methods=args.methods.split(","), n_rows=args.unlearn_rows))):
        if part in parts:
            rows, res[part] = fn()
            res["rows"] += rows
            print(md_table(rows, COLUMNS[part]), flush=True)
            res["load_avg_end"] = load_avg()
            write_results(args.out, res, report(res))      # after every part: a partial run keeps what it measured
    print("wrote", args.out + ".json", args.out + ".md")


def carry_over(res, path, parts):
    """--update: copy the parts not rerun (their rows and details) from the results file at ``path``,
    recording per part the machine and load averages of the run that measured it."""
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"real_model.py: --update needs a readable results file {path} ({exc})")
    res["carried"] = dict(old.get("carried", {}))
    for part in ("train", "decode", "unlearn"):
        if part in parts or part not in old:
            res["carried"].pop(part, None)
            continue
        res[part] = old[part]
        res["rows"] += [r for r in old["rows"] if r["part"] == part]
        res["carried"].setdefault(part, {"machine": old["machine"], "load_avg_start": old.get("load_avg_start"),
                                         "load_avg_end": old.get("load_avg_end"), "args": old.get("args")})


TRAIN_COLS = ["variant", "batch", "step_s", "step_min_s", "x_peft_time", "tokens_per_s", "flop_ratio_6N",
              "peak_MiB_profiler", "peak_rss_MiB"]
UNLEARN_COLS = ["variant", "steps", "wall_s", "step_s", "setup_s", "x_alter_step", "tokens_per_s", "peak_rss_MiB"]
COLUMNS = {"train": TRAIN_COLS, "decode": DECODE_COLS, "unlearn": UNLEARN_COLS}


def report(res) -> str:
    m = res["machine"]
    rows = res["rows"]
    md = [f"# {res['model']} on the CPU (bench/real_model.py)\n",
          f"Machine: {m.get('cpu', '')}, 2-core shared VM (other agents' jobs running), torch {m['torch']}, "
          f"{m['cpu_threads']} torch threads, {m['date']}. {res['params'] / 1e6:.1f} M parameters, fp32. "
          f"Load averages (1, 5, 15 min) at start {res['load_avg_start']}, at end {res.get('load_avg_end')}.\n",
          "## fp32 GEMM FLOP/s at the model's shapes (torch.matmul)\n", md_table(res["gemm"], ["M", "flop", "seconds", "GFLOP_s"])]
    for part, c in res.get("carried", {}).items():
        md.append(f"Part '{part}' carried over (--update) from the run of {c['machine']['date']} ({c['machine']['cpu_threads']} "
                  f"torch threads; load averages at its start {c['load_avg_start']}, at its end {c['load_avg_end']}); its "
                  "FLOP ratios use that run's GEMM figures.\n")
    if "train" in res:
        md += ["## Training step: ALTER (engine) vs PEFT LoRA, same batch\n",
               f"{json.dumps({k: v for k, v in res['train'].items()})}\n",
               md_table([r for r in rows if r["part"] == "train"], TRAIN_COLS)]
    if "decode" in res:
        md += ["## Greedy decoding (prompt 64 tokens)\n", f"load averages: {res['decode']['load_avg']}\n",
               md_table([r for r in rows if r["part"] == "decode"], DECODE_COLS)]
    if "unlearn" in res:
        md += [f"## ak.unlearn wall time per method ({res['args']['unlearn_steps']} steps, batch 2 forget + 2 retain "
               f"rows of <= 128 tokens)\n", f"load averages: {res['unlearn']['load_avg']}\n",
               md_table([r for r in rows if r["part"] == "unlearn"], UNLEARN_COLS)]
    return "\n".join(md)


if __name__ == "__main__":
    main()
