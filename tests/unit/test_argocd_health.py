"""The Argo CD health check and resource actions, run under a real Lua 5.1 the way Argo CD runs them.

Argo CD (util/lua/lua.go) runs customizations in gopher-lua (Lua 5.1) with only the base, table and
package libraries and a "safe" os library (time, date); no string, math or io. It sets the global `obj`
to the resource, runs the script and JSON-encodes the returned table. Every case of health_test.yaml and
action_test.yaml runs here in the same sandbox, so a script that leans on a library Argo CD does not load
fails here too.

`python tests/unit/test_argocd_health.py --write-argocd-cm` regenerates deploy/argocd/argocd-cm.yaml.
"""

from __future__ import annotations

import copy
import itertools
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from controller.analysis.judges import proportion_judge, threshold_judge
from controller.api.commands import COMMAND_ANNOTATION, CommandAction, parse_command
from controller.api.status import (
    STATUS_REJECTED,
    AnalysisMode,
    AnalysisStatus,
    ModelRolloutStatus,
    PauseReason,
    PauseStatus,
    Phase,
    VersionRef,
)
from controller.operator.runtime import refused_status
from controller.verdict import Outcome

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "deploy" / "argocd"
CUSTOMIZATION = ARGOCD / "modelrollout.io" / "ModelRollout"
ACTIONS = CUSTOMIZATION / "actions"
ARGOCD_CM = ARGOCD / "argocd-cm.yaml"
FROZEN_CLOCK = 1700000000  # os.time() in action tests, so expected outputs are exact
ACTION_NAMES = ("abort", "promote", "promote-full", "retry", "rollback")

# Runs a script the way Argo CD's VM.runLua does: a fresh state, only Argo CD's libraries, `obj` global.
_SANDBOX = """
local source, obj, clock = ...
local safe_os = {
  time = function(t) if t == nil and clock ~= nil then return clock end return os.time(t) end,
  date = os.date,
}
local env = {
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs, pcall = pcall,
  select = select, tonumber = tonumber, tostring = tostring, type = type, unpack = unpack,
  xpcall = xpcall, rawget = rawget, rawset = rawset, rawequal = rawequal, setmetatable = setmetatable,
  getmetatable = getmetatable, print = print, _VERSION = _VERSION,
  table = {insert = table.insert, remove = table.remove, concat = table.concat, sort = table.sort,
           getn = table.getn, maxn = table.maxn},
  os = safe_os,
  require = function(name)
    if name == "os" then return safe_os end
    error("module '" .. tostring(name) .. "' is not available in Argo CD's Lua VM")
  end,
  obj = obj,
}
env._G = env
-- gopher-lua without the string library gives strings no methods: ("x"):upper() must fail here too.
getmetatable("").__index = nil
local chunk, err = loadstring(source, "=script")
if chunk == nil then error(err) end
setfenv(chunk, env)
return chunk()
"""


def _to_lua(runtime: Any, value: Any) -> Any:
    """Python (from YAML) to Lua, as Argo CD's decodeValue: maps and lists become tables, null becomes nil."""
    if isinstance(value, dict):
        table = runtime.table()
        for key, item in value.items():
            if item is not None:
                table[key] = _to_lua(runtime, item)
        return table
    if isinstance(value, list):
        # gopher-lua's Append ignores nil, so a null item is dropped and the next one takes its index.
        return runtime.table(*[_to_lua(runtime, item) for item in value if item is not None])
    return value


def _from_lua(value: Any) -> Any:
    """Lua to Python, as gopher-json encodes it: 1..n keys make an array, an empty table an empty array."""
    if lua51.lua_type(value) == "table":
        items = dict(value.items())
        if not items:
            return []
        if all(isinstance(key, int) for key in items) and sorted(items) == list(range(1, len(items) + 1)):
            return [_from_lua(items[index]) for index in range(1, len(items) + 1)]
        return {str(key): _from_lua(item) for key, item in items.items()}
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _clean_returned(new: Any, old: Any) -> Any:
    """Argo CD's cleanReturnedObj: an empty table that was a map in the input stays a map."""
    if isinstance(new, dict) and isinstance(old, dict):
        return {key: _clean_returned(item, old[key]) if key in old else item for key, item in new.items()}
    if isinstance(new, list) and isinstance(old, dict) and not new:
        return old
    if isinstance(new, list) and isinstance(old, list):
        return [_clean_returned(item, old[i]) if i < len(old) else item for i, item in enumerate(new)]
    return new


