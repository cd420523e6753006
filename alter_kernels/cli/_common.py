"""What the command lines share: argparse with one-line errors, the typed-newline rule, the
--chat-template option."""
from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage block): ``<prog>: error: <message><hint>``,
    exit status 2."""

    def __init__(self, *args, error_hint: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.error_hint = error_hint

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}{self.error_hint}\n")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` once, where it says something: not when the help already names its
    default, not for a required option, a switch (store_true) or a None default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or action.required or action.default is None or action.default is argparse.SUPPRESS
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))):
            return text
        return super()._get_help_string(action)


def unescape_newlines(text: str) -> str:
    """A prompt format typed in a shell: the two characters backslash-n become a newline (as the
    default is shown in --help)."""
    return text.replace("\\n", "\n")


def first_line(exc) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def add_chat_template_option(group) -> None:
    """``--chat-template {auto,on,off}`` (a bare ``--chat-template`` is ``on``, as it used to be);
    the rule is alter_kernels.common.text.uses_chat_template."""
    from ..common.text import CHAT_TEMPLATE_MODES, DEFAULT_CHAT_TEMPLATE
    group.add_argument("--chat-template", nargs="?", const="on", default=DEFAULT_CHAT_TEMPLATE,
                       choices=CHAT_TEMPLATE_MODES,
                       help="wrap questions in the tokenizer's chat template: auto = when the tokenizer has one, "
                            "on, off (then --prompt-format)")
