"""``--help`` of every command at 80 columns: no cut names, nothing wider, methods listed."""

from __future__ import annotations

import pytest
import typer
from cli_run import gradstore

from gradstore.cli import app
from gradstore.cli.common import METHOD_NAMES


def command_paths(command=None, prefix=()) -> list[tuple[str, ...]]:
    command = command or typer.main.get_command(app)
    found = [prefix]
    for name, sub in getattr(command, "commands", {}).items():
        found += command_paths(sub, (*prefix, name))
    return found


def test_the_method_names_are_the_registry():
    from gradstore.selection import METHODS

    assert sorted(METHOD_NAMES) == sorted(METHODS)


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "gradstore")
def test_help_fits_80_columns(path, tmp_path):
    done = gradstore(*path, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    wide = [line for line in text.splitlines() if len(line) > 80]
    assert not wide, wide
    assert "…" not in text, "a cut name"
    assert "`" not in text, "markup shown literally"
    assert "[default: (" not in text, "a default in parentheses"
    cut = [x for x in text.splitlines() if x.endswith("...") and not x.startswith("Usage:")]
    assert not cut, "a cut summary"


@pytest.mark.parametrize("path", [("select",), ("remote", "select")])
def test_select_help_lists_every_method_and_its_flags(path, tmp_path):
    text = gradstore(*path, "--help", cwd=tmp_path).stdout
    for name in METHOD_NAMES:
        assert name in text
    for flag in ("--options", "--explain", "--top-k", "--fraction", "--targets"):
        assert flag in text


def test_build_help_shows_every_flag_whole_with_plain_defaults(tmp_path):
    from gradstore.cli.flags import config_options

    text = gradstore("build", "--help", cwd=tmp_path).stdout
    for option in config_options():
        assert option.flag in text
    assert "[default: 2e-05]" in text and "[default: 128]" in text
