"""The Helm chart and the Kustomize tree render, lint, and describe the same objects.

Helm and kustomize are the real binaries, pinned and cached by hack/install-tools.sh. The same renders are
validated against the real API server in tests/integration/test_deploy_apply.py.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import re
import subprocess
from pathlib import Path
from string import Formatter
from typing import Any

import pytest
import yaml

from controller.api.reach import parse_host_patterns
from controller.cli.main import build_parser
from controller.gate.sources import check_https_uri
from controller.operator.runtime import fill_storage_uri

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "modelrollout"
DEPLOY = REPO / "deploy"
CRD = REPO / "crds" / "modelrollout.io_modelrollouts.yaml"
RELEASE = "modelrollout"
NAMESPACE = "modelrollout-system"
# The chart's switches that are off by default, on: then it renders everything deploy/ holds.
ALL_ON = ("--set", "namespace.create=true", "--set", "networkPolicy.enabled=true",
          "--set", "monitoring.serviceMonitor.enabled=true",
          "--set", "monitoring.prometheusRule.enabled=true", "--set", "monitoring.dashboard.enabled=true")
HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")

Obj = dict[str, Any]
Key = tuple[str, str, str, str]  # apiVersion, kind, namespace, name


@functools.cache
def tools_dir() -> Path:
    """Pinned helm and kustomize; installed on first use (minutes), then a cache hit."""
    result = subprocess.run([str(REPO / "hack" / "install-tools.sh")], capture_output=True, text=True,
                            timeout=1800, check=False)
    if result.returncode != 0:
        pytest.fail(f"hack/install-tools.sh failed: {result.stderr.strip()}")
    return Path(result.stdout.strip().splitlines()[-1])


def run_tool(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(tools_dir() / tool), *args], capture_output=True, text=True, timeout=300,
                          check=False)


def _documents(text: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def helm_template(*args: str, release: str = RELEASE, namespace: str = NAMESPACE) -> list[Obj]:
    result = run_tool("helm", "template", release, str(CHART), "--namespace", namespace, "--include-crds", *args)
    assert result.returncode == 0, result.stderr
    return _documents(result.stdout)


def kustomize_build(path: Path) -> list[Obj]:
    result = run_tool("kustomize", "build", str(path))
    if result.returncode != 0 and not (REPO / "crds" / "kustomization.yml").exists():
        pytest.fail("crds/kustomization.yml is missing: deploy/base takes the CRD from ../../crds as a "
                    "kustomization (see deploy/README.md)")
    assert result.returncode == 0, result.stderr
    return _documents(result.stdout)


def key(obj: Obj) -> Key:
    meta = obj["metadata"]
    return obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"]


def by_key(objs: list[Obj]) -> dict[Key, Obj]:
    keyed = {key(obj): obj for obj in objs}
    assert len(keyed) == len(objs), "two objects with the same kind and name"
    return keyed


def _without_helm_labels(obj: Obj) -> Obj:
    """Drop the labels only Helm adds, wherever labels are (object and pod template)."""
    clean = copy.deepcopy(obj)
    for meta in (clean.get("metadata", {}), clean.get("spec", {}).get("template", {}).get("metadata", {})):
        labels = meta.get("labels", {})
        for label in HELM_ONLY_LABELS:
            labels.pop(label, None)
    return clean


def test_helm_lint() -> None:
    for args in ((), ALL_ON):
        result = run_tool("helm", "lint", "--strict", str(CHART), *args)
        assert result.returncode == 0, result.stdout + result.stderr


def test_chart_renders_the_same_objects_as_kustomize() -> None:
    """Same kinds, names, RBAC rules, pod specs, monitoring: everything but the labels Helm adds."""
    for kustomize_root, chart_args in ((DEPLOY / "base", ("--set", "namespace.create=true")), (DEPLOY, ALL_ON)):
        from_kustomize = by_key(kustomize_build(kustomize_root))
        from_chart = by_key(helm_template(*chart_args))
        assert sorted(from_chart) == sorted(from_kustomize), kustomize_root
        for object_key, obj in from_kustomize.items():
            assert _without_helm_labels(from_chart[object_key]) == obj, object_key


def test_chart_defaults_leave_out_namespace_monitoring_and_network_policies() -> None:
    kinds = {obj["kind"] for obj in helm_template()}
    assert not kinds & {"Namespace", "NetworkPolicy"}
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "ConfigMap"}
    assert {"CustomResourceDefinition", "Deployment", "Service", "ClusterRole"} <= kinds


def test_chart_crd_is_the_repository_crd() -> None:
    """The chart's crds/ holds a symlink to crds/: Helm follows it (and `helm package` stores the content)."""
    chart_crd = CHART / "crds" / CRD.name
    assert chart_crd.is_symlink() and chart_crd.resolve() == CRD.resolve()
    assert chart_crd.read_bytes() == CRD.read_bytes()
    rendered = [obj for obj in helm_template() if obj["kind"] == "CustomResourceDefinition"]
    assert rendered == [yaml.safe_load(CRD.read_text())]


