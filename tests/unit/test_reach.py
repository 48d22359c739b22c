"""A gate URL override may name only a Service of the rollout's namespace or a host the cluster admin allows."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from controller.api import parse_spec
from controller.api.reach import DEFAULT_GATE_HOSTS, check_gate_hosts, host_allowed, parse_host_patterns
from controller.cli.main import build_parser

RAW: dict[str, Any] = {"model": {"name": "nsfw", "version": "2"},
                       "target": {"kserve": {"inferenceService": "nsfw"}},
                       "canary": {"steps": [{"setWeight": 10}]},
                       "goldenDataset": {"uri": "configmap://golden/set.jsonl", "sha256": "ab" * 32}}


def spec_with(**urls: str) -> Any:
    raw = copy.deepcopy(RAW)
    raw["target"]["kserve"].update(urls)
    return parse_spec(raw)


@pytest.mark.parametrize(("host", "allowed"), [
    ("nsfw-predictor.team-a", False),  # for a namespace named like a TLD, public DNS answers a missing Service
    ("nsfw-predictor.team-a.svc.cluster.local", True),
    ("nsfw-predictor.team-a.svc", False),  # tried through the search list first: see below
    ("NSFW-Predictor.team-a.svc.cluster.local.", True),  # case and the root dot do not matter to DNS
    ("nsfw-predictor.team-b.svc.cluster.local", False),  # another namespace
    ("nsfw-predictor", False),  # resolves in the operator's own namespace, not the rollout's
    ("a.nsfw-predictor.team-a.svc.cluster.local", False),  # '*' is one label
    ("team-a.svc.cluster.local", False),
    ("10.0.0.7", False),  # any pod, in any namespace
    ("0.7", False),  # a short form of 0.0.0.7
    ("::1", False),
    ("evil.example", False),
    ("nsfw\u3002team-b\u3002svc.team-a.svc.cluster.local", False),  # the HTTP client reads U+3002 as "." (IDNA)
    ("nsfw\uff0eteam-a.svc.cluster.local", False),
    ("a" * 63 + ".team-a.svc.cluster.local", True),
    ("a" * 64 + ".team-a.svc.cluster.local", False),  # over 63 characters: IDNA refuses it when the gate calls
])
def test_only_services_of_the_rollouts_namespace_by_default(host: str, allowed: bool) -> None:
    assert host_allowed(host, "team-a", DEFAULT_GATE_HOSTS) is allowed


@pytest.mark.parametrize(("host", "namespace"), [
    ("10.0.0.7", "7"), ("127.0x1", "0x1"), ("10.0xa0001", "0xa0001"), ("0x7f.1", "1"), ("0.7", "7"),
])
def test_addresses_in_any_form_the_resolver_takes_are_not_names(host: str, namespace: str) -> None:
    # Even where an admin allows the bare "*.{namespace}": each of these is an address (inet_aton), not a name.
    assert not host_allowed(host, namespace, (*DEFAULT_GATE_HOSTS, "*.{namespace}"))
    assert host_allowed("svc.7.svc.cluster.local", "7", DEFAULT_GATE_HOSTS)
    for address in ("127.1", "0x7f.1", "2130706433", "017700000001"):
        assert not host_allowed(address, "team-a", ("127.0.0.1", "*.{namespace}.svc"))


def test_admin_patterns_add_hosts_with_the_namespace_filled_in() -> None:
    patterns = parse_host_patterns(" *.{namespace}.models.example.com , 127.0.0.1,[::1],")
    assert patterns == ("*.{namespace}.models.example.com", "127.0.0.1", "[::1]")
    assert host_allowed("nsfw.team-a.models.example.com", "team-a", patterns)
    assert not host_allowed("nsfw.team-b.models.example.com", "team-a", patterns)
    assert host_allowed("127.0.0.1", "team-a", patterns) and host_allowed("::1", "team-a", patterns)
    assert not host_allowed("127.0.0.2", "team-a", patterns)


@pytest.mark.parametrize("text", ["a_b", "*", "a.*.b", "**.x", "http://x", "x:80", "{ns}.svc"])
def test_a_pattern_that_is_not_one_is_refused_at_start_up(text: str) -> None:
    with pytest.raises(ValueError, match="not a host pattern"):
        parse_host_patterns(text)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["operator", "run", "--gate-hosts", text])


def test_operator_run_takes_gate_hosts() -> None:
    args = build_parser().parse_args(["operator", "run", "--gate-hosts", "127.0.0.1,*.{namespace}.example.com"])
    assert args.gate_hosts == ("127.0.0.1", "*.{namespace}.example.com")
    assert build_parser().parse_args(["operator", "run"]).gate_hosts == ()


def test_the_refusal_names_the_field_and_the_host() -> None:
    check_gate_hosts(spec_with(candidateUrl="http://nsfw-canary.team-a.svc.cluster.local:8080/v2",
                               stableUrl="http://nsfw.team-a.svc.cluster.local:80"), "team-a")
    with pytest.raises(ValueError) as refused:
        check_gate_hosts(spec_with(candidateUrl="http://nsfw-canary.team-a.svc.cluster.local",
                                   stableUrl="http://nsfw.team-b.svc.cluster.local/v2"), "team-a")
    assert refused.value.path == "spec.target.kserve.stableUrl"  # type: ignore[attr-defined]
    assert "'nsfw.team-b.svc.cluster.local'" in str(refused.value) and "--gate-hosts" in str(refused.value)
    check_gate_hosts(spec_with(candidateUrl="http://127.0.0.1:9000"), "team-a", ("127.0.0.1",))


@pytest.mark.parametrize("key", ["candidateUrl", "stableUrl"])
def test_a_short_svc_name_is_refused_because_another_namespace_can_answer_it(key: str) -> None:
    """With ndots:5 the resolver tries "nsfw.team-a.svc.svc.cluster.local" first, which CoreDNS answers as pod
    "nsfw" of Service "team-a" in a namespace named "svc": whoever owns that namespace would get the dataset."""
    with pytest.raises(ValueError) as refused:
        check_gate_hosts(spec_with(**{key: "http://nsfw.team-a.svc:8080/v2"}), "team-a")
    assert refused.value.path == f"spec.target.kserve.{key}"  # type: ignore[attr-defined]
    message = str(refused.value)
    assert "'nsfw.team-a.svc'" in message and "name.team-a.svc.cluster.local" in message
    assert "search list" in message and "another namespace" in message
    check_gate_hosts(spec_with(**{key: "http://nsfw.team-a.svc.cluster.local:8080/v2"}), "team-a")


def test_an_admin_may_still_allow_the_short_svc_form_explicitly() -> None:
    """The admin's choice (e.g. a cluster where no one can create a namespace named "svc"): honoured as given."""
    allowed = build_parser().parse_args(["operator", "run", "--gate-hosts", "*.{namespace}.svc"]).gate_hosts
    check_gate_hosts(spec_with(candidateUrl="http://nsfw.team-a.svc/v2",
                               stableUrl="http://nsfw.team-a.svc.cluster.local/v2"), "team-a", allowed)
    with pytest.raises(ValueError, match="stableUrl"):
        check_gate_hosts(spec_with(stableUrl="http://nsfw.team-b.svc/v2"), "team-a", allowed)
