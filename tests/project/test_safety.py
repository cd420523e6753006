"""Safe and strict by default (issue 13), one test per problem of the issue:

1. no code from checkpoints; 2. no writes outside --out (symlinks, the model's directory, two
runs at once, stale temp files); 3. no silent wrong runs (option ranges); 4. one-line errors
instead of tracebacks (exit 2 usage, 1 run failure, 130 Ctrl-C); 5. size limits; 6. adapter
and op edges (required config fields, finite tensors, q near 1, inf/NaN of weight-0 experts,
route's arguments, progress lines). 7 (install) is tests/project/test_install.py.
"""
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import alter_kernels as ak
from alter_kernels import kernels
from alter_kernels.cli import unlearn as cli
from alter_kernels.common import fsio
from alter_kernels.unlearn import OptionError
from alter_kernels.unlearn import methods as M
from alter_kernels.unlearn.checkpoint import CheckpointError, load_checkpoint
from alter_kernels.unlearn.toy import toy_model, toy_rows, toy_tokenizer

pytestmark = [pytest.mark.usefixtures("one_thread"),  # tests/conftest.py
              pytest.mark.filterwarnings("ignore:unlearn.alter.. every answer token")]

FORGET, RETAIN = toy_rows(4, seed=1), toy_rows(4, seed=2, offset=6)
TOK = toy_tokenizer(FORGET + RETAIN)
FAST = dict(progress=False, eval_each_epoch=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("safety")
    model = toy_model(len(TOK))
    model.save_pretrained(d / "model")
    TOK.save_pretrained(d / "model")
    (d / "forget.json").write_text(json.dumps(FORGET))
    (d / "retain.json").write_text(json.dumps(RETAIN))
    return d


def base_args(files, out, *extra):
    return ["--model", str(files / "model"), "--forget", str(files / "forget.json"), "--retain",
            str(files / "retain.json"), "--out", str(out), "--batch-size", "2", "--rank", "4", "--no-progress",
            "--no-eval", "--device", "cpu", *extra]


def run_cli(args, capsys):
    try:
        code = cli.main(list(args))
    except SystemExit as exc:                            # argparse's own usage errors
        code = exc.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def one_line_error(err: str, *needles) -> str:
    # progress lines may come first ("unlearn: forget: N rows from ..."); the error is one line, last
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith("unlearn: ")]
    assert len(lines) == 1, err
    assert lines[0].startswith("alter-unlearn: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ------------------------------------------------------------------------ 1. code from checkpoints
class _Payload:
    """Unpickling this creates ``path`` (what an attacker's checkpoint would do, harmlessly)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _train(out, **kw):
    return ak.unlearn(toy_model(len(TOK)), FORGET, RETAIN, method="alter", tokenizer=TOK, max_steps=2,
                      batch_size=2, out_dir=str(out), checkpoint_every=1, **FAST, **kw)


def test_tampered_checkpoint_is_refused_and_its_payload_never_runs(tmp_path, files, capsys):
    out = tmp_path / "run"
    _train(out)
    ck = load_checkpoint(str(out))                       # the genuine one loads (weights_only)
    assert ck["step"] == 2 and torch.load(out / "checkpoint.pt", weights_only=True)
    sidecar = json.loads((out / "checkpoint.json").read_text())
    assert sidecar["step"] == 2 and sidecar["method"] == "alter"
    assert sidecar["optimizer"]["param_groups"][0]["lr"] > 0
    marker = tmp_path / "pwned"
    torch.save({"step": 2, "x": _Payload(str(marker))}, out / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="refusing to load .*objects other than tensors"):
        _train(out, resume=True)
    assert not marker.exists()
    code, _, err = run_cli(base_args(files, out, "--method", "alter", "--max-steps", "2", "--resume"), capsys)
    assert code == 1
    one_line_error(err, "refusing to load", "checkpoint.pt")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "old-pickle"])
def test_corrupt_or_truncated_checkpoint_is_one_line(tmp_path, files, capsys, damage):
    out = tmp_path / "run"
    _train(out)
    p = out / "checkpoint.pt"
    if damage == "truncated":
        p.write_bytes(p.read_bytes()[:200])
    elif damage == "garbage":
        p.write_bytes(b"not a checkpoint at all")
    else:                                           # the pre-0.2 format: numpy state inside the pickle
        import numpy as np
        torch.save({"format_version": 1, "step": 1, "rng": {"numpy": np.random.get_state()}}, p)
    code, _, err = run_cli(base_args(files, out, "--method", "alter", "--max-steps", "2", "--resume"), capsys)
    assert code == 1
    one_line_error(err, str(p))


# ------------------------------------------------------------------------ 2. writes outside --out
def test_fixed_and_stale_temp_names_are_not_followed_and_are_cleaned(tmp_path, files, capsys):
    out = tmp_path / "run"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in ("run.json.tmp", "metrics.json.tmp", "history.json.tmp"):
        os.symlink(victim, out / name)                  # the old fixed temp names
    (out / ".tmp-abcd1234-checkpoint.pt").write_bytes(b"orphan of a killed write")
    (out / ".ak-tmp-zzzz-metrics.json").write_text("{")
    keep = out / "notes.txt"
    keep.write_text("mine")
    code, _, err = run_cli(base_args(files, out, "--method", "alter", "--max-steps", "2", "--checkpoint-every", "1"),
                           capsys)
    assert code == 0, err
    assert victim.read_text() == "precious"
    left = sorted(os.listdir(out))
    assert not [f for f in left if "tmp" in f], left                   # stale temp files removed
    assert keep.read_text() == "mine" and (out / "metrics.json").is_file()


def test_atomic_writer_refuses_symlinks_and_directories(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "out.json"
    os.symlink(victim, link)
    with pytest.raises(fsio.OutputError, match="symbolic link"):
        fsio.write_json(link, {"a": 1})
    assert victim.read_text() == "precious" and os.path.islink(link)
    (tmp_path / "d.json").mkdir()
    with pytest.raises(fsio.OutputError, match="is a directory"):
        fsio.write_json(tmp_path / "d.json", {})
    p = fsio.write_json(tmp_path / "ok.json", {"a": 1})
    assert json.loads(open(p).read()) == {"a": 1}
    assert os.stat(p).st_mode & 0o777 == 0o666 & ~fsio._UMASK            # the usual mode, not mkstemp's 0600
    assert [f for f in os.listdir(tmp_path) if f.startswith(fsio.TMP_PREFIX)] == []


def test_publish_dir_first_build_wins_and_failed_builds_leave_nothing(tmp_path):
    """The benchmark cache's directory publisher (common.fsio.publish_dir)."""
    final = tmp_path / "cache" / "entry"

    def build(text):
        return lambda d: open(os.path.join(d, "x.txt"), "w").write(text)
    fsio.publish_dir(final, build("first"))
    fsio.publish_dir(final, build("second"))                  # another process lost the race
    assert (final / "x.txt").read_text() == "first"

    def boom(d):
        raise RuntimeError("build failed")
    with pytest.raises(RuntimeError, match="build failed"):
        fsio.publish_dir(tmp_path / "cache" / "other", boom)
    assert sorted(os.listdir(tmp_path / "cache")) == ["entry"]   # no temp directory left behind
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "cache")
    with pytest.raises(fsio.OutputError, match="symbolic link"):
        fsio.publish_dir(link, build("x"))


