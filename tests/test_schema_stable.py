"""protocol/schema.json does not depend on which msgspec release inside pyproject's range generated it."""

from __future__ import annotations

from typing import Any

from hubbub.protocol import schema


def test_docstring_indentation_is_normalised_whatever_msgspec_kept() -> None:
    # msgspec 0.22 kept the indentation of a docstring's later lines, 0.23 strips it.
    as_022: dict[str, Any] = {"A": {"description": "First line.\n\n    Second paragraph.", "properties": {}}}
    as_023: dict[str, Any] = {"A": {"description": "First line.\n\nSecond paragraph.", "properties": {}}}
    schema._clean_descriptions(as_022)
    schema._clean_descriptions(as_023)
    assert as_022 == as_023 == {"A": {"description": "First line.\n\nSecond paragraph.", "properties": {}}}


def test_a_field_named_description_is_left_alone() -> None:
    node: dict[str, Any] = {"properties": {"description": {"type": "string", "description": "  Said.\n    Twice."}}}
    schema._clean_descriptions(node)
    assert node == {"properties": {"description": {"type": "string", "description": "Said.\nTwice."}}}


def test_generated_descriptions_carry_no_docstring_indentation() -> None:
    def walk(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [v for k, v in node.items() if k == "description" and isinstance(v, str)]
            return found + [d for v in node.values() for d in walk(v)]
        if isinstance(node, list):
            return [d for v in node for d in walk(v)]
        return []

    descriptions = walk(schema.build_schema())
    assert descriptions
    assert not [d for d in descriptions if "\n    " in d]
