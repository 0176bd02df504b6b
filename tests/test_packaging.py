"""What is shipped: a non-editable install carries the personas and scenarios inside the
package; the source stays in small modules."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_personas_and_scenarios(tmp_path: Path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("delib-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind in ("personas", "scenarios"):
        shipped = {p.name for p in (ROOT / kind).glob("*.yaml")}
        assert shipped
        assert {f"delib/{kind}/{name}" for name in shipped} <= names
    assert {"delib/detect/refusal_model.bin", "delib/detect/refusal_model.json"} <= names
    entry_points = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith("entry_points.txt")))
        .decode()
    )
    assert "delib = delib.cli:main" in entry_points


def test_no_module_is_over_400_lines():
    """The codebase stays in small modules, the command line included."""
    long = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for path in (ROOT / "delib").rglob("*.py")
    }
    assert len(long) > 60
    assert {name: n for name, n in long.items() if n > 400} == {}
