"""Seldon Core v1 SeldonDeployment (stable + canary predictors) and Seldon Core v2 Experiment (weighted candidates).

Both keep their split in an atomic list (spec.predictors, spec.candidates): server-side apply can only
replace such a list whole, so the router owns the whole list. Each write re-reads the object, changes
only its own entries, and carries the resourceVersion it read, so a concurrent edit is never overwritten
blindly: it turns into a 409 and the operation is redone on fresh state.

Neither Seldon reports the traffic split in status, and neither sets status.observedGeneration (Seldon
Core v1's operator never writes it; Seldon Core v2's writes conditions only, dropping scheduler events
for an older generation). The weight reported by observe() is the one in the spec, taken as in effect
once written, whatever Seldon's readiness says (a known limit, in README); when a status does carry
observedGeneration it is honoured.

Seldon Core v1 (traffic of the non-shadow predictors sums to 100, at most one shadow):
  stage     a canary predictor, a copy of the stable one with the candidate's modelUri, traffic 0, without the
            seldon.io/svc-name annotation stable chose (both would share one Service), its component specs'
            metadata.name set after the candidate's version ("<containers>-v<version>"; a prepackaged server
            gets a component spec for it), so each candidate has Deployments of its own: under one name a
            rolling update keeps the previous candidate's pods available, read as the new candidate's. The
            candidate goes into the copy of stable's managed model node (as restore finds it; the first of a graph
            the router never wrote); refused, as restore is, when several model nodes and none can be told.
  set_weight  stable 100-N, canary N; refused while another non-shadow predictor carries traffic (as stage is).
  promote   the stable predictor takes the model the canary served (its model node's modelUri, the request logger's
            version) into the node of the name recorded in ANN_MODEL_NODE, else the node loading the stable
            modelUri recorded (else the first, if it is the canary's)
            and keeps the rest of its own as it is now (its graph and component specs with edits made during the
            canary, explainer, replicas, annotations),
            its component specs named after the candidate's version as the canary's are, so Seldon makes new
            Deployments for it (and deletes the old ones only once those are available); the canary predictor
            is removed: the names in the ModelRollout stay valid for the next rollout. Edits made to the
            canary's graph or component specs are not carried over.
  rollback  the canary predictor removed, any other non-shadow predictor whose model node loads the recorded
            candidate modelUri (the canary renamed by hand, a copy of it) kept at traffic 0, stable back to 100
            less the traffic of the remaining others (never refused for one: users must get off the candidate;
            only when theirs exceeds 100). observe counts such a predictor's traffic as the canary's weight (and
            reports the candidate as staged); stable loading the candidate's modelUri (a hand promotion) reads
            as the candidate serving as stable, which the engine undoes with a restore.
            The candidate's record goes in every case, also when no predictor changes (the canary gone).
  restore   (after a promotion) the stable predictor's modelUri set to the given version, its component specs
            named after that version as promote names them, so every version change makes new Deployments. The model
            node written is the one of the name recorded in ANN_MODEL_NODE (also when its model was changed by
            hand), else the one loading the modelUri recorded for stable (or the candidate's, promoted by hand),
            wherever it is in the graph (a model node put ahead of it since is left alone), else the only model
            node; with several and none of them told by name or URI, refused: which one serves users is unknown.
            observe reads stable's version from that same node.
  A canary predictor of the router's made `shadow: true` by hand serves no user (Seldon only mirrors requests to
  it): observe counts it 0% and says so, set_weight and promote refuse it; rollback and restore remove it.
  A predictor with the canary's name the router did not write (no candidate-version annotation; for stage also
  one whose modelUri changed since) is not the candidate: stage and set_weight refuse it and promote does not take
  it over. Its users' share still counts as the canary's weight, and rollback and restore keep it with no traffic
  (never deleted: it may be the user's; or the router's own whose annotation was removed by hand).
  Versions are recorded in the SeldonDeployment's metadata.annotations: Seldon copies spec.annotations and
  predictor annotations into the pod templates, so writing there would restart pods. Each with the modelUri
  it was written for: a predictor whose model node loads another modelUri serves an unknown version. The
  model node's request logger URL (graph logger.url), when set, gets model_version=<version> wherever the
  router writes a modelUri, so the prediction exporter counts each predictor under the version it serves.
  Readiness: status.state "Available" for the whole object; the canary predictor's own Deployments
  (status.deploymentStatus, exactly the names <sdep>-<predictor>-<index>-<metadata.name or containers>) all
  reported and available. So must stable's be while they are named after its version (a promotion's or a
  restore's): until then the previous version's pods serve, and the state may be the one Seldon wrote before
  the change, so stable's version reads as unknown and it is not ready.
  Inference URLs: each predictor's Service as Seldon reports it in status.serviceStatus (key
  <sdep>-<predictor>, or the predictor's seldon.io/svc-name annotation; httpEndpoint "host:port"), with
  the path of the SeldonDeployment's protocol, as Seldon builds status.address.url for the first
  predictor: v2 (and kfserving) /v2/models/<graph root name>/infer, tensorflow /v1/models/<name>:predict.
  For the Seldon protocol (/api/v1.0/predictions), which the gate does not speak, the bare service URL.
  The CRD declares a status subresource (v1.17.1: subresources.status), but whoever may write
  seldondeployments/status (Seldon's operator, and anyone granted it) sets the endpoints: an endpoint naming
  the predictor's own Service gives only its port (the URL names the Service by its full cluster DNS
  name); any other "host:port" is used only when the gate-host rule allows the host (controller.api.reach:
  a Service of the namespace by its full name, or operator run --gate-hosts); else no URL, and observe says why.

Seldon Core v2 (share of a candidate = its weight / sum of weights; weight 0 is allowed, and Seldon
requires the experiment's `default` model to stay among the candidates):
  stage     the candidate's Model added as a candidate with weight 0, stable's weight 100. The Model
            resource itself (storageUri, requirements) is deployed by whoever builds the model; the
            router refers to it by CandidateModel.serving_name, default "<model name>-v<version>" (DNS-label
            form; refused, naming spec.model.name, when over 253 characters: no Model can carry it).
  set_weight  stable 100-N, candidate N; refused beside a weighted model the router never wrote (as stage is).
  promote   candidate 100; the old stable leaves the candidates (kept at weight 0 if it is the default).
  rollback  the candidate removed (kept at 0 if it is the default), stable 100; so is any other model the
            router wrote (named in its model-versions annotation) that still carries weight. The candidate's
            record goes in every case, also when its model already left the candidates (an Argo CD sync); a model
            of its name that a later read of the same rollback finds back (another team's, added before the
            write landed: a 409) is left as it is, and its version record goes.
  restore   (after a promotion) the given version's Model back at 100, the router's others out.
  A model the router never wrote (another team's A/B split) is refused by stage and set_weight; rollback and
  restore leave its entry as it is, the kept model taking the weight of all the router's (not 100), so its share
  stays, and observe counts only the router's models in the canary's share.
  The model-versions annotation (Model name -> version) keeps only the models in the candidates written, the
  default, and on promotion the old stable (which a restore may bring back).
  An experiment Seldon's scheduler would refuse as written (a mirror among the candidates, a default not among
  them) is refused by stage, set_weight, promote and restore: Seldon keeps serving the previous one with Ready
  unchanged (rollback is never refused, and observe reports a refused one not ready).
  Only Experiments between Models are driven (spec.resourceType unset or "model"); one over pipelines, or one
  without a spec, is reported by observe and refused by every operation.
  Readiness: the conditions Ready and CandidatesReady, and a spec the scheduler would start (its error goes to a
  ModelReady condition Ready does not depend on, which its operator never clears: quoted, not relied on).
  Inference URLs: every Model is served through one Service, seldon-mesh, in the namespace of the
  Seldon runtime (the Experiment's own), which routes /v2/models/<model>/infer by model name (its envoy
  sets the seldon-model header from the path). The address is the Service's load balancer ingress, as
  Seldon's docs read it, else its cluster DNS name; when the Service cannot be read (the controller's
  role does not grant Services) the cluster DNS name with Seldon's port 80. While the candidate is at 0%
  the stable Model's URL reaches the stable Model alone; once the candidate has weight, requests for the
  experiment's default model are split by the experiment.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable
from urllib.parse import quote

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.api.naming import dns_label, seldon_model_name, serving_name_problem
from controller.api.reach import DEFAULT_GATE_HOSTS, host_allowed, is_dns_name
from controller.redaction import redacted_url
from controller.traffic.base import (
    ANNOTATION_PREFIX,
    CandidateModel,
    DeploymentMode,
    TargetState,
    TargetStateError,
    check_candidate_version,
    check_percent,
)
from controller.traffic.kserve import ANN_VERSION, ANN_VERSION_URI, logger_url_for
from controller.traffic.kube import (
    SELDON_DEPLOYMENT,
    SELDON_EXPERIMENT,
    Obj,
    ObjectClient,
    annotations_of,
    condition,
    condition_true,
    observed_generation,
    retry_on_conflict,
)

log = logging.getLogger(__name__)


def _synced(obj: Obj) -> bool:
    generation, observed = observed_generation(obj)
    return observed is None or observed >= generation  # unknown when the controller does not report it


def _condition_words(status: Obj, kind: str) -> str:
    """A condition's message, else its reason (Seldon Core v2 gives a reason and no message); "" when absent."""
    found = condition(status, kind) or {}
    return str(found.get("message") or found.get("reason") or "")


