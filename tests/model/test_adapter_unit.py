"""An adapter directory is written and read as one unit (issue 26): save_adapter's config records
the weights' sha256 and load_adapter checks it, the run's final write swaps a whole directory into
place. Killed (SIGKILL) at every file-system step of a save, or read while saves run, a directory
loads as one save or is refused; it never loads as a mix of two."""
import dataclasses
import hashlib
import json
import os
import signal

import pytest
import torch

import alter_kernels as ak
from alter_kernels.model.io import CONFIG_NAME, DIGEST_KEY, WEIGHTS_NAME
from alter_kernels.unlearn.outputs import write_adapter_dir
from tiny_llama import tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py

CFG = ak.AlterConfig(rank=2, num_forget_experts=1, target_modules=("q_proj", "v_proj"))


def _model(fill: float):
    """A patched model whose adapter tensors all hold ``fill`` and whose config's threshold is
    ``fill`` too: a config of one save with the weights of another is seen at once."""
    m = ak.patch(tiny_llama(0, layers=1), dataclasses.replace(CFG, threshold=fill))
    with torch.no_grad():
        for p in ak.adapter_state_dict(m).values():
            p.fill_(fill)
    return m


def _loaded(path) -> float | str:
    """The save that loads from ``path`` as alter-eval loads it (config, patch, weights), or "refused"."""
    try:
        cfg, _ = ak.read_adapter_config(path)
        m = ak.patch(tiny_llama(0, layers=1), cfg)
        ak.load_adapter(m, path)
    except ak.AdapterError:
        return "refused"
    vals = {float(v) for p in ak.adapter_state_dict(m).values() for v in p.detach().flatten().unique()}
    assert vals == {cfg.threshold}, f"a mix of two saves loaded: config of {cfg.threshold}, weights {sorted(vals)}"
    return vals.pop()


def test_config_records_the_weights_digest_and_a_swapped_weights_file_is_refused(tmp_path):
    ak.save_adapter(_model(0.25), tmp_path / "a")
    ak.save_adapter(_model(0.5), tmp_path / "b")
    meta = json.loads((tmp_path / "a" / CONFIG_NAME).read_text())
    assert meta[DIGEST_KEY] == hashlib.sha256((tmp_path / "a" / WEIGHTS_NAME).read_bytes()).hexdigest()
    assert _loaded(tmp_path / "a") == 0.25
    (tmp_path / "a" / WEIGHTS_NAME).write_bytes((tmp_path / "b" / WEIGHTS_NAME).read_bytes())
    with pytest.raises(ak.AdapterError, match="comes from another save"):
        ak.load_adapter(ak.patch(tiny_llama(0, layers=1), ak.read_adapter_config(tmp_path / "a")[0]), tmp_path / "a")


def test_an_adapter_saved_before_the_digest_still_loads(tmp_path):
    ak.save_adapter(_model(0.25), tmp_path / "a")
    p = tmp_path / "a" / CONFIG_NAME
    meta = json.loads(p.read_text())
    del meta[DIGEST_KEY]
    p.write_text(json.dumps(meta))
    assert _loaded(tmp_path / "a") == 0.25


@pytest.mark.parametrize("version", ["1", 1.0, True, None, [1], -1])
def test_format_version_of_the_wrong_type_is_one_adapter_error(tmp_path, version):
    ak.save_adapter(_model(0.25), tmp_path / "a")
    p = tmp_path / "a" / CONFIG_NAME
    p.write_text(json.dumps({**json.loads(p.read_text()), "format_version": version}))
    with pytest.raises(ak.AdapterError, match="'format_version' must be an int >= 0"):
        ak.read_adapter_config(tmp_path / "a")


def test_corrupt_weights_huge_values_and_deep_configs_are_adapter_errors(tmp_path):
    ak.save_adapter(_model(0.25), tmp_path / "a")
    w, c = tmp_path / "a" / WEIGHTS_NAME, tmp_path / "a" / CONFIG_NAME
    meta = json.loads(c.read_text())
    del meta[DIGEST_KEY]                                   # as an older save: only the file itself is checked
    c.write_text(json.dumps(meta))
    good = w.read_bytes()
    w.write_bytes(good[:8] + b"\xff" * 64 + good[72:])     # a damaged header
    with pytest.raises(ak.AdapterError, match="truncated or corrupted"):
        ak.load_adapter(ak.patch(tiny_llama(0, layers=1), ak.read_adapter_config(tmp_path / "a")[0]), tmp_path / "a")
    ak.save_adapter(_model(3e38), tmp_path / "big")        # finite in fp32, but overflows the first matmul
    with pytest.raises(ak.AdapterError, match=r"magnitude 3e\+38"):
        ak.load_adapter(ak.patch(tiny_llama(0, layers=1), ak.read_adapter_config(tmp_path / "big")[0]), tmp_path / "big")
    c.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ak.AdapterError, match="nested too deeply"):
        ak.read_adapter_config(tmp_path / "a")