def test_chart_loads_the_shipped_rules_and_dashboard() -> None:
    """The PrometheusRule and dashboard come from deploy/monitoring through symlinks, not copies."""
    for name, target in (("prometheusrule.yaml", DEPLOY / "monitoring" / "prometheusrule.yaml"),
                         ("modelrollout.json", DEPLOY / "monitoring" / "dashboards" / "modelrollout.json")):
        link = CHART / "files" / name
        assert link.is_symlink() and link.resolve() == target.resolve()
    rendered = {obj["kind"]: obj for obj in helm_template(*ALL_ON)}
    shipped = yaml.safe_load((DEPLOY / "monitoring" / "prometheusrule.yaml").read_text())
    assert rendered["PrometheusRule"]["spec"] == shipped["spec"]
    dashboard = rendered["ConfigMap"]["data"]["modelrollout.json"]
    assert json.loads(dashboard) == json.loads((DEPLOY / "monitoring" / "dashboards" / "modelrollout.json").read_text())


def test_chart_values_change_what_they_say() -> None:
    objs = helm_template("--set", "image.digest=sha256:" + "a" * 64, "--set", "exporter.classNames={safe,nsfw}",
                         "--set", "controller.extraArgs={--namespace,moderation}", "--set", "exporter.port=9200",
                         "--set-json", 'controller.gateHosts=["127.0.0.1","*.{namespace}.models.example.com"]',
                         release="mr", namespace="ml-platform")
    deployments = {obj["metadata"]["name"]: obj for obj in objs if obj["kind"] == "Deployment"}
    assert set(deployments) == {"mr-modelrollout-controller", "mr-modelrollout-exporter"}
    controller = deployments["mr-modelrollout-controller"]["spec"]["template"]["spec"]["containers"][0]
    exporter = deployments["mr-modelrollout-exporter"]["spec"]["template"]["spec"]["containers"][0]
    assert controller["image"] == "ghcr.io/modelrollout/modelrollout@sha256:" + "a" * 64
    assert controller["args"][-4:] == ["--gate-hosts", "127.0.0.1,*.{namespace}.models.example.com",
                                       "--namespace", "moderation"]
    assert build_parser().parse_args(controller["args"]).gate_hosts == ("127.0.0.1", "*.{namespace}.models.example.com")
    assert exporter["args"] == ["exporter", "run", "--host", "0.0.0.0",  # noqa: S104 - the pod address
                                "--port", "9200", "--drain", "70s", "--class-names", "safe,nsfw"]
    binding = next(obj for obj in objs if obj["kind"] == "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mr-modelrollout-controller",
                                    "namespace": "ml-platform"}]
    assert all(obj["metadata"].get("namespace") in (None, "ml-platform") for obj in objs)