@pytest.mark.parametrize("method,sub", [("alter", "adapter"), ("ga", "model")])
def test_symlinked_output_directory_is_refused_before_training(tmp_path, files, capsys, method, sub):
    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, out / sub)
    code, _, err = run_cli(base_args(files, out, "--method", method, "--max-steps", "1"), capsys)
    assert code == 2
    one_line_error(err, "--out", "symbolic link", str(out / sub))
    assert os.listdir(elsewhere) == [] and not (out / "checkpoint.pt").exists() and not (out / "run.json").exists()
    with pytest.raises(ak.AdapterError, match="symbolic link"):        # the API refuses it too
        m = ak.patch(toy_model(len(TOK)), ak.AlterConfig(rank=2))
        ak.save_adapter(m, out / "adapter" if sub == "adapter" else out / "model")


def test_out_containing_the_model_directory_is_refused(tmp_path, files, capsys):
    import shutil
    parent = tmp_path / "base"
    shutil.copytree(files / "model", parent / "model")
    weights = {f: (parent / "model" / f).read_bytes() for f in os.listdir(parent / "model")}
    for out in (parent, parent / "model"):
        code, _, err = run_cli(["--model", str(parent / "model"), "--forget", str(files / "forget.json"), "--out",
                                str(out), "--method", "ga", "--max-steps", "1", "--no-progress", "--no-eval"], capsys)
        assert code == 2
        one_line_error(err, "--out", "contains (or is) the model directory")
    assert {f: (parent / "model" / f).read_bytes() for f in os.listdir(parent / "model")} == weights
    with pytest.raises(OptionError, match="contains .*the model's directory"):     # the API too
        m = toy_model(len(TOK))
        m.name_or_path = str(parent / "model")
        ak.unlearn(m, FORGET, None, method="ga", tokenizer=TOK, max_steps=1, out_dir=str(parent), **FAST)


