-- Argo CD health check for modelrollout.io/ModelRollout.
-- Runs in Argo CD's Lua 5.1 VM (gopher-lua) with only the base, table and a safe os library:
-- no string library, so only the .. operator and tostring/tonumber are used.
local hs = {}

local function message(default)
  if obj.status ~= nil and obj.status.message ~= nil and obj.status.message ~= "" then
    return obj.status.message
  end
  return default
end

-- The Ready condition when it is False, else nil.
local function notReady()
  if obj.status == nil or type(obj.status.conditions) ~= "table" then
    return nil
  end
  for _, condition in ipairs(obj.status.conditions) do
    if type(condition) == "table" and condition.type == "Ready" and condition.status == "False" then
      return condition
    end
  end
  return nil
end
local ready = notReady()

-- A status the operator cannot read: it does nothing at all for the rollout. Or one it decided and the API server
-- refused to store (too large, invalid): the rollout does not move on. Checked first, because the phase, message and
-- observedGeneration are the status kept as it was; only the condition is current.
local stuck = {StatusUnreadable = "The operator cannot read the status",
  StatusRejected = "The API server refused to store the status the operator decided"}
if ready ~= nil and stuck[ready.reason] ~= nil then
  hs.status = "Degraded"
  hs.message = ready.message or stuck[ready.reason]
  return hs
end

if obj.status == nil or obj.status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to observe the rollout"
  return hs
end

-- Until the controller has seen the latest spec, its status describes an older one.
local generation = tonumber(obj.metadata.generation)
local observed = tonumber(obj.status.observedGeneration)
if generation ~= nil and observed ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to observe generation " .. tostring(generation)
    .. " (observed " .. tostring(observed) .. ")"
  return hs
end

-- A spec the controller cannot run, or a target another ModelRollout is rolling out on, holds the rollout where it
-- is: nothing moves until that is fixed or the other one ends.
local held = {InvalidSpec = "The spec is invalid", TargetConflict = "Another ModelRollout is rolling out on the target"}
if ready ~= nil and held[ready.reason] ~= nil then
  hs.status = "Degraded"
  hs.message = message(ready.message or held[ready.reason])
  return hs
end

-- Still trying, but stuck past progressDeadline (the registry away, its credentials Secret missing): Degraded, as
-- Argo CD shows a Deployment whose Progressing condition is False with this reason.
if type(obj.status.conditions) == "table" then
  for _, condition in ipairs(obj.status.conditions) do
    if type(condition) == "table" and condition.type == "Progressing" and condition.status == "False"
        and condition.reason == "ProgressDeadlineExceeded" then
      hs.status = "Degraded"
      hs.message = message(condition.message or "No progress for longer than progressDeadline")
      return hs
    end
  end
end

local phase = obj.status.phase
-- Paused after a failed check (automatic rollback off): the candidate is known bad, not merely waiting.
local failedPause = {GateFailed = true, AnalysisFailed = true, BakeFailed = true, ProgressDeadlineExceeded = true}
local inFlight = {
  Pending = "Resolving the candidate model",
  Gating = "Testing the candidate on the golden dataset",
  Progressing = "Shifting traffic to the candidate",
  Promoting = "Promoting the candidate",
  Baking = "Promoted; watching the new version during the bake",
  RollingBack = "Rolling back to the stable version",
}

if phase == "Succeeded" and ready ~= nil and ready.reason == "PreviouslyRejected" then
  -- Done, but production serves a version a verdict rejected (the stable alias was moved onto it by hand).
  hs.status = "Degraded"
  hs.message = message(ready.message or "Production serves a version a verdict rejected")
elseif phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = message("The candidate was promoted")
elseif phase == "Paused" and obj.status.pause ~= nil and failedPause[obj.status.pause.reason] then
  hs.status = "Degraded"
  hs.message = message("Paused after a failed check: waiting for abort or promote")
elseif phase == "Paused" then
  -- Waiting for a human (a pause step, or an inconclusive judgement set to pause).
  hs.status = "Suspended"
  hs.message = message("Paused: waiting for promote, retry or abort")
elseif phase == "RolledBack" then
  hs.status = "Degraded"
  hs.message = message("Rolled back to the stable version")
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message("The rollout failed")
elseif phase == nil then
  hs.status = "Progressing"
  hs.message = message("Waiting for the controller to set a phase")
elseif inFlight[phase] ~= nil then
  hs.status = "Progressing"
  hs.message = message(inFlight[phase])
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
