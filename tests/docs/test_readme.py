"""The README as a newcomer meets it: every command in it runs as written.

The two install commands at the top are what ``.ci/run`` runs verbatim (checked here); every
other shell and Python block runs here, in order, in one shell in an empty directory beside
the test virtualenv, exactly as the README prints them (the Python blocks through the
virtualenv's python). The README also stands on its own: no file of the repository cites
design notes that are not in it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(language: str | None = None) -> list[tuple[str, str]]:
    found = [(m[1], m[2]) for m in FENCE.finditer(README.read_text())]
    return [b for b in found if language is None or b[0] == language]


def install_commands() -> list[str]:
    return [code.strip() for lang, code in blocks("bash") if "pip install" in code]


def test_the_install_commands_are_what_ci_runs_verbatim():
    commands = install_commands()
    assert len(commands) == 2, commands
    ci = (ROOT / ".ci" / "run").read_text()
    for command in commands:
        assert command in ci, f"{command!r} is not run verbatim by .ci/run"
    assert commands[0].endswith("gradstore demo") and commands[1].endswith("pytest")


def test_every_code_block_is_shell_or_python():
    assert {lang for lang, _ in blocks()} <= {"bash", "python"}


def test_no_file_cites_design_notes_missing_from_the_repository():
    # spelled in parts so that this guard does not cite them itself
    missing = ("DESIGN" + ".md", "ALGORITHMS" + ".md", "../" + "shared")
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    offenders = [
        name
        for name in tracked
        if (ROOT / name).is_file()
        and any(m in (ROOT / name).read_text(errors="ignore") for m in missing)
    ]
    assert not offenders, f"cite design notes that are not in the repository: {offenders}"


def readme_script(venv: Path) -> str:
    """The README's runnable blocks as one bash script (Python blocks through heredocs)."""
    parts = ["set -e -o pipefail"]
    for language, code in blocks():
        if language == "bash" and "pip install" not in code:
            parts.append(code)
        elif language == "python":
            assert "PYTHON_BLOCK" not in code
            parts.append(f"python3 - <<'PYTHON_BLOCK'\n{code}PYTHON_BLOCK")
    return "\n".join(parts) + "\n"


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path):
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8000)) == 0:
            pytest.fail("port 8000, which the README's service example uses, is taken")
    venv = Path(sys.executable).parent.parent
    (tmp_path / ".venv").symlink_to(venv)
    script = tmp_path / "readme.sh"
    script.write_text(readme_script(venv))
    env = os.environ | {"GRADSTORE_TORCH_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "readme.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            ["bash", str(script)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = process.wait(timeout=900)
        finally:
            # the background server, if the script stopped before `kill %1`
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    output = log.read_text()
    assert code == 0, output[-6000:]
    assert "datastore ready at store" in output
    assert '"status":"ready"' in output and '"method":"less"' in output
    assert "location: /v1/datastores/" in output.lower()
    assert (tmp_path / "store" / "manifest.json").is_file()
