"""The lock files in requirements/ satisfy pyproject.toml, agree with each other, and are what is installed.

`make run`, `make test` and the Dockerfile install only from the lock (with
--require-hashes --no-deps), so a range added to pyproject.toml without
`make lock` would be silently missing; these checks catch it.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements"
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)\s*(?:;(?P<marker>[^\\]+))?\\?$")


def pins(lock_name: str) -> dict[str, tuple[Version, Marker | None]]:
    """Every ``name==version`` of a lock file, by canonical name, with its environment marker."""
    found: dict[str, tuple[Version, Marker | None]] = {}
    for line in (REQUIREMENTS / lock_name).read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line)
        if match:
            marker = match["marker"]
            found[canonicalize_name(match["name"])] = (
                Version(match["version"]),
                Marker(marker.strip()) if marker else None,
            )
    return found


def requirements_in(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [Requirement(line) for line in lines if line]


def project() -> dict[str, list[Requirement]]:
    table = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {
        "runtime": [Requirement(text) for text in table["dependencies"]],
        "dev": [Requirement(text) for text in table["optional-dependencies"]["dev"]],
    }


def assert_satisfied(wanted: list[Requirement], lock_name: str) -> None:
    locked = pins(lock_name)
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is not in requirements/{lock_name}: run make lock"
        version, _ = locked[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements/{lock_name} pins {name}=={version}, outside {requirement}: run make lock"
        )


def test_dev_lock_satisfies_the_project_and_its_build() -> None:
    wanted = project()
    assert_satisfied(
        wanted["runtime"] + wanted["dev"] + requirements_in(REQUIREMENTS / "build.in"),
        "dev.txt",
    )


def test_app_lock_satisfies_the_runtime_with_the_dev_lock_versions() -> None:
    assert_satisfied(project()["runtime"] + requirements_in(REQUIREMENTS / "build.in"), "app.txt")
    dev = pins("dev.txt")
    for name, (version, _) in pins("app.txt").items():
        assert dev[name][0] == version, f"app.txt pins {name}=={version}, dev.txt {dev[name][0]}: run make lock"


def test_test_tools_lock_satisfies_its_input() -> None:
    assert_satisfied(requirements_in(REQUIREMENTS / "test-tools.in"), "test-tools.txt")


@pytest.mark.parametrize("lock_name", ["dev.txt", "app.txt", "test-tools.txt"])
def test_every_pin_carries_hashes(lock_name: str) -> None:
    text = (REQUIREMENTS / lock_name).read_text(encoding="utf-8")
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    for entry in entries:
        if _PIN.match(entry.splitlines()[0]):
            assert "--hash=sha256:" in entry, f"{lock_name}: {entry.splitlines()[0]} has no hash"


def test_the_installed_environment_is_the_lock() -> None:
    for name, (version, marker) in pins("dev.txt").items():
        if marker is not None and not marker.evaluate():
            continue
        installed = metadata.version(name)
        assert Version(installed) == version, f"{name} {installed} is installed, the lock says {version}: make venv"


def test_pin_parser_reads_markers_and_versions() -> None:
    """The parser the checks above rely on, on the shapes uv writes."""
    sample = REQUIREMENTS / "dev.txt"
    locked = pins(sample.name)
    assert locked["websockets"][1] is None
    assert locked["websockets"][0] >= Version("17")
    assert any(marker is not None for _, marker in locked.values())
