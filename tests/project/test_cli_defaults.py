"""alter-unlearn's defaults are the engine's: every option the CLI shares with ak.unlearn's options
(UnlearnOptions), its run arguments or AlterConfig has the same default, the CLI's own option
values build the default UnlearnOptions and AlterConfig, and no such default is typed in the CLI's
source (one home per default, issue 25)."""
import argparse
import ast
import dataclasses
import inspect
import pathlib

import pytest

import alter_kernels as ak
from alter_kernels.cli import unlearn as cli
from alter_kernels.cli import unlearn_options
from alter_kernels.unlearn.options import ENGINE_ROUTER_INPUT, UnlearnOptions
from alter_kernels.unlearn.trainer import unlearn

ENGINE = {f.name for f in dataclasses.fields(UnlearnOptions)}
CONFIG = {f.name for f in dataclasses.fields(ak.AlterConfig)}
# unlearn's run arguments with a default; "distributed": the CLI names the engine's None "auto" (same mode)
RUN = {n for n, p in inspect.signature(unlearn).parameters.items()
       if p.default is not inspect.Parameter.empty} - {"distributed"}
# switches whose "off" default is an engine option's default: dest -> (option, the option's value when off)
SWITCHES = {"no_router_init": ("router_init", True), "no_eval": ("eval_each_epoch", True),
            "no_threshold_auto": ("threshold_auto", UnlearnOptions().threshold_auto),
            "chat_template": ("chat_template", False), "resume": ("resume", False)}


def _defaults():
    """{dest: (default, is a switch)} of alter-unlearn's options."""
    return {a.dest: (a.default, isinstance(a, argparse._StoreTrueAction)) for a in cli.build_parser()._actions
            if a.dest != "help"}


def test_every_shared_option_has_the_engine_default():
    engine, config = UnlearnOptions(), ak.AlterConfig()
    run = {n: p.default for n, p in inspect.signature(unlearn).parameters.items()}
    seen = set()
    for dest, (default, switch) in _defaults().items():
        if switch and dest in SWITCHES:
            name, off = SWITCHES[dest]
            assert default is False and getattr(engine, name) == off, dest
        elif dest == "router_input":        # the router the engine builds without a base_config
            assert default == ENGINE_ROUTER_INPUT
        elif dest in ("rank", "alpha"):     # the engine's None means the config's; the CLI shows that
            assert default == getattr(config, dest), dest
        elif dest in ENGINE:
            assert default == getattr(engine, dest), dest
        elif dest in CONFIG:
            want = getattr(config, dest)
            assert default == (",".join(want) if dest == "target_modules" else want), dest
        elif dest in RUN:
            assert default == run[dest], dest
        else:
            continue
        seen.add(dest)
    assert len(seen) >= 35, sorted(seen)       # the comparison covers the shared options


def test_cli_with_no_flags_builds_the_engine_defaults(tmp_path):
    args = cli.build_parser().parse_args(["--model", "m", "--forget", "f.json", "--out", str(tmp_path)])
    kw, nfe = cli._hparams(args)
    assert UnlearnOptions(**kw, num_forget_experts=nfe) == UnlearnOptions()
    cfg = cli._check_options(args, kw, nfe)
    assert cfg == ak.AlterConfig(init_seed=args.seed, router_input=ENGINE_ROUTER_INPUT)


def _literal_defaults() -> dict:
    """{dest: literal} for each add_argument of unlearn_options.py whose default= is a constant."""
    tree = ast.parse(pathlib.Path(unlearn_options.__file__).read_text())
    found = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument"):
            continue
        kw = {k.arg: k.value for k in node.keywords}
        flags = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        if isinstance(kw.get("dest"), ast.Constant):
            dest = kw["dest"].value
        elif flags:
            dest = flags[0].lstrip("-").replace("-", "_")
        else:                                   # the engine-option helper: its default is read, not typed
            continue
        if isinstance(kw.get("default"), ast.Constant) and kw["default"].value is not None:
            found[dest] = kw["default"].value
    return found


def test_no_shared_default_is_restated_in_the_cli_source():
    restated = {d: v for d, v in _literal_defaults().items() if d in ENGINE | CONFIG | RUN}
    assert not restated, f"alter-unlearn restates these defaults (read them from UnlearnOptions / AlterConfig / " \
                         f"unlearn's signature instead): {restated}"


def test_the_literal_check_can_fail(monkeypatch, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('def f(g):\n    g.add_argument("--lr", type=float, default=1e-5)\n'
                   '    g.add_argument("--q-route", dest="q_route", default=1.5)\n')
    monkeypatch.setattr(unlearn_options, "__file__", str(bad))
    assert _literal_defaults() == {"lr": 1e-5, "q_route": 1.5}


def test_help_shows_each_default_once(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "(default: None)" not in out
    parser = cli.build_parser()
    fmt = parser._get_formatter()
    for action in parser._actions:
        text = fmt._get_help_string(action) if action.help is not argparse.SUPPRESS else ""
        assert text.count("(default:") + text.count("; default:") <= 1, (action.option_strings, text)
