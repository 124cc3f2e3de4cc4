"""The workload descriptor and the environment `telltale run` gives a workload."""

from __future__ import annotations

from pathlib import Path

import pytest

from telltale.nodeagent import workload as descriptor
from telltale.nodeagent.launch import build_environment, new_workload
from telltale.v1 import common_pb2

SHIM = Path("/usr/lib/telltale/libtelltale_shim.so")
SOCKET = Path("/run/telltale/agent.sock")


def full_workload() -> common_pb2.Workload:
    workload = common_pb2.Workload(
        id="0123abcd",
        application="shop",
        component="api",
        version="1.4.2+build 7",
        environment="prod-eu",
        policy_override="Max Alert",
    )
    workload.tags["team"] = "payments"
    workload.tags["odd&key"] = "a=b&c%d e"
    return workload


def test_descriptor_round_trips_every_field_and_tag() -> None:
    workload = full_workload()
    decoded = descriptor.decode(descriptor.encode(workload))
    assert decoded == workload


def test_descriptor_leaves_out_empty_optional_fields() -> None:
    text = descriptor.encode(common_pb2.Workload(id="w1", application="shop"))
    assert text == "id=w1&app=shop"
    assert descriptor.decode(text) == common_pb2.Workload(id="w1", application="shop")


def test_descriptor_does_not_carry_what_only_the_launcher_knows() -> None:
    workload = common_pb2.Workload(id="w1", application="shop", command=["sleep", "1"], node_id="n1")
    decoded = descriptor.decode(descriptor.encode(workload))
    assert list(decoded.command) == []
    assert decoded.node_id == ""


def test_decoding_ignores_unknown_keys_and_tags_without_a_value() -> None:
    decoded = descriptor.decode("id=w1&app=shop&future=1&tag=novalue&tag=k%3Dv")
    assert dict(decoded.tags) == {"k": "v"}


@pytest.mark.parametrize("text", ["", "app=shop", "id=w1", "id=&app=shop", "garbage", "%%%"])
def test_a_descriptor_without_id_or_application_is_rejected(text: str) -> None:
    with pytest.raises(descriptor.DescriptorError, match="lacks an id or an application"):
        descriptor.decode(text)


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("id=w1&app=my+shop", "app"),
        ("id=w1&app=-shop", "app"),
        ("id=w1&app=" + "x" * 64, "app"),
        ("id=w1&app=shop&component=api%2Fv1", "component"),
        ("id=w1&app=shop&env=prod%0A", "env"),
    ],
)
def test_a_descriptor_with_an_invalid_name_is_rejected_naming_the_part(text: str, part: str) -> None:
    with pytest.raises(descriptor.DescriptorError, match=rf"^{part} "):
        descriptor.decode(text)


def test_a_descriptor_over_the_limit_is_rejected() -> None:
    workload = common_pb2.Workload(id="w1", application="shop")
    workload.tags["big"] = "x" * descriptor.MAX_DESCRIPTOR
    with pytest.raises(descriptor.DescriptorError, match=f"the limit is {descriptor.MAX_DESCRIPTOR}"):
        descriptor.encode(workload)


def test_a_descriptor_at_the_limit_is_accepted() -> None:
    workload = common_pb2.Workload(id="w1", application="shop")
    workload.tags["big"] = ""
    room = descriptor.MAX_DESCRIPTOR - len(descriptor.encode(workload))
    workload.tags["big"] = "x" * room
    assert len(descriptor.encode(workload)) == descriptor.MAX_DESCRIPTOR


@pytest.mark.parametrize("name", ["a", "shop", "shop-api_v1.2", "9lives", "x" * 63])
def test_valid_names_are_accepted(name: str) -> None:
    assert descriptor.check_name(name, "--app") == name


@pytest.mark.parametrize("name", ["-shop", ".hidden", "shop api", "shop/api", "shöp", "x" * 64, "a\nb"])
def test_invalid_names_are_rejected_naming_the_flag(name: str) -> None:
    with pytest.raises(descriptor.DescriptorError, match=r"^--component ") as info:
        descriptor.check_name(name, "--component")
    assert repr(name) in str(info.value)


@pytest.mark.parametrize("name", ["shop\n", "x" * 63 + "\n"], ids=["short", "longest"])
def test_a_name_with_a_trailing_newline_is_rejected(name: str) -> None:
    with pytest.raises(descriptor.DescriptorError, match=r"^--app "):
        descriptor.check_name(name, "--app")


def test_a_required_name_must_be_given() -> None:
    with pytest.raises(descriptor.DescriptorError, match="--app is required"):
        descriptor.check_name("", "--app", required=True)
    assert descriptor.check_name("", "--env") == ""


def test_new_workload_has_a_fresh_id_and_every_field() -> None:
    workload = new_workload(
        "shop",
        component="api",
        version="2.0",
        environment="prod",
        policy="Strict",
        tags={"team": "payments"},
        command=["gunicorn", "app:main"],
    )
    other = new_workload("shop")
    assert len(workload.id) == 32
    assert int(workload.id, 16) >= 0
    assert workload.id != other.id
    assert (workload.application, workload.component, workload.version) == ("shop", "api", "2.0")
    assert (workload.environment, workload.policy_override) == ("prod", "Strict")
    assert dict(workload.tags) == {"team": "payments"}
    assert list(workload.command) == ["gunicorn", "app:main"]
    assert workload.started_at.seconds > 0


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"application": ""}, "--app"),
        ({"application": "my app"}, "--app"),
        ({"application": "shop", "component": "-api"}, "--component"),
        ({"application": "shop", "environment": "prod/eu"}, "--env"),
    ],
)
def test_new_workload_rejects_bad_names(kwargs: dict[str, str], flag: str) -> None:
    application = kwargs.pop("application")
    with pytest.raises(descriptor.DescriptorError, match=rf"^{flag} "):
        new_workload(application, **kwargs)


def test_environment_puts_the_shim_first_and_keeps_other_preloads() -> None:
    base = {"PATH": "/usr/bin", "LD_PRELOAD": "/lib/libone.so:/lib/libtwo.so"}
    workload = full_workload()
    env = build_environment(base, workload, SOCKET, SHIM)
    assert env["LD_PRELOAD"].split() == [str(SHIM), "/lib/libone.so", "/lib/libtwo.so"]
    assert env["TELLTALE_SOCKET"] == str(SOCKET)
    assert descriptor.decode(env["TELLTALE_WORKLOAD"]) == workload
    assert env["PATH"] == "/usr/bin"
    assert base == {"PATH": "/usr/bin", "LD_PRELOAD": "/lib/libone.so:/lib/libtwo.so"}, "base is not changed"


def test_environment_lists_the_shim_once() -> None:
    base = {"LD_PRELOAD": f"/lib/libone.so {SHIM}"}
    env = build_environment(base, full_workload(), SOCKET, SHIM)
    assert env["LD_PRELOAD"].split() == [str(SHIM), "/lib/libone.so"]


def test_environment_without_preloads_holds_just_the_shim() -> None:
    env = build_environment({}, full_workload(), SOCKET, SHIM)
    assert env["LD_PRELOAD"] == str(SHIM)
    assert set(env) == {"LD_PRELOAD", "TELLTALE_SOCKET", "TELLTALE_WORKLOAD"}