def run_lua(script: Path | str, obj: dict[str, Any], clock: int | None = None) -> Any:
    """Run a script file (or source text) with `obj` set; return what it returns, as Argo CD decodes it."""
    source = script.read_text() if isinstance(script, Path) else script
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True, register_eval=False, register_builtins=False)
    sandbox = runtime.execute("return function(...) " + _SANDBOX + " end")
    return _from_lua(sandbox(source, _to_lua(runtime, obj), clock))


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


HEALTH_CASES = _load(CUSTOMIZATION / "health_test.yaml")["tests"]
ACTION_TESTS = _load(ACTIONS / "action_test.yaml")


@pytest.mark.parametrize("case", HEALTH_CASES, ids=[c["inputPath"] for c in HEALTH_CASES])
def test_health(case: dict[str, Any]) -> None:
    obj = _load(CUSTOMIZATION / case["inputPath"])
    assert run_lua(CUSTOMIZATION / "health.lua", obj) == case["healthStatus"]


def test_health_cases_cover_every_phase() -> None:
    crd = _load(REPO / "crds" / "modelrollout.io_modelrollouts.yaml")
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    phases = set(status["properties"]["phase"]["enum"])
    covered = {_load(CUSTOMIZATION / case["inputPath"]).get("status", {}).get("phase") for case in HEALTH_CASES}
    assert phases <= covered, f"no health case for {sorted(phases - covered)}"


@pytest.mark.parametrize("case", [c for c in HEALTH_CASES if c["healthStatus"]["status"] != "Degraded"],
                         ids=lambda c: c["inputPath"])
def test_a_status_the_api_server_refused_is_degraded_whatever_the_status_kept_says(case: dict[str, Any]) -> None:
    """The operator keeps the stored status (its phase, message and observedGeneration say what they said) and only
    says, in Ready, that the status it decided was refused: the rollout does not move on, and Argo CD shows that."""
    obj = _load(CUSTOMIZATION / case["inputPath"])
    generation = int(obj["metadata"].get("generation") or 0)
    obj["status"] = refused_status(obj.get("status"), "too large (HTTP 500: etcdserver: request is too large); it "
                                   "was 1,734,328 bytes", generation, datetime(2026, 11, 27, 9, 20, tzinfo=UTC))
    (ready,) = [c for c in obj["status"]["conditions"] if c["type"] == "Ready"]
    assert ready["reason"] == STATUS_REJECTED
    assert run_lua(CUSTOMIZATION / "health.lua", json.loads(json.dumps(obj))) == {"status": "Degraded",
                                                                                  "message": ready["message"]}


@pytest.mark.parametrize("case", ACTION_TESTS["discoveryTests"],
                         ids=[c["inputPath"] for c in ACTION_TESTS["discoveryTests"]])
def test_action_discovery(case: dict[str, Any]) -> None:
    result = run_lua(ACTIONS / "discovery.lua", _load(ACTIONS / case["inputPath"]))
    # ExecuteResourceActionDiscovery: one ResourceAction per key, the table's fields unmarshalled into it.
    found = {name: {"name": name, **fields} for name, fields in result.items()}
    expected = {item["name"]: item for item in case["result"]}
    assert found == expected


@pytest.mark.parametrize("case", ACTION_TESTS["actionTests"],
                         ids=[f"{c['action']}:{c['inputPath']}" for c in ACTION_TESTS["actionTests"]])
def test_action(case: dict[str, Any]) -> None:
    before = _load(ACTIONS / case["inputPath"])
    after = _clean_returned(run_lua(ACTIONS / case["action"] / "action.lua", copy.deepcopy(before), FROZEN_CLOCK),
                            before)
    assert after == _load(ACTIONS / case["expectedOutputPath"])


