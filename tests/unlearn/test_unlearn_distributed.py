"""Data-parallel unlearning through the engine (issue 8): ``ak.unlearn(..., distributed=...)`` and
``alter-unlearn`` under torchrun with 2 gloo processes give the single-process adapter.

The in-process tests check the loss normalisation itself: the shards' losses of one batch,
each divided by the global batch's counts, sum to the single-process loss and their gradients
sum to its gradient (world = 2 and 3, the latter with a filler row). The torchrun tests run
python/distributed_unlearn.py under FSDP2, the CLI (DDP, the default under torchrun), and
tests/dist_unlearn_worker.py (sequential requests with frozen experts, the kl baseline, resume)
under DDP and FSDP2, each compared with the same run in one process.

Tolerance: Adam divides by the root of the squared gradient, so the float re-association of a
sharded sum is amplified for parameters whose gradient is almost 0; atol is 0.5% of one step
(lr 1e-2), measured differences are below 1.5e-5.
"""
import copy
import json
import math
import os
import sys

import pytest
import torch
from safetensors.torch import load_file

import alter_kernels as ak

import _launch  # noqa: E402  (tests/_launch.py)
from alter_kernels.unlearn import methods as M
from alter_kernels.unlearn.data import collate, prepare
from alter_kernels.unlearn.distributed import DistContext, resolve_mode
from alter_kernels.unlearn.toy import toy_model, toy_rows, toy_tokenizer
from alter_kernels.unlearn.options import DEFAULTS

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/: the workers and _launch.py
ROOT = os.path.dirname(HERE)
EXAMPLE = os.path.join(ROOT, "python", "distributed_unlearn.py")
# large learning rates: after 3 steps the adapter is far from its start compared with the tolerance
LRS = ["--lr-A", "1e-2", "--lr-B", "1e-2", "--lr-router", "1e-2"]


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


# ------------------------------------------------------------------ in process: the normalisation
class _FakeRank(DistContext):
    """DistContext.shard without a process group."""

    def __init__(self, rank, world):
        self.rank, self.world, self.mode = rank, world, "ddp"


def _batch(tok, n_forget=2, n_retain=2):
    rf, rr = toy_rows(n_forget, seed=1), toy_rows(n_retain, seed=2, offset=5)
    _, f_ex = prepare(rf, tok, "forget")
    _, r_ex = prepare(rr, tok, "retain")
    ids, att, lab = collate(f_ex + r_ex, tok.pad_token_id)
    g = torch.Generator().manual_seed(4)
    ent = torch.rand(ids.shape, generator=g) * 2.4            # high and low tokens around theta 1.2
    ent[:, 0] = math.inf
    return {"input_ids": ids, "attention_mask": att, "labels": lab,
            "is_forget": torch.tensor([True] * n_forget + [False] * n_retain),
            "domain": torch.tensor([1 + i % 2 for i in range(n_forget)] + [0] * n_retain),
            "entropy": ent, "base_sq": torch.rand(ids.shape, generator=g),
            "ref_logp": -10 * torch.rand(n_forget + n_retain, generator=g)}


def _model(tok, method):
    model = toy_model(len(tok), seed=3)
    if method in M.ADAPTER_METHODS:
        ak.patch(model, ak.AlterConfig(rank=4, num_forget_experts=0 if method == "lora" else 2, init_seed=0))
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():   # mid-training state: every term and every expert carries gradient
            for p in ak.adapter_parameters(model)["B"] + ak.adapter_parameters(model)["router"]:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    return model


def _loss(method, model, batch, hp, ref, reduce=None):
    if method in ("alter", "asymlora"):
        return M.alter_loss(model, batch, hp, mode=method, reduce=reduce)
    if method == "lora":
        return M.lora_loss(model, batch, hp, reduce=reduce)
    return M.full_loss(model, batch, hp, method, ref, reduce=reduce)


def _grads(model):
    return {n: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method,world,rows", [("alter", 2, (3, 3)), ("alter", 3, (1, 1)), ("asymlora", 2, (2, 2)),
                                               ("lora", 2, (2, 2)), ("graddiff", 2, (3, 1)), ("kl", 2, (2, 2)),
                                               ("npo_retain", 3, (2, 2))])
