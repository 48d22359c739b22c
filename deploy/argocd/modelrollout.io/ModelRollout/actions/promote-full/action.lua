-- Promote full: skip every remaining step and promote the candidate now.
-- The command travels in the annotation modelrollout.io/command, never in the spec, so Argo CD (which
-- syncs the spec from Git) sees no drift. The id makes each click a new command: the controller applies
-- an id at most once, and the resourceVersion changes with every write, the previous click's included.
-- (No clock: the id, and so the action's tests, stay deterministic.)
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
local id = "argocd-promote-full-" .. (obj.metadata.resourceVersion or "0")
obj.metadata.annotations["modelrollout.io/command"] = '{"action":"promote","full":true,"actor":"argocd","id":"' .. id .. '"}'
return obj