@pytest.mark.parametrize(("args", "complaint"), [
    (("--set", "controller.replicas=2"), "/controller/replicas"),
    (("--set", "exporter.port=http"), "/exporter/port"),
    (("--set", "image.pullPolicy=Sometimes"), "/image/pullPolicy"),
    (("--set", "image.digest=latest"), "/image/digest"),
    (("--set", "runAsUser=0"), "/runAsUser"),
    (("--set", "monitoring.serviceMonitor.enable=true"), "'enable'"),
    (("--set", "controler.replicas=1"), "'controler'"),
    (("--set-json", 'controller.gateHosts=["http://gate.example"]'), "/controller/gateHosts/0"),
    # A label over 63 characters: `operator run --gate-hosts` refuses it, so the chart must not install it.
    (("--set-json", f'controller.gateHosts=["{"a" * 64}.{{namespace}}.example.com"]'), "/controller/gateHosts/0"),
    # The exporter pairs a logger's request and response events in memory: a second replica would miscount.
    (("--set", "exporter.replicas=2"), "/exporter/replicas"),
    # EnvVars: a name, and a string value or a valueFrom (not both); refused here, not by the API server later.
    (("--set-json", 'controller.extraEnv=[{"value":"x"}]'), "/controller/extraEnv/0': missing property 'name'"),
    (("--set-json", 'controller.extraEnv=[{"name":"A","value":1}]'), "/controller/extraEnv/0/value"),
    (("--set-json", 'exporter.extraEnv=[{"name":"A","value":"1","valueFrom":{"fieldRef":{"fieldPath":"x"}}}]'),
     "/exporter/extraEnv/0"),
    (("--set-json", 'exporter.extraEnv=[{"name":"A","valueFrom":{"secretRef":{"name":"s"}}}]'),
     "/exporter/extraEnv/0/valueFrom"),
    # Tolerations: the Toleration fields only, so a misspelt key is not silently dropped.
    (("--set-json", 'controller.tolerations=[{"key":"a","efect":"NoSchedule"}]'), "'efect' not allowed"),
    (("--set-json", 'exporter.tolerations=[{"operator":"Maybe"}]'), "/exporter/tolerations/0/operator"),
    (("--set-json", 'controller.tolerations=[{"key":"a","tolerationSeconds":"60"}]'),
     "/controller/tolerations/0/tolerationSeconds"),
    # ...and what the API server refuses of one (ValidateTolerations), so that it fails here, not at install.
    (("--set-json", 'controller.tolerations=[{"key":"a","effect":"NoSchedule","tolerationSeconds":60}]'),
     "/controller/tolerations/0/effect': value must be 'NoExecute'"),
    (("--set-json", 'exporter.tolerations=[{"key":"a","tolerationSeconds":60}]'),
     "/exporter/tolerations/0': missing property 'effect'"),
    (("--set-json", 'controller.tolerations=[{"key":"a","operator":"Exists","value":"ml"}]'),
     "/controller/tolerations/0/value': maxLength: got 2, want 0"),
    (("--set-json", 'exporter.tolerations=[{"effect":"NoSchedule"}]'),
     "/exporter/tolerations/0': missing property 'operator'"),
    (("--set-json", 'controller.tolerations=[{"key":"","operator":"Equal","value":"ml"}]'),
     "/controller/tolerations/0/operator': value must be 'Exists'"),
    (("--set-json", 'controller.tolerations=[{"key":"a","effect":"NoRun"}]'), "/controller/tolerations/0/effect"),
    (("--set-json", 'controller.tolerations=[{"key":"dedicated node","operator":"Exists"}]'),
     "/controller/tolerations/0/key"),
    (("--set-json", 'controller.tolerations=[{"key":"Example.com/gpu","operator":"Exists"}]'),
     "/controller/tolerations/0/key"),
    (("--set-json", f'controller.tolerations=[{{"key":"{"k" * 64}","operator":"Exists"}}]'),
     "/controller/tolerations/0/key"),
    (("--set-json", f'controller.tolerations=[{{"key":"{"p" * 254}/gpu","operator":"Exists"}}]'),
     "/controller/tolerations/0/key"),
    (("--set-json", 'controller.tolerations=[{"key":"a","value":"-ml"}]'), "/controller/tolerations/0/value"),
    (("--set-json", f'controller.tolerations=[{{"key":"a","value":"{"v" * 64}"}}]'),
     "/controller/tolerations/0/value': maxLength: got 64, want 63"),
    # --dataset-https-hosts is a comma-separated list of host names compared with the URL's host: no URL, port
    # or comma in an entry.
    (("--set-json", 'controller.datasetHttpsHosts=["https://data.example.com"]'), "/controller/datasetHttpsHosts/0"),
    (("--set-json", 'controller.datasetHttpsHosts=["data.example.com:443"]'), "/controller/datasetHttpsHosts/0"),
    (("--set-json", 'controller.datasetHttpsHosts=["a.example.com,b.example.com"]'),
     "/controller/datasetHttpsHosts/0"),
    # The exporter takes the class names as one comma-separated list, split and stripped: each name must survive.
    (("--set-json", 'exporter.classNames=["safe","violence,gore","nsfw"]'), "/exporter/classNames/1"),
    (("--set-json", 'exporter.classNames=["safe"," ","nsfw"]'), "/exporter/classNames/1"),
    (("--set-json", 'exporter.classNames=["safe ","nsfw"]'), "/exporter/classNames/0"),
    (("--set", "controller.gateProtocol=v3"), "/controller/gateProtocol"),
    (("--set", "commandPolicy.argocdApplicationController=argocd-application-controller"),
     "/commandPolicy/argocdApplicationController"),
    # Refused by the kubelet (InvalidImageName) or the API server (no field named), after the install went in.
    (("--set", "image.tag=bad tag!"), "/image/tag"),
    (("--set", "image.tag=v1.0:x"), "/image/tag"),
    (("--set", "image.tag=0.1.0+build"), "/image/tag"),
    (("--set", "image.repository=UPPER/Repo"), "/image/repository"),
    (("--set", "controller.resources.limits.memory=lots"), "/controller/resources/limits/memory"),
    (("--set", "controller.resources.limits.cpu=-1"), "/controller/resources/limits/cpu"),
    (("--set", "exporter.resources.requests.cpu=-100m"), "/exporter/resources/requests/cpu"),
    # Object names are <base>-<suffix>: a longer base would make <base>-controller-metrics no Service name.
    (("--set", f"fullnameOverride={'f' * 45}"), "/fullnameOverride"),
    (("--set", "fullnameOverride=My.Release"), "/fullnameOverride"),
    (("--set", f"nameOverride={'n' * 64}"), "/nameOverride"),
    # Sizes the chart can compare: <n>Mi or <n>Gi.
    (("--set", "controller.tmpSizeLimit=1G"), "/controller/tmpSizeLimit"),
    (("--set", "controller.maxDatasetBytes=4GiB"), "/controller/maxDatasetBytes"),
    (("--set", "controller.maxDatasetBytes=805306368"), "/controller/maxDatasetBytes"),
    # The API server refuses endPort beside a named port: at install, after the chart rendered.
    (("--set-json", 'networkPolicy.controllerEgress=[{"ports":[{"port":"https","endPort":500}]}]'),
     "/networkPolicy/controllerEgress/0/ports/0/port': got string, want integer"),
    (("--set-json", 'networkPolicy.controllerEgress=[{"ports":[{"endPort":500}]}]'),
     "/networkPolicy/controllerEgress/0/ports/0"),
    # What the API server would refuse at install, leaving a failed release half applied (review s28chart).
    (("--set", "runAsUser=99999999999"), "/runAsUser': maximum"),
    (("--set", "runAsGroup=2147483648"), "/runAsGroup': maximum"),
    (("--set-json", 'networkPolicy.controllerEgress=[{"ports":[{"port":99999}]}]'),
     "/networkPolicy/controllerEgress/0/ports/0/port': maximum"),
    (("--set-json", 'networkPolicy.controllerEgress=[{"ports":[{"port":"HTTPS_port"}]}]'),
     "/networkPolicy/controllerEgress/0/ports/0/port'"),
    (("--set-json", 'controller.nodeSelector={"bad key":"x"}'),
     "at '/controller/nodeSelector': additional properties 'bad key' not allowed"),
    (("--set-json", 'exporter.podAnnotations={"a/b/c":"x"}'),
     "at '/exporter/podAnnotations': additional properties 'a/b/c' not allowed"),
    (("--set-json", 'networkPolicy.controllerEgress=[{"to":[{"ipBlock":{"cidr":"x"}}]}]'),
     "/networkPolicy/controllerEgress/0/to/0/ipBlock/cidr'"),
    (("--set-json", 'networkPolicy.controllerEgress=[{"to":[{"namespaceSelector":{"matchExpressions":'
                    '[{"key":"team","operator":"In"}]}}]}]'),
     "missing property 'values'"),
    (("--set-json", 'controller.storageUriTemplate="s3://models/{model}/{version}"'),
     "'/controller/storageUriTemplate'"),
    (("--set-json", 'networkPolicy.controllerEgress=[{"ports":[{"port":"8080"}]}]'),
     "/networkPolicy/controllerEgress/0/ports/0/port'"),
    (("--set-json", 'networkPolicy.controllerEgress=[{"ports":[{"port":"a--b"}]}]'),
     "/networkPolicy/controllerEgress/0/ports/0/port'"),
    (("--set-json", 'networkPolicy.controllerEgress=[{"to":[{"namespaceSelector":{"matchExpressions":'
                    '[{"key":"team","operator":"Exists","values":["a"]}]}}]}]'), "maxItems"),
    (("--set-json", 'networkPolicy.controllerEgress=[{"to":[{"namespaceSelector":{"matchExpressions":'
                    '[{"key":"bad key!","operator":"Exists"}]}}]}]'), "'bad key!' does not match pattern"),
])
def test_values_schema_refuses_bad_values(args: tuple[str, ...], complaint: str) -> None:
    result = run_tool("helm", "template", RELEASE, str(CHART), *args)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert complaint in result.stderr, result.stderr