def _kill_at(step: int, save) -> bool:
    """Run ``save()`` in a forked child that SIGKILLs itself at file-system step ``step`` (an
    os.replace, os.fsync, os.chmod, os.rename or os.unlink call, counted from 0); True when the
    save finished before reaching that step."""
    pid = os.fork()
    if pid == 0:                                           # the child: never returns
        count = [0]
        for name in ("replace", "fsync", "chmod", "rename", "unlink"):
            real = getattr(os, name)

            def hooked(*a, _real=real, **k):
                if count[0] == step:
                    os.kill(os.getpid(), signal.SIGKILL)
                count[0] += 1
                return _real(*a, **k)
            setattr(os, name, hooked)
        try:
            save()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status)


@pytest.mark.parametrize("writer", ["save_adapter", "run_final_write", "run_final_write_two_renames"])
def test_kill_9_at_every_step_of_a_save_never_loads_a_mix(tmp_path, monkeypatch, writer):
    from alter_kernels.common import fsio
    if writer.endswith("two_renames"):                     # a system without renameat2's RENAME_EXCHANGE
        monkeypatch.setattr(fsio, "_exchange", lambda a, b: False)
    first, second = _model(0.25), _model(0.5)
    path = tmp_path / "adapter"
    write = ((lambda m: ak.save_adapter(m, path)) if writer == "save_adapter"
             else (lambda m: write_adapter_dir(m, str(path), {"method": "alter"})))
    seen = []
    for step in range(40):
        write(first)
        assert _loaded(path) == 0.25
        done = _kill_at(step, lambda: write(second))
        got = _loaded(path) if path.exists() else "missing"
        seen.append(got)
        if done:
            assert got == 0.5
            break
    else:
        pytest.fail("the save never finished")
    assert step >= 4, seen                                 # the save has several steps; each was killed
    if writer.startswith("run_final_write"):               # the directory is swapped whole: old or new
        a, b = tmp_path / "x", tmp_path / "y"
        a.mkdir(), b.mkdir()
        one_step = fsio._exchange(str(a), str(b))          # else two renames: briefly no adapter/ at all
        assert set(seen) <= ({0.25, 0.5} if one_step else {0.25, 0.5, "missing"}), seen
        assert "missing" in seen or one_step
    else:
        assert set(seen) <= {0.25, 0.5, "refused"}, seen


def test_a_reader_during_saves_gets_one_save_or_a_refusal(tmp_path):
    path = tmp_path / "adapter"
    ak.save_adapter(_model(0.25), path)
    pid = os.fork()
    if pid == 0:
        try:
            models = [_model(0.25), _model(0.5)]
            for i in range(400):
                ak.save_adapter(models[i % 2], path)
        finally:
            os._exit(0)
    got = []
    try:
        while True:
            got.append(_loaded(path))
            if os.waitpid(pid, os.WNOHANG)[0]:
                break
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    assert len(got) >= 10 and set(got) <= {0.25, 0.5, "refused"}, got


def test_alter_unlearn_adapter_with_a_string_format_version_is_one_line(tmp_path, capsys):
    from alter_kernels.cli import unlearn as cli
    from alter_kernels.unlearn.toy import toy_model, toy_rows, toy_tokenizer
    forget, retain = toy_rows(4, seed=1), toy_rows(4, seed=2, offset=6)
    tok = toy_tokenizer(forget + retain)
    m = toy_model(len(tok))
    m.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    (tmp_path / "f.json").write_text(json.dumps(forget))
    (tmp_path / "r.json").write_text(json.dumps(retain))
    ak.save_adapter(ak.patch(m, ak.AlterConfig(rank=2, num_forget_experts=1)), tmp_path / "a")
    p = tmp_path / "a" / CONFIG_NAME
    p.write_text(json.dumps({**json.loads(p.read_text()), "format_version": "1"}))
    rc = cli.main(["--model", str(tmp_path / "model"), "--forget", str(tmp_path / "f.json"), "--retain",
                   str(tmp_path / "r.json"), "--out", str(tmp_path / "o"), "--adapter", str(tmp_path / "a"),
                   "--max-steps", "1", "--no-progress", "--no-eval"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("alter-unlearn: error: ")]
    assert rc == 1 and len(lines) == 1 and "'format_version' must be an int >= 0, got '1'" in lines[0], err


@pytest.mark.parametrize("key,value", [("base_model", ["m"]), ("base_model", 5), ("extra", [1])])
def test_adapter_metadata_fields_are_type_checked(tmp_path, key, value):
    ak.save_adapter(_model(0.25), tmp_path / "a")
    p = tmp_path / "a" / CONFIG_NAME
    p.write_text(json.dumps({**json.loads(p.read_text()), key: value}))
    with pytest.raises(ak.AdapterError, match=f"'{key}' must be"):
        ak.read_adapter_config(tmp_path / "a")