def _apply_with(oc: ObjectClient, build: Callable[[Obj], Obj | None], what: str) -> None:
    """Read, build the body on what was read (None: nothing to do), apply; again on a 409."""
    def once() -> None:
        body = build(oc.get())
        if body is not None:
            oc.apply(body)
    retry_on_conflict(once, what)


# --- Seldon Core v1 ----------------------------------------------------------------------------------


def _set_model(node: Obj, uri: str, version: str) -> None:
    """The node loads `uri`, and its request logger (if any) says it serves `version`."""
    node["modelUri"] = uri
    logger = node.get("logger")
    if isinstance(logger, dict) and isinstance(logger.get("url"), str) and logger["url"]:
        logger["url"] = logger_url_for(logger["url"], version)


def _model_node(graph: Obj) -> Obj | None:
    """The first graph node (root first, then children depth first) that loads a model from a URI."""
    return next(iter(_model_nodes(graph)), None)


def _model_nodes(graph: Obj) -> list[Obj]:
    """The graph nodes that load a model from a URI, root first, then children depth first."""
    return [u for u in _units(graph) if u.get("modelUri")]


def _node_loading(graph: Obj, *uris: str | None, name: str | None = None) -> Obj | None:
    """The model node the router wrote the first of `uris` into, wherever a hand edit has moved it (a model node put
    ahead of it): the node of the recorded `name`, if it still loads one of them (another model there was set by
    hand, even if a second node loads the same URI); with no node of that name (renamed, or written before names
    were recorded), the one node loading it, or the first model node if that does."""
    nodes = _model_nodes(graph)
    named = _named_node(nodes, name)
    for uri in filter(None, uris):
        if named is not None:
            if named.get("modelUri") == uri:
                return named
            continue
        loading = [n for n in nodes if n.get("modelUri") == uri]
        if len(loading) == 1 or (loading and loading[0] is nodes[0]):
            return loading[0]
    return None


def _node_to_write(graph: Obj, *uris: str | None, name: str | None = None) -> Obj | None:
    """The model node the router writes a model into: the one of the recorded `name`, even when pointed at another
    model by hand (it is still the node users reach through; observe reads that edit as an unknown version), else
    the one loading a recorded URI (`_node_loading`)."""
    return _named_node(_model_nodes(graph), name) or _node_loading(graph, *uris, name=name)


def _named_node(nodes: list[Obj], name: str | None) -> Obj | None:
    return next((n for n in nodes if name and n.get("name") == name), None)


ANN_CANDIDATE_VERSION = ANNOTATION_PREFIX + "candidate-version"
# The modelUri each version annotation was written for (ANN_VERSION's is ANN_VERSION_URI, as for KServe): a
# predictor edited outside the router keeps the annotation but not the model. Absent: written before this.
ANN_CANDIDATE_URI = ANNOTATION_PREFIX + "candidate-model-uri"
# The graph node the router loads the model into (stable's, and the canary's copy of it): a node put ahead of it, or
# a second node loading the same URI, is not it.
ANN_MODEL_NODE = ANNOTATION_PREFIX + "model-node"
ANN_SERVICE_NAME = "seldon.io/svc-name"  # a predictor annotation that names its Service


def seldon_name(name: str) -> str:
    """Seldon Core v1's rule for generated names: longer than 63 characters, "seldon-" + md5 of it."""
    return name if len(name) <= 63 else "seldon-" + hashlib.md5(name.encode(), usedforsecurity=False).hexdigest()


def deployment_names(deployment: str, predictor: Obj) -> list[str]:
    """The names Seldon Core v1 builds for a predictor's Deployments, before the 63-character rule: one per
    component spec with containers, then one per prepackaged server (a graph unit with an implementation and
    no container of its name)."""
    components = [c for c in predictor.get("componentSpecs") or [] if isinstance(c, dict)]
    containers = [((c.get("spec") or {}).get("containers") or []) for c in components]
    names = [f"{deployment}-{predictor['name']}-{index}-"
             + ((c.get("metadata") or {}).get("name") or "-".join(str(k.get("name")) for k in own))
             for index, (c, own) in enumerate(zip(components, containers, strict=True)) if own]
    declared = {k.get("name") for own in containers for k in own}
    servers = [u for u in _units(predictor.get("graph") or {})
               if u.get("implementation") not in (None, "", "UNKNOWN_IMPLEMENTATION") and u.get("name") not in declared]
    names += [f"{deployment}-{predictor['name']}-{len(components) + i}-{u.get('name')}" for i, u in enumerate(servers)]
    return names


def _units(graph: Obj) -> list[Obj]:
    return [graph, *(u for child in graph.get("children") or [] if isinstance(child, dict) for u in _units(child))]


def _version_components(predictor: Obj, version: str) -> None:
    """Name the predictor's Deployments after `version` (<sdep>-<predictor>-<index>-<metadata.name>), so each
    candidate gets new Deployments: under one name a rolling update keeps the previous candidate's pods
    available, and its status would read as the new candidate's. A prepackaged server without a component
    spec gets one (a container of its unit's name is where Seldon puts the server), to carry the name."""
    label = dns_label(version)
    if label != version:  # "1.2" and "1-2" would share a label
        label += "-" + hashlib.md5(version.encode(), usedforsecurity=False).hexdigest()[:8]
    components = [c for c in predictor.get("componentSpecs") or [] if isinstance(c, dict)]
    declared = {k.get("name") for c in components for k in (c.get("spec") or {}).get("containers") or []}
    servers = [u for u in _units(predictor.get("graph") or {})
               if u.get("implementation") not in (None, "", "UNKNOWN_IMPLEMENTATION") and u.get("name") not in declared]
    if servers:
        added = [{"spec": {"containers": [{"name": u.get("name")}]}} for u in servers]
        predictor["componentSpecs"] = [*(predictor.get("componentSpecs") or []), *added]
        components += added
    for component in components:
        containers = (component.get("spec") or {}).get("containers") or []
        if containers:
            own = "-".join(str(k.get("name")) for k in containers)
            component["metadata"] = {**(component.get("metadata") or {}), "name": f"{own}-v{label}"}


def _version_for(ann: dict[str, str], predictor: Obj | None, version_key: str, uri_key: str) -> tuple[str | None, str]:
    """The version annotation as the version `predictor` serves, and what is wrong with it: one recorded for
    another modelUri is unknown (None). KServe's rule (kserve._version_for), in Seldon's words."""
    version, recorded = ann.get(version_key) or None, ann.get(uri_key) or None
    graph = (predictor or {}).get("graph") or {}
    # The node the router wrote `recorded` into, wherever it is now: a model node put ahead of it is not it.
    if predictor is None or version is None or recorded is None \
            or _node_loading(graph, recorded, name=ann.get(ANN_MODEL_NODE)) is not None:
        return version, ""
    nodes = _model_nodes(graph)
    loads = redacted_url(str(nodes[0].get("modelUri"))) if len(nodes) == 1 else ", ".join(
        f"{redacted_url(str(n.get('modelUri')))} in node {n.get('name')!r}" for n in nodes) or "no model"
    return None, (f"modelUri changed outside ModelRollout: predictor {predictor.get('name')} loads {loads}, not "
                  f"{redacted_url(recorded)} (version {version}), so the version it serves is unknown")