def test_two_concurrent_runs_into_one_out(tmp_path, files, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from alter_kernels.common.fsio import OutDirLock; "
                               f"l = OutDirLock({str(out)!r}).acquire(); print('locked', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(ak.__file__))})
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.perf_counter()
        code, _, err = run_cli(base_args(files, out, "--method", "alter", "--max-steps", "1"), capsys)
        assert code == 1 and time.perf_counter() - t0 < 30                    # fails fast
        one_line_error(err, "in use by another run", f"pid {holder.pid}")
        assert not (out / "run.json").exists()
        with pytest.raises(fsio.OutputLockedError, match=f"pid {holder.pid}"):
            _train(out)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    code, _, err = run_cli(base_args(files, out, "--method", "alter", "--max-steps", "1"), capsys)
    assert code == 0, err                                                       # the lock died with its holder


# ------------------------------------------------------------------------ 3. silent wrong runs
@pytest.mark.parametrize("flag,value", [("--lr", "-0.001"), ("--lr=-1e-3", None), ("--lr", "nan"), ("--lr", "inf"), ("--lr-B", "0"),
                                        ("--lr-B", "-1"), ("--lr-router", "0"), ("--lr-A", "-1e-5"),
                                        ("--warmup-steps", "-1"), ("--grad-clip", "nan"), ("--grad-clip", "-1"),
                                        ("--checkpoint-every", "-1"), ("--eval-max-examples", "-1"),
                                        ("--weight-decay", "-0.1"), ("--beta", "-1"), ("--npo-beta", "0"),
                                        ("--max-length", "1"), ("--epochs", "0"), ("--seed", "-1")])
def test_out_of_range_options_stop_before_any_work(tmp_path, files, capsys, flag, value):
    out = tmp_path / "run"
    extra = [flag] if value is None else [flag, value]
    code, _, err = run_cli(base_args(files, out, "--method", "ga", "--max-steps", "1", *extra), capsys)
    assert code == 2
    one_line_error(err, f"{flag.split('=')[0]}: expected ", value if value in ("nan", "inf") else "")
    assert not out.exists() or os.listdir(out) == []


def test_negative_learning_rate_is_refused_by_the_api():
    with pytest.raises(OptionError, match=r"lr: expected a finite number > 0, got -0.001"):
        ak.unlearn(toy_model(len(TOK)), FORGET, None, method="ga", tokenizer=TOK, lr=-1e-3, max_steps=1, **FAST)
    for kw in (dict(warmup_steps=-1), dict(grad_clip=math.nan), dict(lr_B=0.0), dict(eval_max_examples=-1),
               dict(prompt_format="{foo} {question}"), dict(num_forget_experts=10 ** 5)):
        with pytest.raises(OptionError, match=next(iter(kw))):
            ak.unlearn(toy_model(len(TOK)), FORGET, RETAIN, tokenizer=TOK, max_steps=1, **kw, **FAST)


# ------------------------------------------------------------------------ 4. one-line errors
@pytest.mark.parametrize("extra,needles", [
    (["--rank", "0"], ["--rank", "expected an int >= 1"]),
    (["--rank", "1e8"], ["--rank", "invalid int value"]),
    (["--alpha", "nan"], ["--alpha", "finite"]),
    (["--tau-low", "0"], ["--tau-low", "> 0"]),
    (["--tau-high", "nan"], ["--tau-high"]),
    (["--threshold", "nan"], ["--threshold", "NaN not"]),
    (["--top-k", "0"], ["--top-k", ">= 1"]),
    (["--q-route", "0"], ["--q-route", "> 0"]),
    (["--target-modules", ","], ["--target-modules", "non-empty"]),
    (["--prompt-format", "{foo} {question}"], ["--prompt-format", "{foo}"]),
    (["--prompt-format", "no field"], ["--prompt-format", "no {question} field"]),
    (["--num-forget-experts", "100000"], ["--num-forget-experts", "1..64"]),
    (["--num-forget-experts", "9"], ["--num-forget-experts", "9 forget experts for 4 forget row(s)"]),
    (["--rank", "100000"], ["--rank", "expected rank <= 16"]),
    (["--threshold-quantile", "1.5"], ["--threshold-quantile", "(0, 1)"]),
    (["--add-experts", "1"], ["--add-experts needs --adapter"]),
])
def test_invalid_values_give_one_line_and_exit_2(tmp_path, files, capsys, extra, needles):
    t0 = time.perf_counter()
    code, out, err = run_cli(base_args(files, tmp_path / "run", "--method", "alter", "--max-steps", "1", *extra),
                             capsys)
    assert code == 2 and out == ""
    one_line_error(err, *needles)
    assert time.perf_counter() - t0 < 60
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_device_without_gpu(tmp_path, files, capsys):
    for dev in ("cuda", "cuda:1", "tpu!"):
        code, _, err = run_cli(base_args(files, tmp_path / "run", "--max-steps", "1")[:-2] + ["--device", dev], capsys)
        assert code == 2
        one_line_error(err, "--device")


def test_paths_of_the_wrong_kind(tmp_path, files, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [(["--forget", str(tmp_path)], ["--forget", "is a directory"]),
             (["--forget", str(tmp_path / "nope.json")], ["--forget", "not found"]),
             (["--out", str(a_file)], ["--out", "not a directory"]),
             (["--out", str(a_file / "sub")], ["--out", "cannot create"]),
             (["--model", str(a_file)], ["--model", "is a file"]),
             (["--adapter", str(a_file)], ["--adapter", "not a directory"])]
    for extra, needles in cases:
        args = base_args(files, tmp_path / "run", "--max-steps", "1")
        args += extra                                  # argparse: the last value wins
        code, _, err = run_cli(args, capsys)
        assert code == 2, (extra, err)
        one_line_error(err, *needles)


def test_output_target_that_is_a_directory_is_found_before_training(tmp_path, files, capsys):
    for name in ("metrics.json", "checkpoint.pt", "history.json", "run.json"):
        out = tmp_path / name.replace(".", "_")
        (out / name).mkdir(parents=True)
        code, _, err = run_cli(base_args(files, out, "--method", "alter", "--max-steps", "2"), capsys)
        assert code == 2
        one_line_error(err, "--out", str(out / name), "is a directory")
        assert sorted(os.listdir(out)) == sorted([name, fsio.LOCK_NAME]) or os.listdir(out) == [name]


def test_non_utf8_and_model_without_tokenizer(tmp_path, files, capsys):
    bad = tmp_path / "latin1.json"
    bad.write_bytes(json.dumps(FORGET).replace("Vale", "V\u00e9le").encode("latin-1"))
    code, _, err = run_cli(base_args(files, tmp_path / "run", "--max-steps", "1")[:2] + ["--forget", str(bad)] +
                           base_args(files, tmp_path / "run", "--max-steps", "1")[4:], capsys)
    assert code == 1
    one_line_error(err, str(bad), "not UTF-8")
    import shutil
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for f in os.listdir(files / "model"):
        if f in ("config.json", "model.safetensors", "generation_config.json"):
            shutil.copy2(files / "model" / f, no_tok / f)
    args = base_args(files, tmp_path / "run2", "--max-steps", "1")
    args[1] = str(no_tok)
    code, _, err = run_cli(args, capsys)
    assert code == 2
    line = one_line_error(err, "--model", "no tokenizer files", "--tokenizer")
    assert "sentencepiece" not in line


def test_ctrl_c_checkpoints_prints_the_resume_command_and_resumes_bit_identically(tmp_path, files, capsys,
                                                                                 monkeypatch):
    full = tmp_path / "full"
    args = lambda out: base_args(files, out, "--method", "alter", "--epochs", "2", "--seed", "3")  # noqa: E731
    assert run_cli(args(full), capsys)[0] == 0
    real, calls = M.alter_loss, {"n": 0}

    def ctrl_c_in_step_3(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)          # arrives mid-step: the step still completes
        return real(*a, **k)
    monkeypatch.setattr(M, "alter_loss", ctrl_c_in_step_3)
    cut = tmp_path / "cut"
    code, out, err = run_cli(args(cut), capsys)
    assert code == 130 and out == ""
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("unlearn: ")]   # row counts first
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("alter-unlearn: interrupted after step 3; checkpoint saved to ")
    resume = lines[0].split("resume with: ", 1)[1]
    assert resume.startswith("alter-unlearn ") and resume.endswith("--resume")
    assert load_checkpoint(str(cut))["step"] == 3
    monkeypatch.setattr(M, "alter_loss", real)
    import shlex
    code, _, err = run_cli(shlex.split(resume)[1:], capsys)
    assert code == 0, err
    a, b = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (full, cut))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ------------------------------------------------------------------------ 5. size limits