# Patterns around the edges of both rules. The controller also takes forms the schema does not (uppercase, a
# root dot, an unbracketed IPv6 address): it normalises them, so refusing them at install only is harmless.
GATE_HOST_CANDIDATES = ["a" * 63 + ".example.com", "a" * 64 + ".example.com", "*.{namespace}." + "b" * 63,
                        "*.{namespace}." + "b" * 64, "x.{namespace}.svc.cluster.local", "{namespace}", "127.0.0.1",
                        "[::1]", "[fe80::1]", "-a.example", "a-.example", "a_b", "a..b", "*", "a.*.b", "**.x",
                        "x:80", "{ns}.svc", "http://gate.example"]


@pytest.mark.parametrize("args", [
    ("--set", "image.tag=v1.2.3_rc-1"), ("--set", "image.repository=localhost:5000/my_org/model-rollout"),
    ("--set", "image.repository=registry.example.com/ml__ops/modelrollout"),
    ("--set", "controller.resources.limits.memory=512Mi"), ("--set", "controller.resources.requests.cpu=100m"),
    ("--set", "controller.resources.requests.cpu=0.5"), ("--set-json", "exporter.resources.limits.cpu=2"),
    ("--set", "exporter.resources.limits.memory=1e9"),
    ("--set-json", 'controller.nodeSelector={"kubernetes.io/os":"linux"}'),
    ("--set-json", 'controller.podAnnotations={"prometheus.io/scrape":"true","Example.com/Owner":"x"}'),
    ("--set-json", 'networkPolicy.controllerEgress=[{"ports":[{"port":443},{"port":"https"}],"to":[{"ipBlock":'
                   '{"cidr":"10.0.0.0/8"}},{"ipBlock":{"cidr":"fd00::/8"}},{"namespaceSelector":{"matchExpressions":'
                   '[{"key":"team","operator":"In","values":["a"]},{"key":"x","operator":"Exists"}]}}]}]')])
