"""The unit tier: pure code driven directly, no server, no client sockets.

Every test collected from this folder carries the ``unit`` marker, so the
tier runs alone with ``pytest tests/unit`` or ``pytest -m unit``, and a
timeout of UNIT_TIMEOUT seconds: a unit test that hangs fails quickly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

UNIT_DIR = Path(__file__).parent
UNIT_TIMEOUT = 15


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A conftest hook sees every collected item of the session, not only this folder's.
    for item in items:
        if item.path.is_relative_to(UNIT_DIR):
            item.add_marker(pytest.mark.unit)
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT))
