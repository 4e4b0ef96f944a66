"""The README's "Command line" block names every command and every option the parser has (issue 17:
`--access-log` was missing from the summary), and `fastgw serve --help` shows each serve option."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from fastgw.cli import _parser

README = Path(__file__).resolve().parents[1] / "README.md"


def _summary() -> dict[str, str]:
    """The README's command-line block: command (e.g. "serve", "audit verify") -> its line."""
    text = README.read_text()
    block = text[text.index("## Command line"):]
    block = block[block.index("```\n") + 4:]
    block = block[:block.index("```")]
    lines = {}
    for line in block.splitlines():
        words = line.split()
        assert words[0] == "fastgw", line
        lines[words[1]] = line
    return lines


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every leaf command of the parser: "serve", "keys new", ... -> its parser."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.update(_commands(sub, f"{prefix}{name} "))
    return out or {prefix.strip(): parser}


def test_every_command_and_option_is_in_the_readme_summary() -> None:
    summary = _summary()
    for command, parser in _commands(_parser()).items():
        top, _, rest = command.partition(" ")
        line = summary.get(top)
        assert line is not None, f"README command line block lacks `fastgw {top}`"
        if rest:
            assert re.search(rf"\b{rest}\b", line), f"`fastgw {command}` is not in: {line}"
        for action in parser._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt != "--help":
                    assert opt in line, f"`fastgw {command} {opt}` is not in the README: {line}"


def test_serve_help_lists_the_access_log_option() -> None:
    out = subprocess.run([sys.executable, "-m", "fastgw", "serve", "--help"], capture_output=True, text=True,
                         timeout=30, cwd=README.parent).stdout
    for opt in ("--config", "--bind", "--workers", "--log-level", "--access-log", "FASTGW_ACCESS_LOG"):
        assert opt in out, opt
