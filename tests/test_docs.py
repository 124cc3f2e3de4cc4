"""The documents users copy from are valid: README policy examples and the demo policy."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest

from telltale.engine import policy as policy_model

ROOT = Path(__file__).resolve().parent.parent
README_POLICIES = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_the_readme_shows_a_policy() -> None:
    """The README keeps at least one policy example (so the check below cannot pass vacuously)."""
    assert README_POLICIES


@pytest.mark.parametrize("document", README_POLICIES)
def test_every_policy_in_the_readme_is_valid(document: str) -> None:
    """Each YAML policy shown in the README parses and validates."""
    assert policy_model.parse_document(document).name


def test_the_demo_policy_is_valid_and_blocklists_the_demo_address() -> None:
    """The demo policy validates and names 127.0.0.66, the address the demo workload connects to."""
    text = resources.files("telltale.demo").joinpath("demo-policy.yaml").read_text()
    policy = policy_model.parse_document(text)
    assert policy.rules["network.blocklisted_destination"].params["networks"] == ("127.0.0.66/32",)
