-- Argo CD health check for premium.dev/PremiumFeature.
-- Reads the kstatus contract the operator writes: observedGeneration, then Stalled, Ready and
-- Degraded conditions. Tested by tests/argocd_health.rs against a sample in every phase.
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

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  if c ~= nil and c.reason ~= nil then
    return c.reason
  end
  return fallback
end

local hs = {}
local generation = obj.metadata.generation
if obj.status == nil or obj.status.observedGeneration == nil
    or (generation ~= nil and obj.status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the latest spec"
  return hs
end

local phase = obj.status.phase
if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "Suspended by spec.suspend"
  return hs
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = text(stalled, "Stalled")
  return hs
end

local ready = condition("Ready")
local degraded = condition("Degraded")
if ready ~= nil and ready.status == "True" then
  -- Serving. Running without an optional dependency (or next to an unhealthy one) is the
  -- graceful degradation the feature asked for: healthy, with the reason in the message.
  hs.status = "Healthy"
  if degraded ~= nil and degraded.status == "True" then
    hs.message = "Ready, degraded: " .. text(degraded, "Degraded")
  else
    hs.message = text(ready, "Ready")
  end
  return hs
end

if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = text(degraded, "Degraded")
  return hs
end
if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = text(ready, "Failed")
  return hs
end

-- Pending, WaitingForDependencies, Starting: the operator is still moving it.
hs.status = "Progressing"
hs.message = text(ready, phase or "Progressing")
return hs
