"""Packaging: the top-level folders are installed as hubbub.protocol,
hubbub.server and hubbub.storage (pyproject.toml), and loadtest/ as
hubbub.loadtest (loadtest/pyproject.toml); the code, the tests and the
installed commands all load each file under that one name."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import tomllib
from importlib import metadata, resources
from pathlib import Path

from hubbub.server.session import SERVER_NAME

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"protocol": ROOT, "server": ROOT, "storage": ROOT, "loadtest": ROOT / "loadtest"}
"""Folder -> the directory of the pyproject.toml that packages it."""


def pyproject(directory: Path) -> dict[str, object]:
    return tomllib.loads((directory / "pyproject.toml").read_text(encoding="utf-8"))


def setuptools_table(directory: Path) -> dict[str, object]:
    table = pyproject(directory)["tool"]
    assert isinstance(table, dict)
    setuptools = table["setuptools"]
    assert isinstance(setuptools, dict)
    return setuptools


def test_every_folder_with_an_init_is_a_listed_package() -> None:
    for folder, project in FOLDERS.items():
        on_disk = {
            "hubbub." + ".".join(init.parent.relative_to(ROOT).parts)
            for init in (ROOT / folder).rglob("__init__.py")
            if not {"node_modules", "build"} & set(init.relative_to(ROOT).parts)
        }
        listed = setuptools_table(project)["packages"]
        assert isinstance(listed, list)
        assert on_disk <= set(listed), f"add to {project / 'pyproject.toml'}: {sorted(on_disk - set(listed))}"


def test_the_wheels_install_one_top_level_name() -> None:
    for project in {ROOT, ROOT / "loadtest"}:
        table = setuptools_table(project)
        packages, package_dir = table["packages"], table["package-dir"]
        assert isinstance(packages, list) and isinstance(package_dir, dict)
        assert {name.split(".")[0] for name in packages} == {"hubbub"}
        assert all(name.startswith("hubbub.") for name in package_dir)


def test_the_load_test_tool_is_a_distribution_of_hubbubs_version() -> None:
    server, tool = pyproject(ROOT)["project"], pyproject(ROOT / "loadtest")["project"]
    assert isinstance(server, dict) and isinstance(tool, dict)
    assert tool["version"] == server["version"]
    assert tool["dependencies"] == [f"hubbub=={server['version']}"]
    extras = server["optional-dependencies"]
    assert isinstance(extras, dict)
    assert extras["loadtest"] == ["hubbub-loadtest[plot]"]
    assert "hubbub.loadtest" not in str(setuptools_table(ROOT)["packages"])


def test_server_name_is_the_installed_version() -> None:
    project = pyproject(ROOT)["project"]
    assert isinstance(project, dict)
    assert metadata.version("hubbub") == project["version"]
    version = project["version"]
    assert f"hubbub/{version}" == SERVER_NAME


def test_package_data_is_found_through_the_package() -> None:
    assert (resources.files("hubbub.protocol") / "schema.json").is_file()
    assert (resources.files("hubbub.protocol") / "py.typed").is_file()
    migrations = resources.files("hubbub.storage") / "migrations" / "postgres"
    assert any(entry.name.endswith(".sql") for entry in migrations.iterdir())


def test_every_module_loads_from_this_checkout_under_one_name() -> None:
    for folder in FOLDERS:
        package = importlib.import_module(f"hubbub.{folder}")
        assert Path(package.__file__ or "").parent == ROOT / folder
        for info in pkgutil.walk_packages(package.__path__, f"hubbub.{folder}."):
            if info.name.endswith(".__main__"):
                continue  # runs the command
            module = importlib.import_module(info.name)
            assert Path(module.__file__ or "").is_relative_to(ROOT / folder)
    assert not set(FOLDERS) & set(sys.modules), "a folder imported by its own name: one file, two modules"
