"""Validation of policy documents and messages: every problem, each with its field path."""

from __future__ import annotations

import textwrap

import pytest

from telltale.engine.errors import PolicyValidationError
from telltale.engine.policy import Policy, from_mapping, from_proto, parse_document, to_proto, validate
from telltale.v1 import policy_pb2

HEAD = """\
apiVersion: telltale.dev/v1
kind: AlertPolicy
metadata:
  name: Custom
"""


def doc(rules: str, head: str = HEAD) -> str:
    return head + "spec:\n  rules:\n" + textwrap.indent(textwrap.dedent(rules), "    ")


def problems(text: str) -> PolicyValidationError:
    with pytest.raises(PolicyValidationError) as caught:
        parse_document(text)
    return caught.value


R = "spec.rules."
SHELL = R + "process.shell_launched"
BLOCK = R + "network.blocklisted_destination"

BAD_DOCUMENTS = [
    pytest.param(
        HEAD.replace("v1", "v2") + "spec: {}\n", {"apiVersion": "'telltale.dev/v2'"}, id="api-version"
    ),
    pytest.param(HEAD.replace("AlertPolicy", "Policy") + "spec: {}\n", {"kind": "'Policy'"}, id="kind"),
    pytest.param(
        HEAD.replace("Custom", "-custom") + "spec: {}\n", {"metadata.name": "'-custom'"}, id="name-start"
    ),
    pytest.param(
        HEAD.replace("Custom", "x" * 64) + "spec: {}\n", {"metadata.name": "x" * 64}, id="name-long"
    ),
    pytest.param(HEAD.replace("Custom", "a/b") + "spec: {}\n", {"metadata.name": "'a/b'"}, id="name-slash"),
    pytest.param(HEAD.replace("Custom", "12") + "spec: {}\n", {"metadata.name": "12"}, id="name-not-text"),
    pytest.param(doc("process.nope: {}\n"), {R + "process.nope": "'process.nope'"}, id="unknown-type"),
    pytest.param(
        doc("process.shell_launched: {params: {shellz: [sh]}}\n"),
        {SHELL + ".params.shellz": "'shellz'"},
        id="unknown-param",
    ),
    pytest.param(
        doc("process.shell_launched: {params: {shells: bash}}\n"),
        {SHELL + ".params.shells": "'bash'"},
        id="list-param-given-text",
    ),
    pytest.param(
        doc("process.shell_launched: {params: {shells: [sh, 3, bash]}}\n"),
        {SHELL + ".params.shells[1]": "3"},
        id="list-item-type",
    ),
    pytest.param(
        doc("process.shell_launched: {params: {shells: [sh, bash, /bin/zsh]}}\n"),
        {SHELL + ".params.shells[2]": "'/bin/zsh'"},
        id="list-item-check",
    ),
    pytest.param(
        doc("network.privileged_port: {params: {max_port: '1023'}}\n"),
        {R + "network.privileged_port.params.max_port": "'1023'"},
        id="int-param-given-text",
    ),
    pytest.param(
        doc("network.privileged_port: {params: {max_port: true}}\n"),
        {R + "network.privileged_port.params.max_port": "true"},
        id="int-param-given-bool",
    ),
    pytest.param(
        doc("network.listen_all_interfaces: {params: {ignore_ports: [80, 70000]}}\n"),
        {R + "network.listen_all_interfaces.params.ignore_ports[1]": "70000"},
        id="port-range",
    ),
    pytest.param(
        doc("network.blocklisted_destination: {params: {networks: [10.0.0.0/8, 10.0.0.1/8, nonsense]}}\n"),
        {BLOCK + ".params.networks[1]": "'10.0.0.1/8'", BLOCK + ".params.networks[2]": "'nonsense'"},
        id="bad-cidrs",
    ),
    pytest.param(
        doc("process.shell_launched: {priority: P5}\n"), {SHELL + ".priority": "'P5'"}, id="priority"
    ),
    pytest.param(
        doc("process.shell_launched: {priority: 1}\n"), {SHELL + ".priority": "1"}, id="priority-int"
    ),
    pytest.param(doc("process.shell_launched: {action: deny}\n"), {SHELL + ".action": "'deny'"}, id="action"),
    pytest.param(
        doc("process.shell_launched: {action: block}\n"),
        {SHELL + ".action": "'block'"},
        id="block-not-blockable",
    ),
    pytest.param(
        doc("process.shell_launched: {enabled: 'yes'}\n"), {SHELL + ".enabled": "'yes'"}, id="enabled"
    ),
    pytest.param(HEAD + "extra: 1\nspec: {}\n", {"extra": "'extra'"}, id="unknown-top-key"),
    pytest.param(
        HEAD + "  labels: {a: b}\nspec: {}\n", {"metadata.labels": "'labels'"}, id="unknown-metadata-key"
    ),
    pytest.param(HEAD + "spec: {rules: {}, mode: x}\n", {"spec.mode": "'mode'"}, id="unknown-spec-key"),
    pytest.param(
        doc("process.shell_launched: {colour: red}\n"), {SHELL + ".colour": "'colour'"}, id="unknown-rule-key"
    ),
    pytest.param(
        doc("process.shell_launched: {exceptions: [{binary: /x, reason: r, owner: me}]}\n"),
        {SHELL + ".exceptions[0].owner": "'owner'"},
        id="unknown-exception-key",
    ),
    pytest.param(
        doc("process.shell_launched: {exceptions: [{binary: /x}]}\n"),
        {SHELL + ".exceptions[0].reason": "reason"},
        id="exception-without-reason",
    ),
    pytest.param(
        doc("process.shell_launched: {exceptions: [{binary: /x, reason: '  '}]}\n"),
        {SHELL + ".exceptions[0].reason": "reason"},
        id="exception-blank-reason",
    ),
    pytest.param(
        doc("process.shell_launched: {exceptions: [{reason: because}]}\n"),
        {SHELL + ".exceptions[0]": "at least one"},
        id="exception-without-scope",
    ),
    pytest.param(
        doc("process.shell_launched: {exceptions: [{binary: /x, reason: r, expires: tomorrow}]}\n"),
        {SHELL + ".exceptions[0].expires": "'tomorrow'"},
        id="expiry-text",
    ),
    pytest.param(
        doc("process.shell_launched: {exceptions: [{binary: /x, reason: r, expires: 2027-01-01}]}\n"),
        {SHELL + ".exceptions[0].expires": "'2027-01-01'"},
        id="expiry-date-only",
    ),
    pytest.param(
        doc(
            "process.shell_launched: {exceptions: [{binary: /x, reason: r, expires: 2027-02-30T00:00:00Z}]}\n"
        ),
        {SHELL + ".exceptions[0].expires": "'2027-02-30T00:00:00Z'"},
        id="expiry-impossible-date",
    ),
    pytest.param(
        doc("network.blocklisted_destination: {exceptions: [{destination: 10.0.0.300, reason: r}]}\n"),
        {BLOCK + ".exceptions[0].destination": "'10.0.0.300'"},
        id="exception-bad-destination",
    ),
    pytest.param(
        doc("process.shell_launched: {exceptions: [{destination: 10.0.0.0/8, reason: r}]}\n"),
        {SHELL + ".exceptions[0].destination": "process.shell_launched"},
        id="exception-scope-not-applicable",
    ),
    pytest.param(
        doc("process.shell_launched: {exceptions: {binary: /x, reason: r}}\n"),
        {SHELL + ".exceptions": "a list"},
        id="exceptions-not-a-list",
    ),
    pytest.param(
        doc("process.shell_launched: {}\nprocess.shell_launched: {enabled: false}\n"),
        {SHELL: "duplicate"},
        id="duplicate-rule",
    ),
    pytest.param(
        HEAD + "spec:\n  rules: [process.shell_launched]\n", {"spec.rules": "a list"}, id="rules-list"
    ),
    pytest.param(HEAD, {"spec": "missing"}, id="spec-missing"),
    pytest.param(
        "apiVersion: telltale.dev/v1\nkind: AlertPolicy\nspec: {}\n", {"metadata": "missing"}, id="meta"
    ),
    pytest.param(
        "apiVersion: telltale.dev/v1\nkind: AlertPolicy\nmetadata: {description: x}\nspec: {}\n",
        {"metadata.name": "missing"},
        id="name-missing",
    ),
    pytest.param(
        HEAD + "spec:\n  rules:\n    process.shell_launched: &r {}\n    node.workload_as_root: *r\n",
        {R + "node.workload_as_root": "aliases"},
        id="alias",
    ),
    pytest.param(HEAD + "spec: !!python/object:os.system {}\n", {"spec": "tag"}, id="python-tag"),
    pytest.param(
        HEAD + "spec: {rules: {network.privileged_port: {params: {max_port: !!int x}}}}\n",
        {R + "network.privileged_port.params.max_port": "'x'"},
        id="bad-explicit-tag",
    ),
    pytest.param("- a\n- b\n", {"": "a list"}, id="not-a-mapping"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_DOCUMENTS)
def test_invalid_document_reports_exact_field_paths(text: str, expected: dict[str, str]) -> None:
    """Each invalid document names exactly the offending fields, and each description shows the value."""
    error = problems(text)
    assert {v.field for v in error.violations} == set(expected), error
    for violation in error.violations:
        assert expected[violation.field] in violation.description


def test_document_with_three_problems_reports_all_three() -> None:
    """Validation does not stop at the first problem."""
    text = doc(
        """
        process.shell_launched:
          priority: P9
          params: {shells: [sh, /bin/bash]}
        network.privileged_port: {action: block}
        """
    )
    error = problems(text)
    assert [v.field for v in error.violations] == [
        SHELL + ".priority",
        SHELL + ".params.shells[1]",
        R + "network.privileged_port.action",
    ]
    assert "3 problems" in str(error)


def test_problems_carry_their_line() -> None:
    """Violations of a document end with the line of the offending field."""
    error = problems(doc("process.shell_launched:\n  params:\n    shells: [sh, 7]\n"))
    (violation,) = error.violations
    assert violation.description.endswith("(line 9)")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (HEAD + "spec:\n  rules: {\n", 7),
        (HEAD + "spec:\n  rules:\n    a: b\n   c: d\n", 8),
        ("apiVersion: [\n", 2),
    ],
)
def test_yaml_syntax_error_names_the_line(text: str, line: int) -> None:
    """A document that is not YAML is one problem of the whole document, with its line."""
    (violation,) = problems(text).violations
    assert violation.field == ""
    assert f"line {line}" in violation.description


