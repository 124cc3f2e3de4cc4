"""Block plans: the networks a policy's block rules ask agents to refuse, and what they cannot."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mmdbwriter import write_country_db

from telltale.engine.countries import NO_COUNTRIES, CountryLookup
from telltale.engine.enforcement import block_plan
from telltale.engine.geo import MaxMindCountries, OfflineCountries, OverrideCountries
from telltale.engine.model import Policy
from telltale.engine.policy import parse_document

NS = 1_000_000_000
NOW = 1_800_000_000 * NS


def policy(rules: str) -> Policy:
    return parse_document(
        "apiVersion: telltale.dev/v1\nkind: AlertPolicy\nmetadata:\n  name: Blocks\nspec:\n  rules:\n" + rules
    )


def blocklist(networks: str, *, action: str = "block", exceptions: str = "") -> Policy:
    text = (
        "    network.blocklisted_destination:\n"
        f"      action: {action}\n"
        f"      params:\n        networks: [{networks}]\n"
    )
    if exceptions:
        text += "      exceptions:\n" + exceptions
    return policy(text)


def test_only_enabled_block_rules_block() -> None:
    """Networks of a block rule are blocked; an alert rule, or a disabled one, blocks nothing."""
    assert block_plan(blocklist("203.0.113.0/24"), NO_COUNTRIES, NOW).networks == ("203.0.113.0/24",)
    assert block_plan(blocklist("203.0.113.0/24", action="alert"), NO_COUNTRIES, NOW).networks == ()
    disabled = policy(
        "    network.blocklisted_destination:\n      enabled: false\n      action: block\n"
        "      params:\n        networks: [203.0.113.0/24]\n"
    )
    assert block_plan(disabled, NO_COUNTRIES, NOW).networks == ()


def test_networks_are_merged_ipv4_first() -> None:
    """Overlapping and adjacent networks merge; single addresses become /32 and /128."""
    plan = block_plan(
        blocklist("2001:db8::1, 10.0.0.0/25, 10.0.0.128/25, 10.0.0.7, 192.0.2.9"), NO_COUNTRIES, NOW
    )
    assert plan.networks == ("10.0.0.0/24", "192.0.2.9/32", "2001:db8::1/128")


def test_an_exception_destination_makes_a_hole_until_it_expires() -> None:
    """An exception naming a destination is carved out of the block; an expired one is not."""
    live = "        - {reason: partner, destination: 10.0.0.128/25}\n"
    plan = block_plan(blocklist("10.0.0.0/24", exceptions=live), NO_COUNTRIES, NOW)
    assert plan.networks == ("10.0.0.0/25",)
    expired = "        - {reason: old, destination: 10.0.0.128/25, expires: '2020-01-01T00:00:00Z'}\n"
    assert block_plan(blocklist("10.0.0.0/24", exceptions=expired), NO_COUNTRIES, NOW).networks == (
        "10.0.0.0/24",
    )


def test_an_exception_without_destination_is_reported() -> None:
    """Node-wide enforcement cannot spare one application: the plan says so."""
    scoped = "        - {reason: scanner, application: audit}\n"
    plan = block_plan(blocklist("10.0.0.0/24", exceptions=scoped), NO_COUNTRIES, NOW)
    assert plan.networks == ("10.0.0.0/24",)
    assert any("names no destination" in note for note in plan.unenforced)


def test_metadata_block_names_what_a_firewall_cannot_block() -> None:
    """The metadata rule blocks its networks; its host names are reported as not blocked."""
    plan = block_plan(policy("    network.cloud_metadata:\n      action: block\n"), NO_COUNTRIES, NOW)
    assert "169.254.169.254/32" in plan.networks
    assert any("host names" in note for note in plan.unenforced)


def country_rule(countries: str) -> Policy:
    return policy(
        "    network.restricted_country:\n      action: block\n"
        f"      params:\n        countries: [{countries}]\n"
    )


def test_countries_from_an_override_file_block_its_networks() -> None:
    """An override's networks for the country are blocked; a fallback that cannot list is reported."""
    lookup = OverrideCountries({"127.0.0.66": "KP", "198.51.100.0/24": "KP", "192.0.2.0/24": "IR"})
    plan = block_plan(country_rule("KP"), lookup, NOW)
    assert plan.networks == ("127.0.0.66/32", "198.51.100.0/24")
    assert plan.unenforced == ()  # the override's fallback (no countries) is complete
    offline = OverrideCountries({"127.0.0.66": "KP"}, fallback=OfflineCountries())
    plan = block_plan(country_rule("KP"), offline, NOW)
    assert plan.networks == ("127.0.0.66/32",)
    assert any("cannot list the networks of KP" in note for note in plan.unenforced)


