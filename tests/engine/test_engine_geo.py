"""Country lookups: offline data, a MaxMind database, override files, and their use by policies."""

from __future__ import annotations

from pathlib import Path

import pytest
from eventkit import NOW, SHOP_API, compiled, connect
from mmdbwriter import write_country_db

from telltale.engine.builtin import load_builtin_policies
from telltale.engine.countries import NO_COUNTRIES, CountryLookup
from telltale.engine.evaluate import PolicySet
from telltale.engine.geo import (
    MaxMindCountries,
    OfflineCountries,
    OverrideCountries,
    country_lookup,
    public_address,
)

NOT_PUBLIC = [
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",
    "127.0.0.1",
    "169.254.169.254",
    "224.0.0.251",
    "240.0.0.1",
    "255.255.255.255",
    "0.0.0.0",
    "192.0.2.1",
    "203.0.113.5",
    "::1",
    "::",
    "fe80::1%eth0",
    "fd00:ec2::254",
    "2001:db8::1",
    "ff02::1",
    "::ffff:10.0.0.1",
    "not an address",
    "",
]


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_non_public_addresses_have_no_country(address: str) -> None:
    """Private, shared, loopback, link-local, multicast, reserved and documentation ranges never map."""
    assert public_address(address) is None
    assert OfflineCountries().country(address) is None


@pytest.mark.parametrize(
    ("address", "code"),
    [("8.8.8.8", "US"), ("1.1.1.1", "AU"), ("2001:4860:4860::8888", "US"), ("::ffff:8.8.8.8", "US")],
)
def test_offline_countries_place_well_known_public_addresses(address: str, code: str) -> None:
    """The offline data places well-known public resolvers (no network access involved)."""
    assert OfflineCountries().country(address) == code


def test_public_address_is_canonical() -> None:
    """IPv4-mapped addresses give their IPv4 form; IPv6 text is compressed."""
    assert public_address("::ffff:8.8.8.8") == "8.8.8.8"
    assert public_address("2001:4860:4860:0:0:0:0:8888") == "2001:4860:4860::8888"


@pytest.fixture
def mmdb(tmp_path: Path) -> Path:
    return write_country_db(
        tmp_path / "countries.mmdb",
        {"8.8.8.0/24": "DE", "5.0.0.0/8": "kp", "2a00:1450::/32": "IE", "10.0.0.0/8": "FR"},
    )


def test_maxmind_countries_read_the_database(mmdb: Path) -> None:
    """Addresses in the database map to its codes (upper-cased); others, and private ones, to None."""
    with MaxMindCountries(mmdb) as lookup:
        assert lookup.country("8.8.8.8") == "DE"  # as the file says
        assert lookup.country("5.6.7.8") == "KP"
        assert lookup.country("2a00:1450::1") == "IE"
        assert lookup.country("9.9.9.9") is None
        assert lookup.country("10.1.1.1") is None  # private, even though the file lists it
        assert lookup.country("garbage") is None


def test_maxmind_countries_refuse_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    """A file that is not a MaxMind database fails at construction, not at lookup."""
    bogus = tmp_path / "bogus.mmdb"
    bogus.write_bytes(b"not a database")
    with pytest.raises((RuntimeError, ValueError)):
        MaxMindCountries(bogus)
    with pytest.raises(FileNotFoundError):
        MaxMindCountries(tmp_path / "missing.mmdb")


def test_override_wins_even_for_loopback_and_falls_back_otherwise() -> None:
    """Listed networks map as written (an override is explicit intent); the most specific wins."""
    lookup = OverrideCountries(
        {"127.0.0.0/8": "kp", "127.0.0.66": "IR", "8.8.8.8/32": "FR"}, OfflineCountries()
    )
    assert lookup.country("127.0.0.66") == "IR"
    assert lookup.country("127.0.0.1") == "KP"
    assert lookup.country("8.8.8.8") == "FR"
    assert lookup.country("1.1.1.1") == "AU"  # from the fallback
    assert lookup.country("10.0.0.1") is None  # the fallback keeps its own rule
    assert lookup.country("::ffff:127.0.0.66") == "IR"
    assert OverrideCountries({"127.0.0.0/8": "KP"}).country("1.1.1.1") is None


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"10.0.0.1/8": "KP"}, "not a CIDR"),
        ({"10.0.0.0/8": "KPX"}, "country code"),
        ({"x": "KP"}, "not a CIDR"),
    ],
)
def test_override_refuses_bad_entries(mapping: dict[str, str], message: str) -> None:
    """Invalid networks and codes are refused when the lookup is built."""
    with pytest.raises(ValueError, match=message):
        OverrideCountries(mapping)