def test_values_schema_accepts_image_references_and_quantities_kubernetes_takes(args: tuple[str, ...]) -> None:
    result = run_tool("helm", "template", RELEASE, str(CHART), *args)
    assert result.returncode == 0, result.stderr


def test_the_gate_hosts_schema_admits_only_what_the_controller_accepts() -> None:
    """Else helm installs a value and the controller exits at start-up on it."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    pattern = re.compile(schema["properties"]["controller"]["properties"]["gateHosts"]["items"]["pattern"])

    def controller_accepts(candidate: str) -> bool:
        try:
            return parse_host_patterns(candidate) == (candidate,)
        except ValueError:
            return False

    verdicts = {c: (pattern.search(c) is not None, controller_accepts(c)) for c in GATE_HOST_CANDIDATES}
    assert all(schema == controller for schema, controller in verdicts.values()), verdicts
    admitted = [c for c, (schema, _) in verdicts.items() if schema]
    controller = controller_pod(helm_template("--set-json", f"controller.gateHosts={json.dumps(admitted)}"))
    assert build_parser().parse_args(controller["containers"][0]["args"]).gate_hosts == tuple(admitted)


def test_chart_accepts_env_vars_and_tolerations_of_the_kubernetes_shape() -> None:
    env = [{"name": "A", "value": "1"}, {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    tolerations = [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
                   {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60},
                   # What the API server accepts at the edges: an empty operator is Equal, an empty value with
                   # Exists, a prefixed key at the length limits, a value of 63 characters.
                   {"key": "example.com/gpu", "operator": "Exists", "value": "", "effect": ""},
                   {"key": "p" * 253 + "/" + "n" * 63, "operator": "", "value": "A" + "b.c_d-" * 10 + "yz",
                    "effect": "PreferNoSchedule"}]
    objs = helm_template("--set-json", f"controller.extraEnv={json.dumps(env)}",
                         "--set-json", f"exporter.tolerations={json.dumps(tolerations)}")
    pods = {obj["metadata"]["name"]: obj["spec"]["template"]["spec"] for obj in objs if obj["kind"] == "Deployment"}
    assert pods["modelrollout-controller"]["containers"][0]["env"][-2:] == env
    assert pods["modelrollout-exporter"]["tolerations"] == tolerations


def controller_pod(objs: list[Obj]) -> Obj:
    return next(obj["spec"]["template"]["spec"] for obj in objs
                if obj["kind"] == "Deployment" and obj["metadata"]["name"].endswith("-controller"))


def dataset_budget(pod: Obj) -> int:
    """What `operator run` reads from the pod's environment as --max-dataset-bytes."""
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"] if "value" in e}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MODELROLLOUT_MAX_DATASET_BYTES", env["MODELROLLOUT_MAX_DATASET_BYTES"])
        budget: int = build_parser().parse_args(pod["containers"][0]["args"]).max_dataset_bytes
    return budget


