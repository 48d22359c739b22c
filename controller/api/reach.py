"""Which hosts a rollout's golden gate may call.

A gate URL override (spec.target.kserve.candidateUrl / stableUrl) is user input. Without a rule, a rollout
could aim the operator's requests, golden dataset included, at a Service in another namespace, or at any pod
by its IP, and read the answers back as metrics. So an override must name a Service of the rollout's own
namespace by its full name (name.<namespace>.svc.cluster.local), or a host the cluster admin allows with
`operator run --gate-hosts`. URLs the operator reads from the target's own status are not overrides and are not
checked here.

Patterns are host names, with `{namespace}` standing for the rollout's namespace and a leading `*.` for
exactly one DNS label (as in a TLS wildcard). An IP address, in any form the resolver takes (127.1, 0x7f.1,
2130706433), matches only a pattern that spells it out. Hosts must be ASCII: the HTTP client maps some
Unicode dots to "." (IDNA), so a Unicode host is not the host it looks like.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from controller.api.spec import ModelRolloutSpec, SpecError

# A Service of the rollout's namespace, by its full cluster DNS name only. Not the bare "name.namespace": for
# a namespace named like a top-level domain (ml, ai, dev) a missing Service falls through to public DNS. Not
# "name.namespace.svc" either: it has fewer dots than ndots:5, so the search list is tried first, and
# "name.namespace.svc.svc.cluster.local" is pod "name" of Service "namespace" in a namespace named "svc".
# Another cluster domain is added with --gate-hosts.
DEFAULT_GATE_HOSTS = ("*.{namespace}.svc.cluster.local",)
# Why a short Service name is refused wherever the operator sends a request (gate, registry, Prometheus).
SHORT_SERVICE_WHY = "it is resolved through the search list, where another namespace (one named 'svc') can answer it"
_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"  # 1 to 63 characters: IDNA refuses longer ones
_HOST = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_PATTERN = re.compile(rf"^(\*\.)?({_LABEL}|\{{namespace\}})(\.({_LABEL}|\{{namespace\}}))*$|^\[[0-9a-f:.]+\]$")


def parse_host_patterns(text: str) -> tuple[str, ...]:
    """Comma-separated host patterns (the --gate-hosts flag), checked so that a typo fails at start-up."""
    patterns = tuple(p.strip().lower().rstrip(".") for p in text.split(",") if p.strip())
    for pattern in patterns:
        if not _PATTERN.match(pattern) and not _is_ip(pattern):
            raise ValueError(f"{pattern!r} is not a host pattern: host names of letters, digits and '-', "
                             "'{namespace}' for the rollout's namespace, and '*.' only as the first label")
    return patterns


def is_dns_name(host: str) -> bool:
    """A lowercase DNS name a resolver takes: labels of 1 to 63 characters, at most 253 in all."""
    return len(host) <= 253 and _HOST.match(host) is not None


def host_allowed(host: str, namespace: str, patterns: Iterable[str]) -> bool:
    host = host.lower().rstrip(".")
    if not host.isascii():
        return False
    literal = _is_ip(host) or not is_dns_name(host)
    for pattern in patterns:
        expected = pattern.replace("{namespace}", namespace).lower().rstrip(".")
        if expected.startswith("["):
            expected = expected[1:-1]
        if host == expected:
            return True
        if expected.startswith("*.") and not literal:
            first, _, rest = host.partition(".")
            if first and rest == expected[2:]:
                return True
    return False


def is_short_service_name(host: str) -> bool:
    """name.<namespace>.svc (or any name whose last label is svc): fewer dots than ndots:5, so tried through
    the search list first, as name.<namespace>.svc.svc.cluster.local among others (SHORT_SERVICE_WHY)."""
    host = host.lower().rstrip(".")
    return "." in host and host.rpartition(".")[2] == "svc"


def short_service_refusal(url: str) -> str | None:
    """Why `url` must not be called when its host is a short Service name, with the fix; None otherwise.

    For the URLs the operator sends credentials or trust to (registry, Prometheus); the gate's own rule is
    host_allowed with DEFAULT_GATE_HOSTS, which refuses the same names."""
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:
        return None  # not a URL: the caller's own parsing says so
    if not host or not is_short_service_name(host):
        return None
    name = host.rstrip(".")  # absolute (a root dot), it would leave the cluster's zone: refused alike
    return (f"host {name!r} is a short Service name, refused: {SHORT_SERVICE_WHY}; "
            f"write its full name, {name}.cluster.local")


def check_gate_hosts(spec: ModelRolloutSpec, namespace: str, allowed: Iterable[str] = ()) -> None:
    """Raise SpecError naming the field when a gate URL override leaves the rollout's namespace."""
    kserve = spec.target.kserve
    if kserve is None:
        return
    patterns = (*DEFAULT_GATE_HOSTS, *allowed)
    for key, url in (("candidateUrl", kserve.candidate_url), ("stableUrl", kserve.stable_url)):
        host = urlsplit(url).hostname if url else None
        if url and not host_allowed(host or "", namespace, patterns):
            raise SpecError(f"spec.target.kserve.{key}",
                            f"host {host!r} is not a Service of namespace {namespace} "
                            f"(name.{namespace}.svc.cluster.local; a short name.{namespace}.svc is refused: "
                            f"{SHORT_SERVICE_WHY}) and not among the hosts the operator allows (operator run "
                            "--gate-hosts)")


def _is_ip(host: str) -> bool:
    """An address, also in the short and hex forms the resolver accepts (inet_aton), never a name."""
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        pass
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True