def test_absurd_sizes_are_refused_before_allocating(tmp_path):
    with pytest.raises(ValueError, match=r"num_forget_experts: got 10000000, expected an int in 0..64"):
        ak.AlterConfig(num_forget_experts=10 ** 7)
    m = ak.patch(toy_model(len(TOK)), ak.AlterConfig(rank=2, num_forget_experts=1))
    ak.save_adapter(m, tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    meta["alter_config"]["num_forget_experts"] = 10 ** 7
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(meta))
    t0 = time.perf_counter()
    with pytest.raises(ak.AdapterError, match="num_forget_experts"):
        ak.read_adapter_config(tmp_path / "a")
    assert time.perf_counter() - t0 < 5
    with pytest.raises(ak.PatchError, match=r"rank 100000000 is too large: expected rank <= 16"):
        ak.patch(toy_model(len(TOK)), ak.AlterConfig(rank=10 ** 8))
    with pytest.raises(ValueError, match="num_forget_experts"):
        ak.add_forget_experts(m, 64)


# ------------------------------------------------------------------------ 6. adapter and op edges
@pytest.mark.parametrize("field", ["threshold", "tau_low", "rank", "q_route", "top_k", "target_modules"])
def test_adapter_config_must_carry_every_functional_field(tmp_path, field):
    m = ak.patch(toy_model(len(TOK)), ak.AlterConfig(rank=2, num_forget_experts=1, threshold=0.7))
    ak.save_adapter(m, tmp_path / "a")
    p = tmp_path / "a" / "adapter_config.json"
    meta = json.loads(p.read_text())
    del meta["alter_config"][field]
    p.write_text(json.dumps(meta))
    with pytest.raises(ak.AdapterError, match=rf"lacks field\(s\) \['{field}'\]"):
        ak.read_adapter_config(tmp_path / "a")


