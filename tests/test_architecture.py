"""The layout of docs/architecture.md holds: the import contracts of pyproject.toml are kept,
no module sits loose at the top beyond the shared few, and the public API is where the README
says it is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = "import sys; from importlinter.cli import lint_imports_command as lint; sys.exit(lint())"


def lint(tree: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", LINT, "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_the_import_contracts_are_kept():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


def test_an_upward_import_breaks_the_layers_contract(tmp_path: Path):
    """The contract can fail: a copy of the package in which the records (the bottom layer)
    import the debate engine is refused."""
    import shutil

    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "delib", copy / "delib")
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    with open(copy / "delib" / "records.py", "a", encoding="utf-8") as handle:
        handle.write("\nfrom delib.debate import state  # noqa: E402,F401\n")
    done = lint(copy, env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})
    assert done.returncode != 0
    assert "delib.records -> delib.debate.state" in done.stdout


def test_at_most_six_modules_directly_under_the_package():
    top = sorted(p.name for p in (ROOT / "delib").glob("*.py"))
    assert len(top) <= 6, top
    packages = sorted(p.parent.name for p in (ROOT / "delib").glob("*/__init__.py"))
    assert packages == [
        "archive",
        "cli",
        "debate",
        "detect",
        "experiments",
        "library",
        "models",
        "testing",
        "web",
    ]


def test_the_public_api_is_importable_from_the_top():
    import delib
    import delib.testing

    for name in ("run", "arun", "resume", "Persona", "Scenario", "Protocol", "LoopMode"):
        assert hasattr(delib, name), name
    assert delib.RunResult.__module__ == "delib.debate.result"
    assert callable(delib.resume)
    for name in ("FakeOpenAIServer", "Fault", "FakeTransport"):
        assert hasattr(delib.testing, name), name
