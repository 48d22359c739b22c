-- Rollback: return to the previous version, also after a successful rollout.
-- The command travels in the annotation modelrollout.io/command, never in the spec, so Argo CD (which
-- syncs the spec from Git) sees no drift. The id makes each click a new command: the controller applies
-- an id at most once. os.time() alone could repeat within a second; the resourceVersion changes with
-- every write, including the previous click's.
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
local id = "argocd-rollback-" .. os.time() .. "-" .. (obj.metadata.resourceVersion or "0")
obj.metadata.annotations["modelrollout.io/command"] = '{"action":"rollback","actor":"argocd","id":"' .. id .. '"}'
return obj