def test_override_file_yaml_and_csv(tmp_path: Path) -> None:
    """Override files read as YAML (a mapping) or CSV (network,country lines)."""
    yaml_file = tmp_path / "countries.yaml"
    yaml_file.write_text("# demo\n127.0.0.0/8: NO\n'::1': ir\n")
    lookup = OverrideCountries.from_file(yaml_file)
    assert (lookup.country("127.0.0.5"), lookup.country("::1")) == ("NO", "IR")
    csv_file = tmp_path / "countries.csv"
    csv_file.write_text("network,country\n# demo addresses\n127.0.0.66/32, KP\n\n198.51.100.0/24,CU\n")
    lookup = OverrideCountries.from_file(csv_file)
    assert (lookup.country("127.0.0.66"), lookup.country("198.51.100.9")) == ("KP", "CU")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("o.csv", "127.0.0.1,KP,extra\n", "line 1"),
        ("o.csv", "127.0.0.1,KP\n127.0.0.1,IR\n", "line 2: '127.0.0.1' is listed twice"),
        ("o.yaml", "- 127.0.0.1\n", "mapping"),
        ("o.yaml", "127.0.0.1: [KP]\n", "expected text"),
        ("o.yaml", "a: [\n", "not valid YAML"),
        ("o.csv", "127.0.0.1,Korea\n", "country code"),
    ],
)
def test_override_file_errors_name_the_file_and_place(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    """A bad override file is refused with its name and what is wrong where."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as caught:
        OverrideCountries.from_file(path)
    assert str(path) in str(caught.value)


def test_country_lookup_follows_the_configuration(tmp_path: Path, mmdb: Path) -> None:
    """MaxMind when configured, the offline data otherwise, an override file in front of either."""
    assert isinstance(country_lookup(), OfflineCountries)
    configured = country_lookup(maxmind_path=mmdb)
    assert isinstance(configured, MaxMindCountries)
    assert configured.country("8.8.8.8") == "DE"
    configured.close()
    override = tmp_path / "o.csv"
    override.write_text("127.0.0.66,KP\n")
    both = country_lookup(maxmind_path=mmdb, override_path=override)
    assert (both.country("127.0.0.66"), both.country("8.8.8.8")) == ("KP", "DE")
    assert country_lookup(override_path=override).country("1.1.1.1") == "AU"


def test_lookups_satisfy_the_protocol(mmdb: Path) -> None:
    """Every lookup is a CountryLookup."""
    with MaxMindCountries(mmdb) as maxmind:
        for lookup in (NO_COUNTRIES, OfflineCountries(), maxmind, OverrideCountries({})):
            assert isinstance(lookup, CountryLookup)


def test_policy_set_hands_its_lookup_to_every_compiled_policy() -> None:
    """A demo maps a loopback address to a restricted country through the set's lookup, kept on updates."""
    policy = compiled("network.restricted_country: {params: {countries: [KP]}}\n").policy
    lookup = OverrideCountries({"127.0.0.66/32": "KP"})
    policies = PolicySet({"P": policy}, "P", {}, countries=lookup)
    (finding,) = policies.policy_for(SHOP_API).evaluate(connect("127.0.0.66"), SHOP_API, NOW)
    assert finding.subject == "KP"
    assert policies.updated(default="P").policy_for(SHOP_API).countries is lookup
    assert (
        PolicySet({"P": policy}, "P", {}).policy_for(SHOP_API).evaluate(connect("127.0.0.66"), SHOP_API, NOW)
        == []
    )


def test_max_alert_restricts_countries_through_offline_data() -> None:
    """Max Alert lists restricted countries; with the offline data a public resolver in the US stays quiet."""
    policies = PolicySet(load_builtin_policies(), "Max Alert", {}, countries=OfflineCountries())
    findings = policies.policy_for(SHOP_API).evaluate(connect("8.8.8.8"), SHOP_API, NOW)
    assert "network.restricted_country" not in {f.alert_type for f in findings}
