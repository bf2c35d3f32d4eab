"""Every medkit command line the deployment docs show exists: checked with medkit's own parser.

A command in a shell block must parse as written (placeholders such as `<workflow id>` stand for
one argument); a command quoted in the prose must name a real (sub)command, and every flag it
shows must be one of that command's own flags, spelled out in full.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from cli.main import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "docs" / "production.md", REPO / "docs" / "gateway.md"]
SHELL_LANGUAGES = {"bash", "sh", ""}
PLACEHOLDER = re.compile(r"<[^<>]+>")
SHELL_OPERATOR = re.compile(r"^[();<>|&]+$")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


COMMAND_START = re.compile(r"(?:(?<=\s)|(?<=^)|(?<=[;&|(]))(?:\S*/bin/)?medkit\s+(?=[a-z])")


def _commands(text: str) -> list[list[str]]:
    """Each `medkit SUBCOMMAND ...` in the text (the console script by name or by path), as its
    arguments up to the first shell operator or comment."""
    found = []
    for start in COMMAND_START.finditer(text):
        lexer = shlex.shlex(PLACEHOLDER.sub("PLACEHOLDER", text[start.end():]), posix=True,
                            punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens = list(lexer)
        end = next((j for j, t in enumerate(tokens) if SHELL_OPERATOR.match(t)), len(tokens))
        if tokens and re.fullmatch(r"[a-z][a-z-]*", tokens[0]):
            found.append(tokens[:end])
    return found


def _blocks(doc: str) -> tuple[list[str], str]:
    """The lines of the shell code blocks (continuations joined), and the prose outside any block."""
    shell: list[str] = []
    prose: list[str] = []
    language: str | None = None  # inside a block: its language
    block: list[str] = []
    for line in doc.splitlines():
        fence = re.match(r"^```(\S*)\s*$", line)
        if fence and language is None:
            language, block = fence.group(1), []
        elif fence and not fence.group(1):
            if language in SHELL_LANGUAGES:
                shell.extend("\n".join(block).replace("\\\n", " ").splitlines())
            language = None
        elif language is None:
            prose.append(line)
        else:
            block.append(line)
    assert language is None, "unclosed code block"
    return shell, " ".join(prose)


def _shell_lines(doc: str) -> list[str]:
    return _blocks(doc)[0]


def _prose_spans(doc: str) -> list[str]:
    return [span for span in re.findall(r"`([^`]+)`", _blocks(doc)[1]) if "medkit " in span]


def _command_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The deepest (sub)command parser argv names, and the arguments left for it."""
    parser = build_parser()
    rest = list(argv)
    while rest and rest[0] in _subparsers(parser):
        parser = _subparsers(parser)[rest.pop(0)]
    assert parser.prog != "medkit", f"no medkit command {argv[0]!r}"
    return parser, rest


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_shell_commands_parse(doc: Path) -> None:
    commands = [argv for line in _shell_lines(doc.read_text()) for argv in _commands(line)]
    assert commands or doc.name == "gateway.md"
    for argv in commands:
        args, extras = build_parser().parse_known_args(argv)
        assert not extras, f"{argv}: medkit does not know {extras}"
        assert callable(args.func), argv


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_commands_quoted_in_the_prose_exist(doc: Path) -> None:
    checked = 0
    for span in _prose_spans(doc.read_text()):
        for argv in _commands(span):
            parser, rest = _command_parser(argv)
            for token in rest:
                flag = token.partition("=")[0]
                if flag.startswith("-") and flag != "-":
                    assert flag in parser._option_string_actions, f"`{span}`: no {flag} in {parser.prog}"
            checked += 1
    assert checked >= 5


def test_the_checks_can_fail() -> None:
    parser, rest = _command_parser(["incidents", "show", "recovery:a:b", "--state-dir", "/x"])
    assert parser.prog == "medkit incidents show" and rest == ["recovery:a:b", "--state-dir", "/x"]
    assert "--state-dir" in parser._option_string_actions
    assert "--state-directory" not in parser._option_string_actions
    with pytest.raises(AssertionError, match="no medkit command 'incident'"):
        _command_parser(["incident", "--since", "24h"])
    assert _commands("sudo -u medkit /opt/medkit/bin/medkit incidents --since 24h | head") == [
        ["incidents", "--since", "24h"]]
    assert _commands("docker build -t medkit . && medkit status <workflow id>  # a comment") == [
        ["status", "PLACEHOLDER"]]