def test_the_dataset_budget_stays_below_the_tmp_volume_in_chart_and_kustomize() -> None:
    """The gate downloads golden datasets into /tmp, an emptyDir the kubelet evicts the pod for outgrowing:
    the operator's budget for them (--max-dataset-bytes, from the environment) leaves 256Mi of it free."""
    mib = 1024**2
    for pod in (controller_pod(helm_template()), controller_pod(kustomize_build(DEPLOY / "base"))):
        tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
        assert tmp["emptyDir"] == {"sizeLimit": "1Gi"}
        assert dataset_budget(pod) == 768 * mib
    pod = controller_pod(helm_template("--set", "controller.tmpSizeLimit=3Gi",
                                       "--set", "controller.maxDatasetBytes=2816Mi"))
    assert next(v for v in pod["volumes"] if v["name"] == "tmp")["emptyDir"] == {"sizeLimit": "3Gi"}
    assert dataset_budget(pod) == (3 * 1024 - 256) * mib


@pytest.mark.parametrize(("tmp", "datasets"), [("1Gi", "769Mi"), ("1Gi", "1Gi"), ("512Mi", "2Gi")])
def test_the_chart_refuses_a_dataset_budget_the_tmp_volume_cannot_hold(tmp: str, datasets: str) -> None:
    result = run_tool("helm", "template", RELEASE, str(CHART), "--set", f"controller.tmpSizeLimit={tmp}",
                      "--set", f"controller.maxDatasetBytes={datasets}")
    assert result.returncode != 0
    assert f"controller.maxDatasetBytes ({datasets}) must stay at least 256Mi below controller.tmpSizeLimit " \
           f"({tmp})" in result.stderr, result.stderr


def test_the_chart_refuses_one_port_for_health_and_metrics() -> None:
    result = run_tool("helm", "template", RELEASE, str(CHART), "--set", "controller.livenessPort=9100")
    assert result.returncode != 0 and "livenessPort and controller.metricsPort must differ" in result.stderr


def test_kustomize_trees_build() -> None:
    base = by_key(kustomize_build(DEPLOY / "base"))
    monitoring = by_key(kustomize_build(DEPLOY / "monitoring"))
    network_policy = by_key(kustomize_build(DEPLOY / "network-policy"))
    everything = by_key(kustomize_build(DEPLOY))
    assert everything == base | monitoring | network_policy
    assert {k[1] for k in monitoring} == {"ServiceMonitor", "PrometheusRule", "ConfigMap"}
    assert {k[1] for k in network_policy} == {"NetworkPolicy"}
    crds = [obj for obj in base.values() if obj["kind"] == "CustomResourceDefinition"]
    assert crds == [yaml.safe_load(CRD.read_text())]
    images = {c["image"] for obj in base.values() if obj["kind"] == "Deployment"
              for c in obj["spec"]["template"]["spec"]["containers"]}
    assert images == {"ghcr.io/modelrollout/modelrollout:0.1.0"}


def test_the_scrape_interval_schema_admits_only_what_the_controller_accepts() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    pattern = re.compile(schema["properties"]["controller"]["properties"]["scrapeInterval"]["pattern"])

    def controller_accepts(candidate: str) -> bool:
        try:
            build_parser().parse_args(["operator", "run", "--scrape-interval", candidate])
            return True
        except SystemExit:
            return False

    candidates = ["1s", "15s", "30s", "600s", "0s", "601s", "10m", "1h", "-5s", "30", "1m30s"]
    verdicts = {c: (pattern.search(c) is not None, controller_accepts(c)) for c in candidates}
    # The schema may refuse forms the controller takes (minutes): never the other way round.
    assert all(controller for schema, controller in verdicts.values() if schema), verdicts
    assert [c for c, (schema, _) in verdicts.items() if schema] == ["1s", "15s", "30s", "600s"]
    controller = controller_pod(helm_template("--set", "controller.scrapeInterval=15s"))
    assert build_parser().parse_args(controller["containers"][0]["args"]).scrape_interval.total_seconds() == 15


