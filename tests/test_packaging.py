"""A non-editable install must carry the personas and scenarios inside the package."""

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
    entry_points = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith("entry_points.txt")))
        .decode()
    )
    assert "delib = delib.cli:main" in entry_points