def test_duplicate_key_names_both_lines() -> None:
    """A repeated key is reported at its second line, pointing at the first."""
    (violation,) = problems(
        doc("process.shell_launched: {}\nnode.workload_as_root: {}\nprocess.shell_launched: {}\n")
    ).violations
    assert violation.field == SHELL
    assert violation.description == "duplicate key 'process.shell_launched' (line 9; first at line 7)"


def test_empty_and_multi_document_text_are_rejected() -> None:
    """An empty text or several YAML documents are not a policy."""
    assert problems("").violations[0].field == ""
    assert "single document" in str(problems(HEAD + "spec: {}\n---\n" + HEAD + "spec: {}\n"))


def test_nothing_is_partially_accepted() -> None:
    """One bad rule rejects the whole document, valid rules included."""
    with pytest.raises(PolicyValidationError):
        parse_document(doc("process.shell_launched: {}\nnetwork.privileged_port: {params: {max_port: -1}}\n"))


def test_from_mapping_accepts_safe_load_output() -> None:
    """Data decoded by yaml.safe_load (timestamps as datetimes) validates like the document."""
    import yaml

    text = doc(
        "process.shell_launched: {exceptions: [{binary: /x, reason: r, expires: 2027-01-01T00:00:00Z}]}\n"
    )
    assert from_mapping(yaml.safe_load(text)) == parse_document(text)