def test_offline_country_data_cannot_block_and_says_so() -> None:
    """The offline data places single addresses only: nothing is blocked, and the plan says why."""
    plan = block_plan(country_rule("KP, IR"), OfflineCountries(), NOW)
    assert plan.networks == ()
    assert len([n for n in plan.unenforced if "not blocked" in n]) == 2


def test_countries_from_a_maxmind_database_block_their_public_networks(tmp_path: Path) -> None:
    """Every public network the database places in the country is blocked; private ones are not."""
    path = write_country_db(
        tmp_path / "c.mmdb",
        {
            "5.0.0.0/8": "KP",
            "6.0.0.0/8": "KP",
            "8.8.8.0/24": "DE",
            "10.0.0.0/8": "KP",
            "2a00:1450::/32": "KP",
        },
    )
    with MaxMindCountries(path) as lookup:
        plan = block_plan(country_rule("KP"), lookup, NOW)
    assert plan.networks == ("5.0.0.0/8", "6.0.0.0/8", "2a00:1450::/32")
    assert plan.unenforced == ()


@given(
    st.lists(st.ip_addresses(v=4).map(lambda a: f"{a}/{24}"), min_size=1, max_size=6),
    st.lists(st.ip_addresses(v=4), max_size=4),
)
def test_a_plan_blocks_exactly_the_listed_networks_minus_the_holes(
    networks: list[str], holes: list[str]
) -> None:
    """Every address is blocked iff some listed network holds it and no exception names it."""
    listed = [ipaddress.ip_network(n, strict=False) for n in networks]
    text = "".join(f"        - {{reason: r, destination: '{h}'}}\n" for h in holes)
    plan = block_plan(blocklist(", ".join(str(n) for n in listed), exceptions=text), NO_COUNTRIES, NOW)
    blocked = [ipaddress.ip_network(n) for n in plan.networks]
    probes = {ipaddress.ip_address(h) for h in holes} | {n.network_address for n in listed}
    probes |= {n.broadcast_address for n in listed}
    for probe in probes:
        expected = any(probe in n for n in listed) and probe not in {ipaddress.ip_address(h) for h in holes}
        assert any(probe in n for n in blocked) == expected, probe


@pytest.mark.parametrize("lookup", [NO_COUNTRIES, OverrideCountries({})])
def test_a_lookup_with_nothing_to_list_blocks_nothing(lookup: CountryLookup) -> None:
    """A country nobody places anywhere blocks nothing, and is not an error."""
    assert block_plan(country_rule("KP"), lookup, NOW).networks == ()


def test_an_exception_opens_only_its_own_rules_block() -> None:
    """A hole in the metadata rule does not unblock the same network listed by the blocklist."""
    both = policy(
        "    network.blocklisted_destination:\n      action: block\n"
        "      params:\n        networks: [10.0.0.0/8]\n"
        "    network.cloud_metadata:\n      action: block\n"
        "      params:\n        networks: [10.1.0.0/16]\n"
        "      exceptions:\n        - {reason: sdk, destination: 10.0.0.0/8}\n"
    )
    assert block_plan(both, NO_COUNTRIES, NOW).networks == ("10.0.0.0/8",)
