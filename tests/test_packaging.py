"""The wheels `pip wheel` builds from this checkout: hubbub (the server, what
the Dockerfile installs) and hubbub-loadtest (loadtest/), each installing only
below hubbub/ in site-packages, with their package data and commands."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(project: Path, out: Path) -> zipfile.ZipFile:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--wheel-dir", str(out), str(project)],
        check=True,
        timeout=120,
    )  # fmt: skip
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel)


def top_level(wheel: zipfile.ZipFile) -> set[str]:
    return {name.split("/")[0] for name in wheel.namelist() if ".dist-info/" not in name}


def entry_points(wheel: zipfile.ZipFile) -> str:
    (name,) = (n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    return wheel.read(name).decode()


def test_the_server_wheel_holds_hubbub_without_the_load_test_tool(tmp_path: Path) -> None:
    wheel = build(ROOT, tmp_path)
    names = set(wheel.namelist())
    assert top_level(wheel) == {"hubbub"}
    assert {"hubbub/server/cli.py", "hubbub/protocol/client.py", "hubbub/storage/base.py"} <= names
    assert not [n for n in names if n.startswith("hubbub/loadtest/")]
    assert "hubbub/__init__.py" not in names, "hubbub is a namespace package: no folder of its own"
    assert {"hubbub/protocol/schema.json", "hubbub/protocol/py.typed"} <= names
    assert any(n.startswith("hubbub/storage/migrations/postgres/") and n.endswith(".sql") for n in names)
    assert "hubbub = hubbub.server.cli:main" in entry_points(wheel)
    assert "hubbub-loadtest" not in entry_points(wheel)


def test_the_load_test_wheel_holds_hubbub_loadtest_only(tmp_path: Path) -> None:
    wheel = build(ROOT / "loadtest", tmp_path)
    assert top_level(wheel) == {"hubbub"}
    assert {n.split("/")[1] for n in wheel.namelist() if n.startswith("hubbub/")} == {"loadtest"}
    assert "hubbub/loadtest/cli.py" in wheel.namelist()
    assert "hubbub-loadtest = hubbub.loadtest.cli:main" in entry_points(wheel)