# The wire form is validated the same way, with message field paths.


def _rule(**kwargs: object) -> policy_pb2.Rule:
    return policy_pb2.Rule(**kwargs)  # type: ignore[arg-type]


BAD_MESSAGES = [
    pytest.param(policy_pb2.Policy(name=" lead"), {"policy.name"}, id="name"),
    pytest.param(
        policy_pb2.Policy(
            name="P", rules=[_rule(alert_type="node.workload_as_root"), _rule(alert_type="x.y")]
        ),
        {"policy.rules[1].alert_type"},
        id="unknown-type",
    ),
    pytest.param(
        policy_pb2.Policy(name="P", rules=[_rule(alert_type="node.workload_as_root")] * 2),
        {"policy.rules[1].alert_type"},
        id="duplicate-rule",
    ),
    pytest.param(
        policy_pb2.Policy(
            name="P",
            rules=[
                _rule(alert_type="node.workload_as_root"),
                _rule(
                    alert_type="network.listen_all_interfaces",
                    params={
                        "ignore_ports": policy_pb2.ParamValue(strings=policy_pb2.StringList(values=["80"]))
                    },
                ),
            ],
        ),
        {"policy.rules[1].params.ignore_ports[0]"},
        id="param-type",
    ),
    pytest.param(
        policy_pb2.Policy(
            name="P",
            rules=[
                _rule(
                    alert_type="network.blocklisted_destination",
                    params={
                        "networks": policy_pb2.ParamValue(
                            strings=policy_pb2.StringList(values=["10.0.0.0/8", "x"])
                        ),
                        "ports": policy_pb2.ParamValue(int_value=1),
                    },
                ),
            ],
        ),
        {"policy.rules[0].params.networks[1]", "policy.rules[0].params.ports"},
        id="param-value-and-unknown",
    ),
    pytest.param(
        policy_pb2.Policy(
            name="P", rules=[_rule(alert_type="process.shell_launched", params={"shells": {}})]
        ),
        {"policy.rules[0].params.shells"},
        id="param-without-value",
    ),
    pytest.param(
        policy_pb2.Policy(
            name="P",
            rules=[
                _rule(alert_type="process.shell_launched", priority=9, action=policy_pb2.RULE_ACTION_BLOCK)
            ],
        ),
        {"policy.rules[0].priority", "policy.rules[0].action"},
        id="priority-and-block",
    ),
    pytest.param(
        policy_pb2.Policy(
            name="P",
            rules=[
                _rule(
                    alert_type="process.shell_launched",
                    exceptions=[
                        policy_pb2.RuleException(binary="/x"),
                        policy_pb2.RuleException(binary="/x", reason="r", expires_at={"nanos": -1}),
                    ],
                )
            ],
        ),
        {"policy.rules[0].exceptions[0].reason", "policy.rules[0].exceptions[1].expires_at"},
        id="exceptions",
    ),
]


