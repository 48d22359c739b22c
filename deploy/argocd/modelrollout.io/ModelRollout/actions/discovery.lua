-- Argo CD resource actions for modelrollout.io/ModelRollout: which on-call commands make sense now.
-- Mirrors what the controller accepts (controller/engine/decide.py): a command sent in the wrong phase
-- is harmless (the controller records it as ignored), so this only spares people useless clicks.
local actions = {}
-- Being deleted, the controller takes no command (decide.py refuses them all): nothing to click.
local deleting = obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil
local phase = nil
local pauseReason = nil
local stable = nil
local promotion = nil
local restart = false
if obj.status ~= nil then
  phase = obj.status.phase
  stable = obj.status.stable
  promotion = obj.status.promotion
  restart = obj.status.rollback ~= nil and obj.status.rollback.restart == true
  if obj.status.pause ~= nil then
    pauseReason = obj.status.pause.reason
  end
end

local inFlight = phase == "Pending" or phase == "Gating" or phase == "Progressing" or phase == "Paused"
  or phase == "Promoting" or phase == "Baking"
-- The canary step being run: promote (one step on) skips analysis and pause steps, not one setting the weight.
local settingWeight = false
if phase == "Progressing" and obj.status.currentStep ~= nil and obj.spec ~= nil and obj.spec.canary ~= nil
    and type(obj.spec.canary.steps) == "table" then
  local step = obj.spec.canary.steps[tonumber(obj.status.currentStep) + 1]
  settingWeight = type(step) == "table" and step.setWeight ~= nil
end
-- A missed progress deadline is retried or rolled back, not promoted past.
local canPromote = (phase == "Progressing" and not settingWeight) or phase == "Baking"
  or (phase == "Paused" and pauseReason ~= "ProgressDeadlineExceeded")
local canPromoteFull = canPromote or phase == "Progressing"
-- Retry starts a finished-but-failed rollout again, or re-runs whatever paused it (not a plain pause step).
local canRetry = phase == "RolledBack" or phase == "Failed" or (phase == "Paused" and pauseReason ~= "PauseStep")
-- Rollback also works after success, as long as a promotion left a previous version to return to.
local canRollback = inFlight or (phase == "Succeeded" and stable ~= nil and stable.version ~= nil
  and promotion ~= nil)

-- A rollback making way for a new candidate takes an abort: it finishes and the new candidate is not started.
local canAbort = inFlight or (phase == "RollingBack" and restart)

if deleting then
  canAbort, canPromote, canPromoteFull, canRetry, canRollback = false, false, false, false, false
end

actions["abort"] = {["disabled"] = not canAbort, ["iconClass"] = "fa fa-fw fa-stop-circle"}
actions["promote"] = {["disabled"] = not canPromote, ["iconClass"] = "fa fa-fw fa-forward"}
actions["promote-full"] = {["disabled"] = not canPromoteFull, ["iconClass"] = "fa fa-fw fa-fast-forward",
  ["displayName"] = "Promote full"}
actions["retry"] = {["disabled"] = not canRetry, ["iconClass"] = "fa fa-fw fa-redo-alt"}
actions["rollback"] = {["disabled"] = not canRollback, ["iconClass"] = "fa fa-fw fa-undo"}
return actions