# Pieces of --storage-uri-template values: every sequence of up to three of them is a candidate.
STORAGE_URI_PIECES = ["s3://b/", "/", "{name}", "{version}", "{source}", "{run_id}", "{download_uri}", "{model}",
                      "{}", "{0}", "{", "}", "{{", "}}", "{name!r}", "{name:>4}", "{name.upper}", "{name.real}",
                      "{version[9]}", "\n"]


def _is_bare_placeholder_template(template: str) -> bool:
    """Placeholders as names only: no conversion, format spec, attribute or index (the schema need not take those)."""
    try:
        return all(conversion is None and not spec and (field is None or field.isidentifier())
                   for _, field, spec, conversion in Formatter().parse(template))
    except ValueError:
        return True


def test_the_storage_uri_template_schema_admits_only_what_the_operator_accepts() -> None:
    """Else helm installs a template the operator refuses at start-up, and the controller crash-loops."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    pattern = re.compile(schema["properties"]["controller"]["properties"]["storageUriTemplate"]["pattern"])

    def operator_accepts(candidate: str) -> bool:
        try:  # the check `operator run` makes before it starts (controller/cli/main.py _operator_run)
            fill_storage_uri(candidate, name="m", version="1", source="s3://b/m", run_id="r", download_uri="s3://b/m")
            return True
        except Exception:  # whatever it raises ({name.real}: AttributeError), the operator exits on it
            return False

    candidates = ["", "s3://models/{name}/{version}", "s3://models/{model}/{version}", "{download_uri}",
                  "gs://b/{{literal}}/{run_id}"]
    candidates += ["".join(parts) for n in (1, 2, 3) for parts in itertools.product(STORAGE_URI_PIECES, repeat=n)]
    verdicts = {c: (pattern.search(c) is not None, operator_accepts(c)) for c in candidates}
    assert not [c for c, (schema, operator) in verdicts.items() if schema and not operator]
    # The schema refuses only the operator's exotic forms ("{name!r}", "{name.upper}"), never a plain template.
    assert not [c for c, (schema, operator) in verdicts.items()
                if operator and not schema and _is_bare_placeholder_template(c) and "\n" not in c]
    assert verdicts["s3://models/{name}/{version}"] == (True, True)
    assert verdicts["s3://models/{model}/{version}"] == (False, False)
    template = "s3://b/{{x}}/{name}/{version}"
    controller = controller_pod(helm_template("--set-json", f"controller.storageUriTemplate={json.dumps(template)}"))
    assert build_parser().parse_args(controller["containers"][0]["args"]).storage_uri_template == template


def test_the_exporter_is_scraped_as_often_as_the_controller_is_told() -> None:
    """--scrape-interval tells the freshness check how often the exporter's ServiceMonitor scrapes it: an arm with
    no sample within twice that is StaleSeries, so a slower scrape than the flag says makes verdicts stale."""

    def agree(objs: list[Obj]) -> tuple[float, str]:
        monitor = next(obj for obj in objs if obj["kind"] == "ServiceMonitor"
                       and obj["metadata"]["name"].endswith("-exporter"))
        told = build_parser().parse_args(controller_pod(objs)["containers"][0]["args"]).scrape_interval
        return told.total_seconds(), monitor["spec"]["endpoints"][0]["interval"]

    assert agree(helm_template("--set", "monitoring.serviceMonitor.enabled=true",
                               "--set", "controller.scrapeInterval=5s")) == (5, "5s")
    assert agree(helm_template("--set", "monitoring.serviceMonitor.enabled=true")) == (30, "30s")
    assert agree(kustomize_build(DEPLOY)) == (30, "30s")  # deploy/base's flag, deploy/monitoring's interval


def test_the_gate_protocol_reaches_the_controller() -> None:
    assert build_parser().parse_args(controller_pod(helm_template())["containers"][0]["args"]).gate_protocol == "v2"
    args = controller_pod(helm_template("--set", "controller.gateProtocol=v1"))["containers"][0]["args"]
    assert build_parser().parse_args(args).gate_protocol == "v1"


def test_the_dataset_https_hosts_reach_the_controller() -> None:
    hosts = ["data.example.com", "*.datasets.example.com", "10.0.0.7"]
    args = controller_pod(helm_template("--set-json", f"controller.datasetHttpsHosts={json.dumps(hosts)}"))[
        "containers"][0]["args"]
    assert args[-2:] == ["--dataset-https-hosts", ",".join(hosts)]
    # `operator run` splits the flag at commas into OperatorConfig.https_allowed_hosts, the gate's allow-list.
    allowed = tuple(h for h in build_parser().parse_args(args).dataset_https_hosts.split(",") if h)
    for uri in ("https://data.example.com/golden.jsonl", "https://eu.datasets.example.com/g.jsonl",
                "https://10.0.0.7/g.jsonl"):
        check_https_uri(uri, allowed)
    assert "--dataset-https-hosts" not in controller_pod(helm_template())["containers"][0]["args"]


def test_the_command_policy_names_the_configured_argocd_application_controller() -> None:
    def sync_variable(objs: list[Obj]) -> str:
        policy = next(obj for obj in objs if obj["kind"] == "ValidatingAdmissionPolicy"
                      and obj["metadata"]["name"].endswith("-command-actor"))
        return next(" ".join(v["expression"].split()) for v in policy["spec"]["variables"] if v["name"] == "argocdSync")

    assert sync_variable(helm_template()) == \
        "variables.requester == 'system:serviceaccount:argocd:argocd-application-controller'"
    remote = "system:serviceaccount:kube-system:argocd-manager"
    assert sync_variable(helm_template("--set", f"commandPolicy.argocdApplicationController={remote}")) == \
        f"variables.requester == '{remote}'"


DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


@pytest.mark.parametrize("args", [(), ("--set", "nameOverride=" + "n" * 63), ("--set", "fullnameOverride=" + "f" * 44)])
def test_a_long_release_name_still_renders_names_kubernetes_accepts(args: tuple[str, ...]) -> None:
    """Helm allows 53 characters; <release>-modelrollout-controller-metrics would be 84. Services need a DNS-1035
    label (63 at most), Deployments' names go into their pods' hostnames: both are cut to fit, not refused."""
    release = "r" * 53
    objs = by_key(helm_template(*ALL_ON, *args, release=release))
    for kind, name in ((k[1], k[3]) for k in objs if k[1] != "CustomResourceDefinition"):
        assert len(name) <= 63, (kind, name)
        if kind in ("Service", "Deployment", "ServiceAccount"):
            assert DNS_1035_LABEL.fullmatch(name), (kind, name)
    services = {k[3] for k in objs if k[1] == "Service"}
    assert len(services) == 2 and any(name.endswith("-controller-metrics") for name in services)


@pytest.mark.parametrize("release", ["ml.prod", "1team"])
def test_a_release_name_that_makes_no_service_name_is_refused_naming_it(release: str) -> None:
    """Helm takes these; the API server would refuse the Services <release>-modelrollout-exporter at install."""
    result = run_tool("helm", "template", release, str(CHART))
    assert result.returncode != 0 and f'the release name "{release}"' in result.stderr, result.stderr
    renamed = helm_template("--set", "fullnameOverride=ml-prod", release=release)
    assert {obj["metadata"]["name"] for obj in renamed if obj["kind"] == "Service"} == {
        "ml-prod-controller-metrics", "ml-prod-exporter"}


@pytest.mark.parametrize(("interval", "drain", "grace"),
                         [(None, "70s", 80), ("600s", "1210s", 1220), ("1s", "12s", 22)])
def test_the_exporter_drains_two_scrape_intervals_after_sigterm_within_its_grace(interval: str | None, drain: str,
                                                                                grace: int) -> None:
    # The drain ends at the first scrape 2 s after SIGTERM that holds no new series' counts back: two scrape
    # intervals later at most, with 10 s to spare, then up to 5 s for requests in progress, inside the pod's grace.
    # Readiness is the one that fails meanwhile.
    objs = helm_template(*(("--set", f"controller.scrapeInterval={interval}") if interval else ()))
    pod = next(obj for obj in objs if obj["kind"] == "Deployment"
               and obj["metadata"]["name"].endswith("-exporter"))["spec"]["template"]["spec"]
    exporter = pod["containers"][0]
    assert exporter["args"][exporter["args"].index("--drain") + 1] == drain
    assert pod["terminationGracePeriodSeconds"] == grace
    assert exporter["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert exporter["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert build_parser().parse_args(exporter["args"]).drain.total_seconds() == grace - 10
