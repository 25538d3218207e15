-- ArgoCD health check for Forge's kinds (forge.ai ForgeDataset, ForgeTrainingRun, ForgeDeployment).
-- Maps the operator's phase and conditions to Healthy / Progressing / Degraded / Suspended.
-- One script for the three kinds; argocd-cm.yaml beside it installs it for each.
local PHASES = {
  ForgeDataset = {Pending = "Progressing", Running = "Progressing", Ready = "Healthy", Failed = "Degraded"},
  ForgeTrainingRun = {Pending = "Progressing", Running = "Progressing", Suspended = "Suspended",
                      Succeeded = "Healthy", Failed = "Degraded"},
  ForgeDeployment = {Pending = "Progressing", Progressing = "Progressing", Available = "Healthy",
                     Failed = "Degraded"},
}

local function condition(status, type_)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function health(obj)
  local hs = {}
  local status = obj.status
  if status == nil or status.phase == nil then
    hs.status = "Progressing"
    hs.message = "Waiting for the Forge operator to report a status"
    return hs
  end
  local ready = condition(status, "Ready")
  local message = status.message
  if ready ~= nil and ready.message ~= nil and ready.message ~= "" then
    message = ready.message
  end
  local invalid = condition(status, "InvalidSpec")
  if invalid ~= nil and invalid.status == "True" then
    hs.status = "Degraded"
    hs.message = invalid.message or "The spec is invalid"
    return hs
  end
  local generation = obj.metadata and obj.metadata.generation
  if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
    hs.status = "Progressing"
    hs.message = "The operator has not yet observed generation " .. tostring(generation)
    return hs
  end
  local mapping = PHASES[obj.kind] or {}
  local state = mapping[status.phase]
  if state == nil then
    hs.status = "Unknown"
    hs.message = "Unknown phase " .. tostring(status.phase)
    return hs
  end
  local stalled = condition(status, "Stalled")
  if state == "Progressing" and stalled ~= nil and stalled.status == "True" then
    hs.status = "Degraded"
    hs.message = stalled.message or "The run makes no progress"
    return hs
  end
  hs.status = state
  hs.message = message or ("Phase " .. status.phase)
  return hs
end

return health(obj)