def predictor_service(deployment: str, predictor: Obj) -> str:
    """The Service Seldon Core v1 makes for a predictor (GetPredictorKey): the key in status.serviceStatus."""
    custom = (predictor.get("annotations") or {}).get(ANN_SERVICE_NAME)
    return custom or seldon_name(f"{deployment}-{predictor['name']}")


def _shadow_words(predictor: str, target: str) -> str:
    return (f"predictor {predictor} of {target} is a shadow (shadow: true, set outside ModelRollout): Seldon mirrors "
            "requests to it and serves no user from it")


# httpEndpoint as Seldon writes it, "host:port" and nothing else: no userinfo, path, query or fragment to carry.
_ENDPOINT = re.compile(r"(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})")


class SeldonDeploymentRouter:
    def __init__(self, api_client: client.ApiClient, namespace: str, name: str, stable_predictor: str,
                 canary_predictor: str, *, gate_hosts: Iterable[str] = ()) -> None:
        """gate_hosts: the hosts the operator allows beside the namespace's Services (operator run --gate-hosts)."""
        if stable_predictor == canary_predictor:
            raise ValueError("the canary predictor must differ from the stable predictor")
        self.client = ObjectClient(api_client, SELDON_DEPLOYMENT, namespace, name)
        self.stable_predictor = stable_predictor
        self.canary_predictor = canary_predictor
        self.gate_hosts = tuple(gate_hosts)

    @property
    def target(self) -> str:
        return self.client.description

    def _spec(self, obj: Obj) -> Obj:
        spec: Obj = obj.get("spec") or {}
        if not spec:  # the CRD does not require one; a KeyError would escape the runtime and be retried for ever
            raise TargetStateError(f"{self.target} has no spec")
        return spec

    def _find(self, obj: Obj, name: str) -> Obj | None:
        return next((p for p in self._spec(obj).get("predictors") or [] if p.get("name") == name), None)

    def _stable(self, obj: Obj) -> Obj:
        stable = self._find(obj, self.stable_predictor)
        if stable is None:
            raise TargetStateError(f"{self.target} has no predictor named {self.stable_predictor}")
        return stable

    def _own_canary(self, obj: Obj) -> Obj | None:
        """The canary predictor, if this router wrote it: stage records the candidate's version beside it (and
        promote, rollback and restore remove both). One of that name without it is the user's (their own canary,
        a shadow): not the candidate, and not the router's to move or remove."""
        canary = self._find(obj, self.canary_predictor)
        return canary if canary is not None and annotations_of(obj).get(ANN_CANDIDATE_VERSION) else None

    def _foreign_canary_share(self, obj: Obj) -> int:
        """Users' share on a canary-named predictor the router did not write (a shadow serves none)."""
        canary = self._find(obj, self.canary_predictor)
        if canary is None or canary.get("shadow") or self._own_canary(obj) is not None:
            return 0
        return int(canary.get("traffic") or 0)

    def _candidate_elsewhere(self, obj: Obj) -> dict[str, int]:
        """Traffic of the non-shadow predictors other than stable and the canary whose model node loads the
        recorded candidate (the canary renamed by hand, or a copy of it), by name: its users are on the
        candidate all the same, so they count as the canary's and a rollback takes them off."""
        uri = annotations_of(obj).get(ANN_CANDIDATE_URI)
        if not uri:
            return {}
        found: dict[str, int] = {}
        for predictor in self._spec(obj).get("predictors") or []:
            if predictor.get("name") in (self.stable_predictor, self.canary_predictor) or predictor.get("shadow"):
                continue
            node = _model_node(predictor.get("graph") or {})
            if node is not None and node.get("modelUri") == uri and int(predictor.get("traffic") or 0) > 0:
                found[str(predictor.get("name"))] = int(predictor.get("traffic") or 0)
        return found

    def _off_foreign_canary(self, obj: Obj) -> Obj | None:
        """A canary-named predictor the router did not write, with no traffic: kept (it may be the user's, with
        their model and replicas, or the router's own whose record was removed by hand), but users get off it."""
        canary = self._find(obj, self.canary_predictor)
        if canary is None or self._own_canary(obj) is not None:
            return None
        kept = copy.deepcopy(canary)
        if not kept.get("shadow"):
            kept["traffic"] = 0
        return kept

    def _refuse_foreign_canary(self, obj: Obj, edited: bool = False) -> None:
        """Writing the canary predictor over one the router did not write would lose the user's model, replicas and
        shadow. `edited`: also one whose modelUri changed since stage wrote it (which model it is, is unknown)."""
        canary = self._find(obj, self.canary_predictor)
        if canary is None:
            return
        why = _version_for(annotations_of(obj), canary, ANN_CANDIDATE_VERSION, ANN_CANDIDATE_URI)[1] if edited else ""
        if self._own_canary(obj) is not None and not why:
            return
        raise TargetStateError(f"predictor {self.canary_predictor} of {self.target} exists and was not written by "
                               "ModelRollout" + (f" as it stands ({why})" if why else "")
                               + "; choose another spec.target.seldonDeployment.canaryPredictor")

    def observe(self) -> TargetState:
        obj = self.client.get_or_none()
        if obj is None:
            return TargetState(target=self.target, exists=False, message=f"{self.target} not found")
        status = obj.get("status") or {}
        ann = annotations_of(obj)
        stable = self._find(obj, self.stable_predictor)
        canary = self._own_canary(obj)
        foreign_share = self._foreign_canary_share(obj)
        elsewhere = self._candidate_elsewhere(obj)
        synced = _synced(obj)
        stable_version, changed = _version_for(ann, stable, ANN_VERSION, ANN_VERSION_URI)
        if self._loads_candidate(ann, stable):
            # The candidate written into stable by hand (promoted outside ModelRollout): it serves as stable, so a
            # rollback restores stable instead of reading the canary's absence as users back on it.
            stable_version = ann[ANN_CANDIDATE_VERSION]
            changed = (f"stable predictor {self.stable_predictor} loads the candidate's modelUri (version "
                       f"{stable_version}): promoted outside ModelRollout?")
        rolling = stable is not None and stable_version is not None and self._rolling_out(obj, stable, stable_version)
        ready = status.get("state") == "Available" and stable is not None and not rolling
        problems = []
        if status.get("state") != "Available":
            problems.append(f"state {status.get('state') or 'unknown'}"
                            + (f": {status['description']}" if status.get("description") else ""))
        if stable is None:
            problems.append(f"no predictor named {self.stable_predictor}")
        if rolling:
            problems.append(f"stable predictor {self.stable_predictor}: the Deployments of version {stable_version} "
                            "are not available yet (the previous version's pods still serve)")
        canary_ready = canary is not None and synced and ready and self._deployments_available(obj, canary)
        if canary is not None and not canary_ready:
            problems.append(f"canary predictor {self.canary_predictor} is not available yet")
        canary_version, canary_changed = _version_for(ann, canary, ANN_CANDIDATE_VERSION, ANN_CANDIDATE_URI)
        problems += [p for p in (changed, canary_changed) if p]
        if canary is not None and canary.get("shadow"):
            # Still the staged candidate (a rollback removes it), but Seldon only mirrors requests to a shadow and
            # answers users from the other predictors: its traffic is no user's.
            problems.append(_shadow_words(self.canary_predictor, self.target)
                            + f", so the candidate serves 0% of users (its traffic {int(canary.get('traffic') or 0)} "
                            "is not counted)")
        if foreign_share:
            problems.append(f"predictor {self.canary_predictor} carries {foreign_share}% of traffic and was not "
                            "written by ModelRollout (or its record was removed)")
        if elsewhere:
            problems.append("predictor " + ", ".join(f"{n} ({t}%)" for n, t in elsewhere.items())
                            + f" serves the candidate ({redacted_url(ann[ANN_CANDIDATE_URI])}) under another name than "
                            f"{self.canary_predictor}: its traffic counts as the canary's")
        # A canary-named predictor it did not write still counts, and so does the candidate under another name:
        # users on either are not back on stable.
        weight = ((0 if canary.get("shadow") else int(canary.get("traffic") or 0)) if canary else foreign_share) \
            + sum(elsewhere.values())
        canary_weight = weight if canary is not None or weight else None
        stable_url, stable_refused = self._url(obj, stable) if stable else (None, "")
        canary_url, canary_refused = self._url(obj, canary) if canary else (None, "")
        problems += [p for p in (stable_refused, canary_refused) if p]
        return TargetState(
            target=self.target, exists=True, mode=DeploymentMode.SELDON_DEPLOYMENT, synced=synced, ready=ready,
            stable_version=None if rolling else stable_version, stable_name=self.stable_predictor,
            # The candidate under another name (the canary renamed by hand) is still staged: a rollback takes it off.
            stable_url=stable_url, canary_version=canary_version if canary else (
                ann.get(ANN_CANDIDATE_VERSION) if elsewhere else None),
            canary_name=self.canary_predictor if canary else None, canary_ready=canary_ready,
            canary_weight=canary_weight,
            canary_url=canary_url, message="; ".join(problems))

    @staticmethod
    def _loads_candidate(ann: dict[str, str], stable: Obj | None) -> bool:
        """Whether a model node of stable loads the recorded candidate's modelUri: stage refuses a candidate with
        stable's URI, and promote and restore clear the record, so only a hand edit makes this so."""
        uri = ann.get(ANN_CANDIDATE_URI)
        return bool(uri and ann.get(ANN_CANDIDATE_VERSION)
                    and _node_loading((stable or {}).get("graph") or {}, uri, name=ann.get(ANN_MODEL_NODE)))

    def _rolling_out(self, obj: Obj, stable: Obj, version: str) -> bool:
        """Stable's Deployments are named after `version` (promote names them so) and not all available yet.
        Only new names tell: a Deployment rolled in place keeps reporting its old pods available."""
        sdep = obj["metadata"]["name"]
        named = copy.deepcopy(stable)
        _version_components(named, version)  # names from the containers: the same as promote's
        names = deployment_names(sdep, stable)
        return bool(names) and names == deployment_names(sdep, named) and not self._deployments_available(obj, stable)

    @staticmethod
    def _deployments_available(obj: Obj, canary: Obj) -> bool:
        # Exactly the Deployments Seldon makes for the canary as specified (named after its candidate's version
        # by stage), each reported available: a name prefix would take in another predictor's, and an older
        # candidate's Deployments are not this one's.
        sdep = obj["metadata"]["name"]
        reported = (obj.get("status") or {}).get("deploymentStatus") or {}
        expected = {seldon_name(name) for name in deployment_names(sdep, canary)}
        found = [reported.get(name) for name in expected]
        return bool(expected) and all(
            isinstance(d, dict) and int(d.get("availableReplicas") or 0) >= max(int(d.get("replicas") or 0), 1)
            for d in found)

    def _base_url(self, service: str, endpoint: str) -> str | None:
        """http://host:port for a reported httpEndpoint, None when the gate may not call it. Seldon writes
        "<service>.<namespace>:<port>": that host is rebuilt as the full cluster DNS name (the short one falls
        through to public DNS for a namespace named like a top-level domain, see controller.api.reach)."""
        found = _ENDPOINT.fullmatch(endpoint)
        if found is None or not 0 < int(found["port"]) < 65536:
            return None
        host, port, namespace = found["host"].lower().rstrip("."), int(found["port"]), self.client.namespace
        own = f"{service}.{namespace}"
        if is_dns_name(service) and "." not in service and host in (own, f"{own}.svc", f"{own}.svc.cluster.local"):
            return f"http://{own}.svc.cluster.local:{port}"
        if host_allowed(host.strip("[]"), namespace, (*DEFAULT_GATE_HOSTS, *self.gate_hosts)):
            return f"http://{host}:{port}"
        return None

    def _url(self, obj: Obj, predictor: Obj) -> tuple[str | None, str]:
        """The predictor's inference URL (its Service from status.serviceStatus, the protocol's path), and why
        there is none when the reported endpoint is refused."""
        services = (obj.get("status") or {}).get("serviceStatus") or {}
        service = predictor_service(obj["metadata"]["name"], predictor)
        endpoint = (services.get(service) or {}).get("httpEndpoint")
        if not endpoint:
            return None, ""
        base = self._base_url(service, str(endpoint))
        if base is None:
            # Without its user:password@ the endpoint would read as another one: such a one is not shown.
            shown = "with user information" if "@" in str(endpoint) else \
                repr(redacted_url(f"http://{endpoint}").removeprefix("http://")[:120])
            return None, (f"the gate does not call predictor {predictor.get('name')}: its status.serviceStatus "
                          f"httpEndpoint {shown} is not the predictor's Service of namespace "
                          f"{self.client.namespace} ({service}.{self.client.namespace}:<port>), nor another of its "
                          f"Services by full name (<service>.{self.client.namespace}.svc.cluster.local:<port>), nor a "
                          "host the operator allows (operator run --gate-hosts)")
        graph_name = (predictor.get("graph") or {}).get("name")
        if graph_name:
            graph_name = quote(str(graph_name), safe="")  # a path segment, whatever the spec holds
        protocol = obj["spec"].get("protocol") or "seldon"
        if graph_name and protocol in ("v2", "kfserving"):
            return f"{base}/v2/models/{graph_name}/infer", ""
        if graph_name and protocol == "tensorflow":
            return f"{base}/v1/models/{graph_name}:predict", ""
        return base, ""

    def _body(self, obj: Obj, stable: Obj, canary: Obj | None, annotations: dict[str, str | None],
              off: Iterable[str] = ()) -> Obj:
        """The whole predictor list (stable and canary replaced in place, the canary right after stable, the
        predictors named in `off` kept with traffic 0) and the router's annotations."""
        predictors: list[Obj] = []
        for predictor in obj["spec"].get("predictors") or []:
            if predictor.get("name") == self.stable_predictor:
                predictors.append(stable)
                if canary is not None:
                    predictors.append(canary)
            elif predictor.get("name") in off:
                predictors.append({**predictor, "traffic": 0})
            elif predictor.get("name") != self.canary_predictor:
                predictors.append(predictor)
        body = self.client.skeleton(obj["metadata"]["resourceVersion"])
        body["metadata"]["annotations"] = {k: v for k, v in annotations.items() if v is not None}
        body["spec"] = {"predictors": predictors}
        return body

    @staticmethod
    def _owned(obj: Obj) -> dict[str, str | None]:
        ann = annotations_of(obj)
        return {k: ann.get(k) for k in (ANN_VERSION, ANN_VERSION_URI, ANN_CANDIDATE_VERSION, ANN_CANDIDATE_URI,
                                        ANN_MODEL_NODE)}

    def stage(self, candidate: CandidateModel, stable_version: str | None = None) -> None:
        def build(obj: Obj) -> Obj:
            stable = copy.deepcopy(self._stable(obj))
            self._refuse_foreign_canary(obj, edited=True)
            others = [p for p in self._spec(obj).get("predictors") or []
                      if p.get("name") not in (self.stable_predictor, self.canary_predictor)
                      and not p.get("shadow") and int(p.get("traffic") or 0) > 0]
            if others:
                raise TargetStateError(f"{self.target} splits traffic with predictors ModelRollout does not manage: "
                                       + ", ".join(p["name"] for p in others))
            # The node the router loaded stable's model into (promote or restore), wherever a hand edit moved it;
            # the first of a graph it never wrote. A model node put ahead of the classifier keeps its own model.
            nodes = _model_nodes(stable["graph"])
            node = self._managed_node(obj, stable, f"cannot stage version {candidate.version}",
                                      unrecorded_first=True)
            if node["modelUri"] == candidate.storage_uri:
                raise TargetStateError(f"candidate {candidate.version} has the stable model's URI "
                                       f"{redacted_url(str(node['modelUri']))}")
            canary = copy.deepcopy(stable)
            for key in ("shadow", "explainer"):
                canary.pop(key, None)
            # A name stable chose for its Service would be the canary's too: they would share it. Its Deployments
            # are named after the candidate instead (which also replaces names stable chose for them).
            (canary.get("annotations") or {}).pop(ANN_SERVICE_NAME, None)
            _version_components(canary, candidate.version)
            canary["name"] = self.canary_predictor
            canary["traffic"] = 0
            # The same node in the copy: the copy's model nodes are stable's, in the same order.
            canary_node = _model_nodes(canary["graph"])[next(i for i, n in enumerate(nodes) if n is node)]
            _set_model(canary_node, candidate.storage_uri, candidate.version)
            stable["traffic"] = 100
            annotations = self._owned(obj)
            # A version recorded for another modelUri is unknown: the engine's hint is better than it.
            annotations[ANN_VERSION] = _version_for(annotations_of(obj), stable, ANN_VERSION, ANN_VERSION_URI)[0] \
                or stable_version
            annotations[ANN_VERSION_URI] = node["modelUri"] if annotations[ANN_VERSION] else None
            annotations[ANN_CANDIDATE_VERSION] = candidate.version
            annotations[ANN_CANDIDATE_URI] = candidate.storage_uri
            annotations[ANN_MODEL_NODE] = node.get("name")
            return self._body(obj, stable, canary, annotations)
        _apply_with(self.client, build, f"staging on {self.target}")

    def _unmanaged_traffic(self, obj: Obj) -> dict[str, int]:
        """Traffic of the non-shadow predictors other than stable and canary, by name (those carrying any)."""
        others = {p.get("name"): int(p.get("traffic") or 0) for p in self._spec(obj).get("predictors") or []
                  if p.get("name") not in (self.stable_predictor, self.canary_predictor) and not p.get("shadow")}
        return {str(name): traffic for name, traffic in others.items() if traffic > 0}

    def _stable_share(self, obj: Obj, doing: str, until_fixed: str, off: Iterable[str] = ()) -> int:
        """Stable's traffic when the canary's (and that of the predictors named in `off`) goes to it. Not refused
        beside another predictor (users must get off the candidate, or onto the promoted model): theirs stays, so
        the non-shadow traffic still sums to 100."""
        others = {n: t for n, t in self._unmanaged_traffic(obj).items() if n not in off}
        if sum(others.values()) > 100:
            raise TargetStateError(
                f"cannot {doing} on {self.target}: predictors ModelRollout does not manage carry "
                f"{sum(others.values())}% traffic (" + ", ".join(f"{n} {t}%" for n, t in others.items())
                + f"), more than 100, so no split without the canary sums to 100; {until_fixed} until their "
                "traffic is fixed")
        return 100 - sum(others.values())

    def set_weight(self, percent: int, candidate_version: str | None = None) -> None:
        check_percent(percent)

        def build(obj: Obj) -> Obj:
            self._refuse_foreign_canary(obj)  # an edited modelUri: check_candidate_version says why
            canary = self._find(obj, self.canary_predictor)
            if canary is None:
                raise TargetStateError(f"no candidate is staged on {self.target}")
            staged, unknown_why = _version_for(annotations_of(obj), canary, ANN_CANDIDATE_VERSION, ANN_CANDIDATE_URI)
            check_candidate_version(self.target, staged, candidate_version, unknown_why)
            if canary.get("shadow"):
                # Its N% would be mirrored, not served, and stable's 100-N the only non-shadow traffic: users lost.
                raise TargetStateError(f"cannot set the canary to {percent}%: " + _shadow_words(
                    self.canary_predictor, self.target) + "; remove shadow from it, or roll back")
            # Stable 100-N and canary N beside another predictor's traffic would not sum to 100.
            if others := self._unmanaged_traffic(obj):
                raise TargetStateError(f"cannot set the canary to {percent}%: {self.target} splits traffic with "
                                       "predictors ModelRollout does not manage: "
                                       + ", ".join(f"{n} ({t}%)" for n, t in others.items()))
            stable, canary = copy.deepcopy(self._stable(obj)), copy.deepcopy(canary)
            stable["traffic"], canary["traffic"] = 100 - percent, percent
            return self._body(obj, stable, canary, self._owned(obj))
        _apply_with(self.client, build, f"setting the weight on {self.target}")

    def promote(self) -> None:
        def build(obj: Obj) -> Obj | None:
            canary = self._own_canary(obj)
            annotations = self._owned(obj)
            if canary is None:
                if annotations[ANN_CANDIDATE_VERSION]:  # staged, and its predictor gone (renamed, deleted)
                    elsewhere = self._candidate_elsewhere(obj)
                    raise TargetStateError(
                        f"cannot promote: the staged candidate's predictor {self.canary_predictor} is gone from "
                        f"{self.target}" + (f" (predictor {', '.join(elsewhere)} serves the candidate)"
                                            if elsewhere else ""))
                if annotations[ANN_VERSION]:
                    return None  # promoted already
                raise TargetStateError(f"cannot promote: no candidate is staged on {self.target}")
            if canary.get("shadow"):
                # No user was served by the candidate since (its weight was never carried): not judged on them.
                raise TargetStateError("cannot promote: " + _shadow_words(self.canary_predictor, self.target)
                                       + "; remove shadow from it and let the steps run, or roll back")
            # Stable keeps what is its own as it is now (its graph and component specs with the edits made during
            # the canary, explainer, replicas, annotations) and takes the model the canary served: the modelUri of
            # its model node, the one thing of the graph stage changed (with the logger's version, as restore
            # does). The canary's graph and component specs are copies of stable's taken at staging: they would
            # undo later edits. Its component specs are named after the candidate's version: new names make new
            # Deployments, reported on their own, with the old pods serving until they are available (observe
            # waits for them); under stable's old names Seldon would roll the pods in place and report the old
            # ones available, read as the new version's.
            stable = copy.deepcopy(self._stable(obj))
            # Each predictor's node loading the model the router recorded for it (stage wrote the candidate into
            # the copy of stable's), else its first.
            stable_uri = annotations.get(ANN_VERSION_URI)
            stable_graph, canary_graph = stable.get("graph") or {}, canary.get("graph") or {}
            name = annotations.get(ANN_MODEL_NODE)
            node = _node_to_write(stable_graph, stable_uri, name=name) or _model_node(stable_graph)
            served = _node_to_write(canary_graph, annotations.get(ANN_CANDIDATE_URI), name=name) \
                or _model_node(canary_graph)
            if node is None or served is None:
                lacking = self.stable_predictor if node is None else self.canary_predictor
                raise TargetStateError(f"cannot promote: predictor {lacking} of {self.target} has no modelUri")
            if node.get("name") != served.get("name") and not (stable_uri and node.get("modelUri") == stable_uri):
                # Stable's graph changed during the canary (a model node added ahead of it): setting the first one
                # would load the candidate into another node and leave the classifier on the old version. The
                # canary's node is known by its name, or, renamed in stable alone, by the stable model it loads.
                raise TargetStateError(
                    f"cannot promote: the model node of predictor {self.stable_predictor} of {self.target} is "
                    f"{node.get('name')!r}, the canary's is {served.get('name')!r} (stable's graph changed during "
                    "the canary): set the model by hand, or roll back and stage again")
            candidate_uri = annotations.get(ANN_CANDIDATE_URI)
            if candidate_uri and served.get("modelUri") != candidate_uri:
                # Pointed at another model by hand since staging: stable would take a model nothing judged, recorded
                # as the candidate's version.
                raise TargetStateError(
                    f"cannot promote: the canary's model node {served.get('name')!r} of {self.target} loads "
                    f"{redacted_url(str(served.get('modelUri')))}, not the staged candidate's "
                    f"{redacted_url(candidate_uri)} (changed outside ModelRollout): roll back and stage again")
            version = str(annotations[ANN_CANDIDATE_VERSION])  # set: the canary is the router's (_own_canary)
            _set_model(node, str(served["modelUri"]), version)
            stable["traffic"] = self._stable_share(obj, "promote", f"the canary predictor {self.canary_predictor} "
                                                   "stays")
            _version_components(stable, version)  # as stage named the canary's
            annotations.update({ANN_VERSION: annotations[ANN_CANDIDATE_VERSION],
                                ANN_VERSION_URI: annotations[ANN_CANDIDATE_URI], ANN_CANDIDATE_VERSION: None,
                                ANN_CANDIDATE_URI: None, ANN_MODEL_NODE: node.get("name")})
            return self._body(obj, stable, None, annotations)
        _apply_with(self.client, build, f"promoting on {self.target}")

    def rollback(self) -> None:
        def build(obj: Obj) -> Obj | None:
            # Users on the candidate under another name (the canary renamed by hand) get off it too: kept, at 0.
            elsewhere = self._candidate_elsewhere(obj)
            annotations = self._owned(obj)
            staged = annotations[ANN_CANDIDATE_VERSION] or annotations[ANN_CANDIDATE_URI]
            annotations[ANN_CANDIDATE_VERSION] = annotations[ANN_CANDIDATE_URI] = None
            if self._own_canary(obj) is None and not self._foreign_canary_share(obj) and not elsewhere:
                if not staged:
                    return None  # nothing of ours staged, and no user on a canary-named predictor or the candidate
                # The canary predictor is gone (deleted by hand, predictors self-healed): its record goes too, or a
                # predictor that serves that modelUri later (another team's A/B) would read as the canary, and a
                # later rollout's rollback would take it to 0. Only the record changes.
                return self._body(obj, self._stable(obj), self._off_foreign_canary(obj), annotations)
            stable = copy.deepcopy(self._stable(obj))
            stable["traffic"] = self._stable_share(obj, "roll back", f"the canary predictor {self.canary_predictor} "
                                                   "stays", off=elsewhere)
            return self._body(obj, stable, self._off_foreign_canary(obj), annotations, off=elsewhere)
        _apply_with(self.client, build, f"rolling back on {self.target}")

    def _managed_node(self, obj: Obj, stable: Obj, doing: str, unrecorded_first: bool = False) -> Obj:
        """Stable's model node the router manages: the one of the name it recorded, else the one loading the
        modelUri it recorded for stable (promote or an earlier restore wrote it there), else the recorded
        candidate's (promoted by hand), else the only model node, or (`unrecorded_first`) the first when the router
        recorded neither. The first one is not it when a model node was put ahead of it (an outlier detector):
        a model written there would leave users on the model the classifier loads."""
        ann = annotations_of(obj)
        graph = stable.get("graph") or {}
        nodes = _model_nodes(graph)
        if not nodes:
            raise TargetStateError(f"predictor {self.stable_predictor} of {self.target} has no modelUri")
        candidate_uri = ann.get(ANN_CANDIDATE_URI) if ann.get(ANN_CANDIDATE_VERSION) else None
        found = _node_to_write(graph, ann.get(ANN_VERSION_URI), candidate_uri, name=ann.get(ANN_MODEL_NODE))
        unrecorded = not (ann.get(ANN_VERSION_URI) or candidate_uri or ann.get(ANN_MODEL_NODE))
        if found is not None or len(nodes) == 1 or (unrecorded_first and unrecorded):
            return found or nodes[0]
        recorded = [f"{redacted_url(u)} (version {v})" for u, v in ((ann.get(ANN_VERSION_URI), ann.get(ANN_VERSION)),
                                                                  (candidate_uri, ann.get(ANN_CANDIDATE_VERSION))) if u]
        raise TargetStateError(
            f"{doing}: no model node of predictor {self.stable_predictor} of {self.target} loads "
            + (" or ".join(recorded) if recorded else "a modelUri ModelRollout recorded")
            + f", and it has several ({', '.join(repr(n.get('name')) for n in nodes)}): stable's graph or model "
            "changed outside ModelRollout, so which node serves users is unknown; set the annotation "
            f"{ANN_MODEL_NODE} to the name of the node that loads the model, or set the model by hand")

    def restore(self, stable_model: CandidateModel) -> None:
        def build(obj: Obj) -> Obj:
            stable = copy.deepcopy(self._stable(obj))
            node = self._managed_node(obj, stable, f"cannot restore version {stable_model.version}")
            _set_model(node, stable_model.storage_uri, stable_model.version)
            # New Deployments for the restored version, as promote makes: under the promoted version's names
            # Seldon would roll them in place, and the old pods would read as the restored (or, promoted again
            # later under the same names, the next) version's. observe waits for them.
            _version_components(stable, stable_model.version)
            elsewhere = self._candidate_elsewhere(obj)  # a staged candidate under another name: off it, as rollback
            stable["traffic"] = self._stable_share(obj, "restore", "stable keeps the model it serves", off=elsewhere)
            return self._body(obj, stable, self._off_foreign_canary(obj), {
                ANN_VERSION: stable_model.version, ANN_VERSION_URI: stable_model.storage_uri,
                ANN_MODEL_NODE: node.get("name")}, off=elsewhere)
        _apply_with(self.client, build, f"restoring on {self.target}")


