"""Generated documents: every invalid one is rejected with the path of its problem."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from policygen import INVALID_ITEMS, VALID_ITEMS, invalid_documents

from telltale.engine.catalog import CATALOG
from telltale.engine.errors import PolicyValidationError, Violation
from telltale.engine.policy import from_mapping, parse_document
from telltale.engine.yamlio import dump


def _rejected(check: Any) -> tuple[Violation, ...]:
    with pytest.raises(PolicyValidationError) as caught:
        check()
    return caught.value.violations


@given(invalid_documents())
def test_every_invalid_document_is_rejected_at_its_field(case: tuple[dict[str, Any], str]) -> None:
    """A valid document with one problem is rejected whole, naming exactly that field, as data
    and as YAML text."""
    document, path = case
    violations = _rejected(lambda: from_mapping(document))
    assert [v.field for v in violations] == [path], violations
    assert all(v.description for v in violations)
    from_text = _rejected(lambda: parse_document(dump(document)))
    assert [v.field for v in from_text] == [path], from_text


def test_every_item_check_has_valid_and_invalid_samples() -> None:
    """The generators know every item check the catalog uses, so generated documents cover all."""
    checks = {param.check for spec in CATALOG.values() for param in spec.params if param.check is not None}
    assert checks <= set(VALID_ITEMS)
    assert checks <= set(INVALID_ITEMS)
    for check in checks:
        assert all(check(bad) is not None for bad in INVALID_ITEMS[check]), check