@pytest.mark.parametrize(("message", "expected"), BAD_MESSAGES)
def test_invalid_message_reports_message_field_paths(message: policy_pb2.Policy, expected: set[str]) -> None:
    """A Policy message is validated like a document, with paths into the message."""
    with pytest.raises(PolicyValidationError) as caught:
        from_proto(message)
    assert {v.field for v in caught.value.violations} == expected


def test_message_paths_are_rooted_at_the_callers_field_name() -> None:
    """The caller names where the message sits in its request."""
    with pytest.raises(PolicyValidationError) as caught:
        from_proto(policy_pb2.Policy(name=""), field="request.policy")
    assert [v.field for v in caught.value.violations] == ["request.policy.name"]


def test_message_defaults_follow_the_catalog() -> None:
    """Unset priority, action and parameters take the catalog's defaults."""
    policy = from_proto(
        policy_pb2.Policy(name="P", rules=[_rule(alert_type="process.shell_launched", enabled=True)])
    )
    rule = policy.rules["process.shell_launched"]
    assert rule.priority == 2
    assert rule.action == policy_pb2.RULE_ACTION_ALERT
    assert "bash" in rule.params["shells"]  # type: ignore[operator]
    assert to_proto(policy).rules[0].params["shells"].strings.values[0] == "sh"


def test_validate_checks_a_policy_built_in_code() -> None:
    """A Policy assembled in code is checked with document paths."""
    with pytest.raises(PolicyValidationError) as caught:
        validate(Policy(name="bad name "))
    assert [v.field for v in caught.value.violations] == ["metadata.name"]
    assert validate(Policy(name="Good")) == Policy(name="Good")