# --- Seldon Core v2 ----------------------------------------------------------------------------------

ANN_STABLE_MODEL = ANNOTATION_PREFIX + "stable-model"
ANN_CANDIDATE_MODEL = ANNOTATION_PREFIX + "candidate-model"
ANN_MODEL_VERSIONS = ANNOTATION_PREFIX + "model-versions"  # JSON: Seldon Model name -> registry version
# The stable Model staging found recorded with the candidate's version number (another registered model's).
ANN_STABLE_OTHER_MODEL = ANNOTATION_PREFIX + "stable-other-registered-model"
EXPERIMENT_ANNOTATIONS = (ANN_STABLE_MODEL, ANN_CANDIDATE_MODEL, ANN_MODEL_VERSIONS, ANN_STABLE_OTHER_MODEL)


def default_serving_name(candidate: CandidateModel) -> str:
    return candidate.serving_name or seldon_model_name(candidate.name, candidate.version)


MESH_SERVICE = "seldon-mesh"  # Seldon Core v2's one inference Service per runtime namespace
MESH_PORT = 80
MESH_PORT_NAMES = ("data", "http")


def mesh_url(service: client.V1Service | None, namespace: str) -> str:
    """The base URL of seldon-mesh: its load balancer ingress, else its cluster DNS name."""
    port = MESH_PORT
    host = f"{MESH_SERVICE}.{namespace}.svc.cluster.local"
    if service is not None:
        ports = (service.spec.ports if service.spec else None) or []
        named = [p for p in ports if p.name in MESH_PORT_NAMES]
        if named or ports:
            port = int((named or ports)[0].port)
        balancer = service.status.load_balancer if service.status else None
        ingress = [i for i in (balancer.ingress if balancer else None) or [] if i.ip or i.hostname]
        if ingress:
            host = ingress[0].ip or ingress[0].hostname
    return f"http://{host}" + ("" if port == MESH_PORT else f":{port}")