def test_action_test_header_states_the_id_the_expected_outputs_hold() -> None:
    """The header is how a reader of action_test.yaml learns what the ids in the expected outputs are made of."""
    lines = (ACTIONS / "action_test.yaml").read_text().splitlines()
    header = " ".join(" ".join(line.lstrip("#") for line in itertools.takewhile(lambda x: x.startswith("#"), lines))
                      .split()).lower()
    assert "the command id is argocd-<action>-<resourceversion>" in header and "<time>" not in header, header
    for case in ACTION_TESTS["actionTests"]:
        version = _load(ACTIONS / case["inputPath"])["metadata"]["resourceVersion"]
        written = _load(ACTIONS / case["expectedOutputPath"])["metadata"]["annotations"][COMMAND_ANNOTATION]
        assert parse_command(written).id == f"argocd-{case['action']}-{version}", case


@pytest.mark.parametrize("action", ACTION_NAMES)
def test_action_changes_only_the_command_annotation(action: str) -> None:
    """Argo CD syncs the spec from Git: an action that touched it would be drift, and undone by the next sync."""
    before = _load(ACTIONS / "testdata" / "paused_pauseStep.yaml")
    after = _clean_returned(run_lua(ACTIONS / action / "action.lua", copy.deepcopy(before)), before)
    annotations = after["metadata"].pop("annotations")
    expected_annotations = dict(before["metadata"].pop("annotations"))
    assert annotations.pop(COMMAND_ANNOTATION) != expected_annotations.pop(COMMAND_ANNOTATION)
    assert annotations == expected_annotations
    assert after == before


def _paused_on_real_verdicts() -> dict[str, Any]:
    """A rollout paused on an inconclusive analysis, its status written by the real to_json from the real judges'
    verdicts, whose evidence holds None (max_rate without maxRate; min of a threshold with only a max)."""
    verdicts = (proportion_judge("nsfw-rate", 3, 1400, 280, 140000, queries={"canary": "q"},
                                 window={"start": "s", "end": "e"}),
                threshold_judge("p99-latency", 0.2, maximum=0.5, query="q2"))
    assert verdicts[0].evidence["max_rate"] is None and verdicts[1].evidence["min"] is None
    since = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    status = ModelRolloutStatus(
        phase=Phase.PAUSED, observed_generation=1, message="Paused: analysis inconclusive.", attempt=1,
        candidate=VersionRef("7"), stable=VersionRef("6"), current_step=1, step="2/6", canary_weight=1,
        pause=PauseStatus(PauseReason.ANALYSIS_INCONCLUSIVE, since=since, resume_phase=Phase.PROGRESSING),
        analysis=AnalysisStatus(mode=AnalysisMode.CANARY, window_start=since, step_index=1, runs=1,
                                last_run_at=since, outcome=Outcome.INCONCLUSIVE, metrics=verdicts))
    obj = _load(ACTIONS / "testdata" / "paused_analysisInconclusive.yaml")
    # As the API server stores it and hands it to argocd-server: JSON.
    return {**obj, "status": json.loads(json.dumps(status.to_dict()))}


@pytest.mark.parametrize("action", ACTION_NAMES)
def test_action_on_a_status_the_operator_wrote_changes_only_the_command_annotation(action: str) -> None:
    """A status difference would make argocd-server patch /status too, with its copy of the evidence: an analysis
    run the operator wrote meanwhile would be put back to the one before."""
    before = _paused_on_real_verdicts()
    after = _clean_returned(run_lua(ACTIONS / action / "action.lua", copy.deepcopy(before)), before)
    annotations = after["metadata"].pop("annotations")
    expected_annotations = dict(before["metadata"].pop("annotations", {}))
    assert annotations.pop(COMMAND_ANNOTATION) != expected_annotations.pop(COMMAND_ANNOTATION, None)
    assert annotations == expected_annotations
    assert after == before