def test_non_finite_adapter_tensors_are_refused(tmp_path):
    m = ak.patch(toy_model(len(TOK)), ak.AlterConfig(rank=2, num_forget_experts=1))
    ak.save_adapter(m, tmp_path / "a")
    w = tmp_path / "a" / "adapter_model.safetensors"
    t = load_file(w)
    t = {k: torch.full_like(v, math.nan) for k, v in t.items()}
    save_file(t, w)
    c = tmp_path / "a" / "adapter_config.json"                       # a consistent save of bad weights
    c.write_text(json.dumps({**json.loads(c.read_text()), "weights_sha256": hashlib.sha256(w.read_bytes()).hexdigest()}))
    before = {k: v.clone() for k, v in ak.adapter_state_dict(m).items()}
    with pytest.raises(ak.AdapterError, match="non-finite"):
        ak.load_adapter(m, tmp_path / "a")
    assert all(torch.equal(v, before[k]) for k, v in ak.adapter_state_dict(m).items())   # left unchanged


def _backends(op):
    names = kernels.available(op, "cpu")
    if not kernels.native.triton_interpret():
        names = [n for n in names if n != "triton"]
    return names


def test_tsallis_near_one_is_shannon_in_every_backend():
    torch.manual_seed(0)
    z = torch.randn(5, 97) * 2
    shannon = ak.tsallis_entropy(z.double(), 1.0)
    assert float(shannon.mean()) > 1.0
    for backend in _backends("tsallis_entropy"):
        with ak.use_backend(backend):
            for q in (1 + 1e-9, 1 - 1e-9, 1 + 5e-7):
                got = ak.tsallis_entropy(z, q)
                torch.testing.assert_close(got.double(), shannon, rtol=1e-5, atol=1e-5, msg=f"{backend} q={q}")
    for backend in _backends("lm_head_entropy"):
        with ak.use_backend(backend):
            h, w = torch.randn(4, 8), torch.randn(97, 8)
            torch.testing.assert_close(ak.lm_head_entropy(h, w, 1 + 1e-9), ak.lm_head_entropy(h, w, 1.0),
                                       rtol=1e-5, atol=1e-5)
    op = kernels.native_op("tsallis_entropy_fwd")       # the kernel itself, called directly
    if op is not None:
        torch.testing.assert_close(op(z, 1 + 1e-9)[0].double(), shannon, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [3, 40])                  # C++: gather path (n <= 8) and GEMM path