def scheduler_refusal(spec: Obj) -> str:
    """Why Seldon Core v2's scheduler would refuse to start an experiment of this spec ("" when it would not): the
    rules of its validate.go that one experiment's spec shows (not the one against other experiments' defaults)."""
    names = [c.get("name") for c in spec.get("candidates") or [] if isinstance(c, dict)]
    default, mirror = spec.get("default"), spec.get("mirror")
    if default is not None and default not in names:
        return f"its default model {default} is not among its candidates"
    if not names and mirror is None:
        return "it has no candidates and no mirror"
    named = [*names, *([mirror.get("name")] if isinstance(mirror, dict) else [])]
    if (twice := next((n for i, n in enumerate(named) if n in named[:i]), None)) is not None:
        return f"{twice} is named twice among its candidates and mirror"
    return ""


def _percent(weight: int, total: int) -> int:
    """weight's share of total in whole percent, never 0 for a share users get nor 100 for one they do not all get
    (a weight of 4 beside 1000 is 0.4% of users on the candidate, not none)."""
    if weight <= 0 or total <= 0:
        return 0
    return min(max(round(100 * weight / total), 1), 100 if weight >= total else 99)


class SeldonExperimentRouter:
    def __init__(self, api_client: client.ApiClient, namespace: str, name: str) -> None:
        self.client = ObjectClient(api_client, SELDON_EXPERIMENT, namespace, name)
        self.core = client.CoreV1Api(api_client)

    @property
    def target(self) -> str:
        return self.client.description

    def _spec(self, obj: Obj) -> Obj:
        """The spec of an Experiment this router can drive: one that exists and splits traffic between Models."""
        spec: Obj = obj.get("spec") or {}
        if not spec:
            raise TargetStateError(f"{self.target} has no spec")
        # Seldon's values are "model" (also when unset) and "pipeline"; candidates of any other type are no Models.
        resource_type = spec.get("resourceType")
        if resource_type and resource_type != "model":
            raise TargetStateError(f"{self.target} has spec.resourceType {resource_type}: ModelRollout drives "
                                   "experiments between Models only (resourceType model)")
        return spec

    def _weights(self, obj: Obj) -> dict[str, int]:
        return {c["name"]: int(c.get("weight") or 0) for c in self._spec(obj).get("candidates") or []}

    def _roles(self, obj: Obj) -> tuple[str, str | None]:
        """(stable model, candidate model) as recorded, falling back to the experiment's own default."""
        weights = self._weights(obj)
        if not weights:
            raise TargetStateError(f"{self.target} has no candidates")
        ann = annotations_of(obj)
        stable = ann.get(ANN_STABLE_MODEL)
        if stable not in weights:
            default = self._spec(obj).get("default")
            stable = default if default in weights else max(weights, key=lambda n: weights[n])
        candidate = ann.get(ANN_CANDIDATE_MODEL)
        return stable, candidate if candidate in weights and candidate != stable else None

    @staticmethod
    def _parse_versions(raw: str | None) -> dict[str, str] | None:
        """The model-versions annotation's mapping; None when it is not one (edited by hand)."""
        try:
            versions = json.loads(raw or "{}")
        except ValueError:
            return None
        return {str(k): str(v) for k, v in versions.items()} if isinstance(versions, dict) else None

    @staticmethod
    def _versions(obj: Obj) -> dict[str, str]:
        return SeldonExperimentRouter._parse_versions(annotations_of(obj).get(ANN_MODEL_VERSIONS)) or {}

    def _ours(self, obj: Obj) -> set[str]:
        """The models this router wrote or recorded (its annotations name them)."""
        ann = annotations_of(obj)
        return {*self._versions(obj), *(name for k in (ANN_STABLE_MODEL, ANN_CANDIDATE_MODEL) if (name := ann.get(k)))}

    @staticmethod
    def _full_weight(weights: dict[str, int], ours: set[str]) -> int:
        """The weight the one model of ours left serving gets: 100, or beside a weighted model this router never
        wrote (another team's A/B split) the sum of our models' weights, so the other model's share stays."""
        if any(w for n, w in weights.items() if n not in ours):
            return sum(w for n, w in weights.items() if n in ours)
        return 100

    def observe(self) -> TargetState:
        obj = self.client.get_or_none()
        if obj is None:
            return TargetState(target=self.target, exists=False, message=f"{self.target} not found")
        try:
            stable, candidate = self._roles(obj)
        except TargetStateError as exc:
            # Not ready, but synced as far as known: the engine shows why instead of polling for a catch-up.
            return TargetState(target=self.target, exists=True, mode=DeploymentMode.SELDON_EXPERIMENT,
                               synced=_synced(obj), message=str(exc))
        status = obj.get("status") or {}
        synced = _synced(obj)
        ready = condition_true(status, "Ready") is True
        weights, versions = self._weights(obj), self._versions(obj)
        total = sum(weights.values())
        problems = []
        if not ready:
            why = _condition_words(status, "Ready")
            problems.append("experiment is not ready" + (f": {why}" if why else ""))
        # Seldon keeps serving the split it last started when it refuses one, and Ready stays as it was: the spec
        # read here is then not what users get (a rollback written beside a hand-added mirror of stable).
        refused_now = condition_true(status, "ModelReady") is False
        said = _condition_words(status, "ModelReady") if refused_now else ""
        if refused := scheduler_refusal(self._spec(obj)):
            ready = False
            problems.append(f"Seldon refuses the experiment as written ({refused}) and keeps serving the split it "
                            "last started" + (f" (ModelReady: {said})" if said else ""))
        elif refused_now:
            # Its operator writes ModelReady on a refusal only and never clears it: with no rule broken now it is
            # likely an earlier spec's, so it is said, not taken as this spec refused.
            problems.append("Seldon's ModelReady condition is False" + (f" ({said})" if said else "")
                            + ", though the experiment as written breaks none of the rules its scheduler checks")
        if negative := {n: w for n, w in weights.items() if w < 0}:
            # The CRD takes any int32: what Seldon makes of a negative weight is not a share of users.
            ready = False
            problems.append("negative weights, set outside ModelRollout: "
                            + ", ".join(f"{n} {w}" for n, w in negative.items()))
            weights = {n: max(w, 0) for n, w in weights.items()}
            total = sum(weights.values())
        canary_ready = bool(candidate) and synced and ready and condition_true(status, "CandidatesReady") is True
        canary_weight = None
        if candidate is not None:
            canary_weight = _percent(weights[candidate], total)
        stable_version = versions.get(stable)
        if stable_version is not None and annotations_of(obj).get(ANN_STABLE_OTHER_MODEL) == stable:
            problems.append(f"stable model {stable} is recorded as version {stable_version} of another registered "
                            "model than the candidate's, which numbers its versions apart: not reported as one")
            stable_version = None
        # A model this router wrote that still has weight counts as the canary's (rollback takes it out); one it
        # never wrote is another team's split, which no operation here moves: counting it, no rollback would
        # ever read as done.
        ours = self._ours(obj)
        others = {n: w for n, w in weights.items() if w and n not in (stable, candidate)}
        stray = sum(w for n, w in others.items() if n in ours)
        if stray:
            problems.append(f"models other than stable and the candidate carry weight {stray}")
            canary_weight = (canary_weight or 0) + _percent(stray, total)
        if foreign := [n for n in others if n not in ours]:
            problems.append("models ModelRollout does not manage carry weight: " + ", ".join(foreign))
        mesh = self._mesh_url() if candidate is not None else None  # the URLs matter to the gate only
        return TargetState(
            target=self.target, exists=True, mode=DeploymentMode.SELDON_EXPERIMENT, synced=synced, ready=ready,
            stable_version=stable_version, stable_name=stable,
            stable_url=self._infer_url(mesh, stable) if mesh else None,
            canary_version=versions.get(candidate or ""), canary_name=candidate, canary_ready=canary_ready,
            canary_weight=canary_weight, canary_url=self._infer_url(mesh, candidate) if mesh and candidate else None,
            message="; ".join(problems))

    @staticmethod
    def _infer_url(mesh: str, model: str) -> str:
        # A path segment, whatever the spec holds: the CRD puts no pattern on candidates[].name.
        return f"{mesh}/v2/models/{quote(model, safe='')}/infer"

    def _mesh_url(self) -> str:
        namespace = self.client.namespace
        try:
            service = self.core.read_namespaced_service(MESH_SERVICE, namespace)
        except ApiException as exc:
            log.debug("cannot read Service %s/%s (HTTP %s): using its cluster DNS name", namespace, MESH_SERVICE,
                      exc.status)
            service = None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            log.debug("cannot read Service %s/%s (%s): using its cluster DNS name", namespace, MESH_SERVICE, exc)
            service = None
        return mesh_url(service, namespace)

    def _body(self, obj: Obj, weights: dict[str, int], annotations: dict[str, str | None],
              keep: str | None = None) -> Obj:
        """The candidates and the router's annotations; model-versions only for the models written, the default
        and `keep` (the one a restore may bring back), so it does not grow with every rollout."""
        versions = self._parse_versions(annotations.get(ANN_MODEL_VERSIONS))
        if annotations.get(ANN_MODEL_VERSIONS) is not None and versions is not None:
            kept = {*weights, self._spec(obj).get("default"), keep}
            annotations = {**annotations, ANN_MODEL_VERSIONS: json.dumps(
                {n: v for n, v in versions.items() if n in kept}, sort_keys=True)}
        body = self.client.skeleton(obj["metadata"]["resourceVersion"])
        body["metadata"]["annotations"] = {k: v for k, v in annotations.items() if v is not None}
        body["spec"] = {"candidates": [{"name": name, "weight": weight} for name, weight in weights.items()]}
        return body

    def _keep(self, obj: Obj, weights: dict[str, int], model: str) -> None:
        """Drop a model from the candidates, or keep it at 0 when it is the experiment's default."""
        if model == self._spec(obj).get("default"):
            weights[model] = 0
        else:
            weights.pop(model, None)

    def _owned(self, obj: Obj) -> dict[str, str | None]:
        ann = annotations_of(obj)
        return {k: ann.get(k) for k in EXPERIMENT_ANNOTATIONS}

    def _refuse_what_seldon_refuses(self, obj: Obj, weights: dict[str, int], candidate: str | None) -> None:
        """Seldon's scheduler refuses some experiments (a mirror that is also a candidate, a default not among the
        candidates) and keeps serving the one it last started, with Ready unchanged: written, the candidates would
        read as in effect while users stay where they were."""
        spec = self._spec(obj)
        mirror = (spec.get("mirror") or {}).get("name")
        if mirror and mirror in weights:
            whose = "the candidate's Model" if mirror == candidate else "a Model among its candidates"
            raise TargetStateError(f"{self.target} mirrors {mirror}, {whose}: remove the mirror first (Seldon refuses "
                                   "a model that is both a candidate and the mirror)")
        if refused := scheduler_refusal({**spec, "candidates": [{"name": name} for name in weights]}):
            raise TargetStateError(f"cannot write {self.target}: Seldon would refuse it ({refused}) and keep serving "
                                   "the split it last started")

    def stage(self, candidate: CandidateModel, stable_version: str | None = None) -> None:
        model = default_serving_name(candidate)
        # A version resolved from an alias at run time (parse_spec knows only the shortest): refused before any
        # write, naming the field, so TargetReady says why at once instead of a Model never Ready doing so at
        # progressDeadline (the engine still ends the rollout then, untagged, as for any refused step).
        if candidate.serving_name is None and (problem := serving_name_problem(candidate.name, candidate.version)):
            raise TargetStateError(f"spec.model.name: {problem}")

        def build(obj: Obj) -> Obj:
            stable, previous_candidate = self._roles(obj)
            if model == stable:
                raise TargetStateError(f"candidate model {model} is the stable model of {self.target}")
            weights = self._weights(obj)
            foreign = [n for n, w in weights.items() if w and n not in (stable, previous_candidate)]
            if foreign:
                raise TargetStateError(f"{self.target} splits traffic with models ModelRollout does not manage: "
                                       + ", ".join(foreign))
            if previous_candidate and previous_candidate != model:
                self._keep(obj, weights, previous_candidate)
            weights[stable] = 100
            weights[model] = 0
            self._refuse_what_seldon_refuses(obj, weights, model)
            versions = self._versions(obj)
            if stable not in versions and stable_version:
                versions[stable] = stable_version
            versions[model] = candidate.version
            annotations = self._owned(obj)
            # Stable recorded with the candidate's number is another registered model's version (MLflow numbers
            # versions per model): read as the candidate's, stable would look promoted by hand, and a rollback
            # would restore instead of taking the candidate out. Marked until stable changes (observe: unknown).
            clash = versions.get(stable) == candidate.version
            annotations.update({ANN_STABLE_MODEL: stable, ANN_CANDIDATE_MODEL: model,
                                ANN_MODEL_VERSIONS: json.dumps(versions, sort_keys=True),
                                ANN_STABLE_OTHER_MODEL: stable if clash else None})
            return self._body(obj, weights, annotations)
        _apply_with(self.client, build, f"staging on {self.target}")

    def set_weight(self, percent: int, candidate_version: str | None = None) -> None:
        check_percent(percent)

        def build(obj: Obj) -> Obj:
            stable, candidate = self._roles(obj)
            if candidate is None:
                raise TargetStateError(f"no candidate is staged on {self.target}")
            check_candidate_version(self.target, self._versions(obj).get(candidate), candidate_version,
                                    f"model {candidate} is not in the {ANN_MODEL_VERSIONS} annotation")
            weights = self._weights(obj)
            # Beside another team's weighted model (added after staging) the candidate's share would be N/(100+w),
            # never N: the step would be resent until the deadline. Rollback and restore still work beside it.
            ours = self._ours(obj)
            if foreign := {n: w for n, w in weights.items() if w and n not in ours and n not in (stable, candidate)}:
                raise TargetStateError(f"cannot set the candidate to {percent}%: {self.target} splits traffic with "
                                       "models ModelRollout does not manage: "
                                       + ", ".join(f"{n} (weight {w})" for n, w in foreign.items()))
            weights[stable], weights[candidate] = 100 - percent, percent
            self._refuse_what_seldon_refuses(obj, weights, candidate)
            return self._body(obj, weights, self._owned(obj))
        _apply_with(self.client, build, f"setting the weight on {self.target}")

    def promote(self) -> None:
        def build(obj: Obj) -> Obj | None:
            stable, candidate = self._roles(obj)
            if candidate is None:
                if annotations_of(obj).get(ANN_STABLE_MODEL):
                    return None  # promoted already
                raise TargetStateError(f"cannot promote: no candidate is staged on {self.target}")
            weights = self._weights(obj)
            weights[candidate] = 100
            self._keep(obj, weights, stable)
            self._refuse_what_seldon_refuses(obj, weights, candidate)
            annotations = self._owned(obj)
            annotations.update({ANN_STABLE_MODEL: candidate, ANN_CANDIDATE_MODEL: None, ANN_STABLE_OTHER_MODEL: None})
            return self._body(obj, weights, annotations, keep=stable)
        _apply_with(self.client, build, f"promoting on {self.target}")

    def rollback(self) -> None:
        # Recorded candidates a read of this rollback found out of the candidates: one back in them at a later read
        # (added before our write landed, which then got a 409) is someone else's model of that name, not ours.
        gone: set[str] = set()

        def build(obj: Obj) -> Obj | None:
            stable, candidate = self._roles(obj)
            weights = self._weights(obj)
            recorded = annotations_of(obj).get(ANN_CANDIDATE_MODEL)
            if recorded and recorded not in weights:
                gone.add(recorded)
            if candidate in gone:
                candidate = None
            # Not only the recorded candidate: any model this router wrote (its candidate annotation may
            # have been removed by hand) that still carries weight goes; one it never wrote is not its to move
            # and keeps its weight, and its share: stable takes all of ours.
            ours = (self._ours(obj) - gone) | {stable}
            weighted = [n for n, w in weights.items() if w and n != stable and n in ours]
            leaving = [*weighted, candidate] if candidate is not None and candidate not in weighted else weighted
            annotations = self._owned(obj)
            annotations[ANN_CANDIDATE_MODEL] = None
            versions = self._versions(obj)
            if gone & versions.keys():  # _body keeps the versions of models in the candidates: a gone one's goes
                annotations[ANN_MODEL_VERSIONS] = json.dumps(
                    {n: v for n, v in versions.items() if n not in gone}, sort_keys=True)
            if not leaving:
                if recorded is None:
                    return None  # nothing staged: stable has all of our traffic
                # The candidate left the candidates some other way (a sync): its record goes too, as Seldon Core
                # v1's does, or a model of that name added later (another team's A/B) would read as this
                # rollout's candidate, be dropped by the next stage and removed by a later rollback.
                return self._body(obj, weights, annotations)  # the candidates as they are; model-versions pruned
            full = self._full_weight(weights, ours)
            for model in leaving:
                self._keep(obj, weights, model)
            weights[stable] = full
            return self._body(obj, weights, annotations)
        _apply_with(self.client, build, f"rolling back on {self.target}")

    def restore(self, stable_model: CandidateModel) -> None:
        def build(obj: Obj) -> Obj:
            versions, weights = self._versions(obj), self._weights(obj)
            # By version number only when no Model of the version's own name is there: another registered model's
            # may have the same number (MLflow numbers versions per model).
            named = default_serving_name(stable_model)
            model = stable_model.serving_name or (named if named in weights or named in versions else next(
                (name for name, version in versions.items() if version == stable_model.version), named))
            # Only our models move: one this router never wrote keeps its weight and share (see rollback).
            ours = self._ours(obj) | {model}
            full = self._full_weight(weights, ours)
            for name in list(weights):
                if name != model and name in ours:
                    self._keep(obj, weights, name)
            weights[model] = full
            self._refuse_what_seldon_refuses(obj, weights, None)
            versions[model] = stable_model.version
            annotations = self._owned(obj)
            annotations.update({ANN_STABLE_MODEL: model, ANN_CANDIDATE_MODEL: None, ANN_STABLE_OTHER_MODEL: None,
                                ANN_MODEL_VERSIONS: json.dumps(versions, sort_keys=True)})
            return self._body(obj, weights, annotations)
        _apply_with(self.client, build, f"restoring on {self.target}")