@pytest.mark.parametrize("action", ACTION_NAMES)
def test_action_writes_a_command_the_controller_accepts(action: str) -> None:
    """The annotation goes through the controller's own parser, with the real clock."""
    obj = _load(ACTIONS / "testdata" / "progressing.yaml")
    first = parse_command(run_lua(ACTIONS / action / "action.lua", copy.deepcopy(obj))["metadata"]["annotations"]
                          [COMMAND_ANNOTATION])
    assert first.actor == "argocd"
    assert first.action is CommandAction("promote" if action == "promote-full" else action)
    assert first.full is (action == "promote-full")
    # The previous click changed the resourceVersion: the next click in the same second is a new command.
    obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
    second = parse_command(run_lua(ACTIONS / action / "action.lua", obj)["metadata"]["annotations"]
                           [COMMAND_ANNOTATION])
    assert second.id != first.id


def test_every_action_is_discovered_and_tested() -> None:
    on_disk = {path.parent.name for path in ACTIONS.glob("*/action.lua")}
    assert on_disk == set(ACTION_NAMES)
    assert {case["action"] for case in ACTION_TESTS["actionTests"]} == on_disk
    for case in ACTION_TESTS["discoveryTests"]:
        assert {item["name"] for item in case["result"]} == on_disk


def test_sandbox_refuses_what_argocd_does_not_load() -> None:
    """The harness itself: libraries Argo CD leaves out are missing here too."""
    for source in ('return {status = string.format("%s", "x")}', 'return {status = ("x"):upper()}',
                   'local m = require("math") return {}', "return {status = tostring(math.floor(1))}",
                   'return {status = io.read()}'):
        with pytest.raises(lua51.LuaError):
            run_lua(source, {})
    assert run_lua('local os = require("os") return {t = os.time(), s = obj.a[2]}', {"a": [1, None, 3]}, 5) == \
        {"t": 5, "s": 3}


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so the Lua stays readable in the ConfigMap."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


_LiteralDumper.add_representer(str, _represent_str)


def render_argocd_cm() -> str:
    """argocd-cm entries built from the Lua files (Argo CD's resource.customizations.* keys)."""
    health = (CUSTOMIZATION / "health.lua").read_text()
    actions = {"discovery.lua": (ACTIONS / "discovery.lua").read_text(),
               "definitions": [{"name": name, "action.lua": (ACTIONS / name / "action.lua").read_text()}
                               for name in ACTION_NAMES]}
    config_map = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "argocd-cm", "namespace": "argocd",
                     "labels": {"app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"}},
        "data": {"resource.customizations.health.modelrollout.io_ModelRollout": health,
                 "resource.customizations.actions.modelrollout.io_ModelRollout":
                     yaml.dump(actions, Dumper=_LiteralDumper, sort_keys=False, width=1000)},
    }
    header = ("# Generated from deploy/argocd/modelrollout.io/ModelRollout by\n"
              "#   .venv/bin/python tests/unit/test_argocd_health.py --write-argocd-cm\n"
              "# Merge into Argo CD's argocd-cm (e.g. as a patch in the kustomization that installs Argo CD).\n")
    return header + yaml.dump(config_map, Dumper=_LiteralDumper, sort_keys=False, width=1000)


def test_argocd_cm_is_generated_from_the_lua_files() -> None:
    assert ARGOCD_CM.read_text() == render_argocd_cm(), (
        "deploy/argocd/argocd-cm.yaml is stale: run "
        ".venv/bin/python tests/unit/test_argocd_health.py --write-argocd-cm")
    data = yaml.safe_load(ARGOCD_CM.read_text())["data"]
    actions = yaml.safe_load(data["resource.customizations.actions.modelrollout.io_ModelRollout"])
    assert actions["discovery.lua"] == (ACTIONS / "discovery.lua").read_text()
    assert [d["name"] for d in actions["definitions"]] == list(ACTION_NAMES)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-argocd-cm"]:
        sys.exit("usage: test_argocd_health.py --write-argocd-cm")
    ARGOCD_CM.write_text(render_argocd_cm())
    print(f"wrote {ARGOCD_CM.relative_to(REPO)}")
