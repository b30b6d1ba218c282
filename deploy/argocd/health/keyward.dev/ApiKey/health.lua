hs = {status = "Progressing", message = "waiting for Keyward to issue the key"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
if obj.status.observedGeneration ~= nil and obj.metadata.generation ~= nil
    and obj.status.observedGeneration < obj.metadata.generation then
  hs.message = "waiting for Keyward to see the latest spec"
  return hs
end
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Ready" then
    hs.message = (c.reason or "") .. ": " .. (c.message or "")
    if c.status == "True" then
      hs.status = "Healthy"
    elseif c.reason == "Suspended" or c.reason == "SuspendedForAbuse" then
      hs.status = "Suspended"
    else
      hs.status = "Degraded"    -- Expired, InvalidSpec, SecretConflict, RevocationBlocked
    end
    return hs
  end
end
return hs
