-- Argo CD health check for premium.dev/PremiumPolicy.
-- Healthy once the operator has applied the current spec and the budget holds; a policy whose
-- settings lose to a higher-priority one is still healthy (the message says so).
local function condition(t)
  if obj.status ~= nil and obj.status.conditions ~= nil then
    for _, c in ipairs(obj.status.conditions) do
      if c.type == t then
        return c
      end
    end
  end
  return nil
end

local hs = {}
local generation = obj.metadata.generation
if obj.status == nil or obj.status.observedGeneration == nil
    or (generation ~= nil and obj.status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the latest spec"
  return hs
end

local budget = condition("BudgetExceeded")
if budget ~= nil and budget.status == "True" then
  hs.status = "Degraded"
  hs.message = "BudgetExceeded: " .. (budget.message or "")
  return hs
end

local ready = condition("Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end
if ready.status ~= "True" then
  hs.status = "Degraded"
  hs.message = ready.reason .. ": " .. (ready.message or "")
  return hs
end

hs.status = "Healthy"
hs.message = ready.message or ""
local conflicting = condition("Conflicting")
if conflicting ~= nil and conflicting.status == "True" then
  hs.message = hs.message .. "; " .. (conflicting.message or "some settings are overridden")
end
return hs