def test_shard_losses_sum_to_the_single_process_loss(method, world, rows):
    tok = toy_tokenizer(toy_rows(4, seed=1) + toy_rows(4, seed=2, offset=5))
    batch = _batch(tok, *rows)
    hp = {**DEFAULTS, "lam": 1.0}                      # R_struct weighted enough to matter
    model = _model(tok, method)
    ref = copy.deepcopy(model).eval() if method == "kl" else None
    loss, logs = _loss(method, model, batch, hp, ref)
    loss.backward()
    want = _grads(model)
    model.zero_grad(set_to_none=True)

    shards = [_FakeRank(r, world).shard(batch) for r in range(world)]
    if sum(b["input_ids"].shape[0] for b in shards) > batch["input_ids"].shape[0]:
        assert (shards[-1]["labels"] == -100).all() and shards[-1]["domain"].item() == -1   # the filler row
    local = []                                          # pass 1: each shard's own counts

    def record(t):
        local.append(t.clone())
        return t
    for b in shards:
        _loss(method, model, b, hp, ref, reduce=record)
    model.zero_grad(set_to_none=True)
    total = sum(local)                                  # what the all-reduce returns

    got_loss, got_logs = 0.0, {}
    for b in shards:                                    # pass 2: global denominators
        l, lg = _loss(method, model, b, hp, ref, reduce=lambda t: total)
        (l * world).backward()                          # DDP then averages: sum_r grad / world
        got_loss += float(l.detach())
        for k, v in lg.items():
            got_logs[k] = got_logs.get(k, 0.0) + v if k in M.SUMMED_LOGS else v
    got = {n: g / world for n, g in _grads(model).items()}
    assert got_loss == pytest.approx(float(loss.detach()), rel=1e-5, abs=1e-6)
    for k, v in logs.items():
        assert got_logs[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    nonzero = 0
    for n, w in want.items():
        torch.testing.assert_close(got[n], w, rtol=1e-4, atol=1e-6, msg=n)
        nonzero += bool(w.abs().sum() > 0)
    assert nonzero >= len(want) // 2                    # the comparison is not between zeros


def test_resolve_mode(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_mode(None) is None and resolve_mode("auto") is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_mode(None) == "ddp" and resolve_mode("none") is None and resolve_mode("fsdp2") == "fsdp2"
    with pytest.raises(ValueError, match="distributed must be"):
        resolve_mode("zero3")


def test_distributed_without_launcher_is_a_clear_error(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    tok = toy_tokenizer(toy_rows(2))
    with pytest.raises(RuntimeError, match="needs a launcher"):
        ak.unlearn(toy_model(len(tok)), toy_rows(2), toy_rows(2, seed=3), tokenizer=tok, max_steps=1,
                   distributed="ddp", progress=False)


def test_grad_norm_struct_refused_under_data_parallel(monkeypatch):
    tok = toy_tokenizer(toy_rows(2))
    with pytest.raises(ak.UnlearnError, match="grad_norm"):
        ak.unlearn(toy_model(len(tok)), toy_rows(2), toy_rows(2, seed=3), tokenizer=tok, max_steps=1,
                   distributed="ddp", struct_mode="grad_norm", progress=False)


# ------------------------------------------------------------------ torchrun, 2 gloo processes


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    forget, retain = toy_rows(5, seed=1), toy_rows(6, seed=2, offset=6)   # 5 forget rows, batch 2: a last short batch
    tok = toy_tokenizer(forget + retain)
    toy_model(len(tok)).save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    (d / "forget.json").write_text(json.dumps(forget))
    (d / "retain.json").write_text(json.dumps(retain))
    (d / "forget2.json").write_text(json.dumps(toy_rows(3, seed=5, offset=2)))    # a second forget request
    return d


def _args(data, out):
    return ["--model", str(data / "model"), "--forget", str(data / "forget.json"), "--retain",
            str(data / "retain.json"), "--out", str(out), *LRS]


@pytest.fixture(scope="module")
def single(data):
    out = data / "single"
    _launch.run(lambda: [sys.executable, EXAMPLE, "--distributed", "none", *_args(data, out)], attempts=1)
    return out


def _same_tensors(got_file, want_file):
    want, got = load_file(want_file), load_file(got_file)
    assert set(got) == set(want) and want
    for k, w in want.items():
        torch.testing.assert_close(got[k], w, rtol=1e-4, atol=5e-5, msg=k)
    return want


def _same_run(got_dir, want_dir):
    want = _same_tensors(got_dir / "adapter" / "adapter_model.safetensors",
                         want_dir / "adapter" / "adapter_model.safetensors")
    moved = 0
    for k, w in want.items():
        moved += float(w.abs().max()) > 1e-3 if ".lora_B" in k else 0      # B starts at 0: it really trained
    assert moved == sum(".lora_B" in k for k in want)
    hw, hg = (json.loads((d / "history.json").read_text()) for d in (want_dir, got_dir))
    assert len(hg) == len(hw) == 3                      # 3 steps: two full batches and the short last one
    for a, b in zip(hg, hw):
        for k in ("loss", "ihl", "retain_nll", "struct", "router_ce"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k
        assert a["high_entropy_share"] == b["high_entropy_share"] and a["tokens"] == b["tokens"]
    mw, mg = (json.loads((d / "metrics.json").read_text()) for d in (want_dir, got_dir))
    for k in ("eval_forget_nll", "eval_retain_nll"):
        assert mg[-1][k] == pytest.approx(mw[-1][k], rel=1e-5), k
    assert not [f for f in os.listdir(got_dir) if "tmp" in f]                   # atomic writes only
    from alter_kernels.unlearn.checkpoint import load_checkpoint
    ck = load_checkpoint(str(got_dir))                  # weights_only: tensors and JSON only
    assert ck["step"] == 3 and set(ck["trainable"]) == set(want)


def test_torchrun_fsdp2_example_equals_single_process(data, single):
    mode = "fsdp2"
    out = data / mode
    stdout = _launch.run(lambda: _launch.torchrun() + [EXAMPLE, "--distributed", mode, *_args(data, out)])
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2
    _same_run(out, single)


def test_cli_under_torchrun_defaults_to_ddp(data, single):
    out = data / "cli"
    stdout = _launch.run(lambda: _launch.torchrun() + ["-m", "alter_kernels.cli", *_args(data, out), "--max-steps", "3", "--batch-size", "2",
                              "--threshold-quantile", "0.5", "--no-progress", "--device", "cpu"])
    assert stdout.count('"method": "alter"') == 1      # only rank 0 prints the summary
    assert json.loads(stdout[stdout.index("{"):])["steps"] == 3
    assert json.loads((out / "run.json").read_text())["distributed"] == "auto"
    _same_run(out, single)


@pytest.fixture(scope="module")
def worker_reference(data):
    sys.path.insert(0, HERE)
    try:
        import dist_unlearn_worker
    finally:
        sys.path.remove(HERE)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dist_unlearn_worker.run("none", str(data), str(data / "worker_none"))
    finally:
        torch.set_num_threads(n)
    return data / "worker_none"


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_torchrun_sequential_baseline_resume_equal_single_process(mode, data, worker_reference):
    out = data / f"worker_{mode}"
    _launch.run(lambda: _launch.torchrun() + [os.path.join(HERE, "dist_unlearn_worker.py"), mode, str(data), str(out)])
    assert json.loads((out / "done.json").read_text())["world_size"] == 2
    ad = "adapter/adapter_model.safetensors"
    for run in ("s1", "s2", "resume", "straight"):
        _same_tensors(out / run / ad, worker_reference / run / ad)
    ref_kl = "kl_off" if mode == "fsdp2" else "kl"          # the same loss path (dist_unlearn_worker.py)
    _same_tensors(out / "kl" / "model" / "model.safetensors", worker_reference / ref_kl / "model" / "model.safetensors")
    # sequential: the first request's experts, their router columns and A are bit-identical after the second
    s1, s2 = load_file(out / "s1" / ad), load_file(out / "s2" / ad)
    for k, a in s1.items():
        b = s2[k]
        if ".lora_B" in k:
            assert b.shape[0] == a.shape[0] + 1 and torch.equal(b[:a.shape[0]], a), k
            assert float(b[a.shape[0]:].abs().max()) > 1e-3, k                  # the new expert trained
        elif ".lora_A" in k:
            assert torch.equal(a, b), k
        else:
            assert torch.equal(b[:, :a.shape[1]], a), k
    # resume: 2 steps + a resumed 3rd equal 3 uninterrupted steps
    _same_tensors(out / "resume" / ad, out / "straight" / ad)
    assert len(json.loads((out / "resume" / "history.json").read_text())) == 3