@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_asym_lora_backends_agree_on_a_weight_zero_expert_holding_inf_or_nan(n, bad):
    torch.manual_seed(1)
    d_in, d_out, r, e = 12, 10, 4, 3
    x, W = torch.randn(n, d_in), torch.randn(d_out, d_in)
    A, B = torch.randn(r, d_in), torch.randn(e, d_out, r)
    B[2, 3, 1] = bad                                    # expert 2: broken, but nobody uses it
    w = torch.rand(n, e)
    w[:, 2] = 0.0
    want = x @ W.t() + 0.5 * sum(w[:, k:k + 1] * ((x @ A.t()) @ B[k].t()) for k in range(2))
    for backend in _backends("asym_lora"):
        with ak.use_backend(backend):
            y = ak.asym_lora(x, W, A, B, w, 0.5)
            assert torch.isfinite(y).all(), backend
            torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5, msg=backend)
            Ag, Bg = A.clone().requires_grad_(), B.clone().requires_grad_()
            y = ak.asym_lora(x, W, Ag, Bg, w, 0.5)
            torch.testing.assert_close(y.detach(), want, rtol=1e-5, atol=1e-5, msg=backend)
    w[0, 2] = 0.25                                       # a token that does use it: non-finite, as IEEE says
    for backend in _backends("asym_lora"):
        with ak.use_backend(backend):
            y = ak.asym_lora(x, W, A, B, w, 0.5)
            assert not torch.isfinite(y[0]).all() and torch.isfinite(y[1:]).all(), backend


def test_route_rejects_bad_scalars():
    h, wg, ent = torch.randn(4, 6), torch.randn(6, 3), torch.rand(4) * 3
    for kw, match in ((dict(top_k=-1), "top_k must be >= 0"), (dict(tau_high=math.nan), "tau_high is NaN"),
                      (dict(threshold=math.nan), "threshold is NaN"), (dict(tau_low=math.inf), "tau_low must be"),
                      (dict(tau_low=0.0), "tau_low must be")):
        with pytest.raises(ValueError, match=match):
            ak.route(h, wg, ent, **{"threshold": 1.2, "tau_high": 0.8, "tau_low": 0.01, "top_k": 2, **kw})
    with pytest.raises(TypeError, match="top_k must be an int"):
        ak.route(h, wg, ent, 1.2, 0.8, 0.01, 2.5)
    assert ak.route(h, wg, ent, math.inf, 0.8, 0.01, 0).high.sum() == 0          # +inf: every token low
    assert ak.route(h, wg, ent, -math.inf, 0.8, 0.01, 2).high.all()


def test_progress_lines_from_the_first_pass(capfd):
    ak.unlearn(toy_model(len(TOK)), FORGET, RETAIN, method="alter", tokenizer=TOK, max_steps=1, batch_size=2,
               num_forget_experts="auto", progress=True, eval_each_epoch=False, router_input="token")
    err = capfd.readouterr().err
    for what in ("k-means: forget features", "k-means: choosing N", "router init: retain features",
                 "entropy cache (forget)", "entropy cache (retain)", "unlearn[alter]"):
        assert what in err, what
    ak.unlearn(toy_model(len(TOK)), FORGET, None, method="npo", tokenizer=TOK, max_steps=1, progress=True,
               eval_each_epoch=False)
    assert "reference log-probs (forget)" in capfd.readouterr().err
