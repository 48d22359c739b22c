"""Kubernetes names derived from registry names. Here, under api, because the spec's parser refuses a model name no
object could carry, by the rule the routers name their objects with (controller.traffic imports controller.api)."""

from __future__ import annotations

import re

# A Kubernetes object name (a DNS subdomain) is at most this long: a longer Seldon Model cannot exist.
MAX_OBJECT_NAME_LENGTH = 253


def dns_label(text: str) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return label or "x"


def seldon_model_name(model_name: str, version: str) -> str:
    """The Seldon Core v2 Model a registry version is served as, unless the rollout names one."""
    return f"{dns_label(model_name)}-v{dns_label(version)}"


def serving_name_problem(model_name: str, version: str, which: str = "") -> str | None:
    """Why no Seldon Model can carry the name seldon_model_name gives `version` of `model_name` (None: one can);
    `which` names the version in the message. parse_spec asks with the spec's version, or for an alias with the
    shortest, "1" (refused: no version fits); the router's stage with the version resolved."""
    name = seldon_model_name(model_name, version)
    if len(name) <= MAX_OBJECT_NAME_LENGTH:
        return None
    return (f"gives {which or f'version {version}'} the Seldon Model name {name[:32]}... ({len(name)} characters: "
            f"the name in DNS-label form, -v<version>), over the {MAX_OBJECT_NAME_LENGTH} a Kubernetes object name "
            "may have, so no Model can carry it; register the model under a shorter name")
