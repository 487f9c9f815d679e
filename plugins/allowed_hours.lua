-- allowed_hours.lua: streams live only between FROM_HOUR and TO_HOUR (UTC, TO excluded;
-- FROM > TO spans midnight). Outside those hours new publishes and plays are refused, and
-- live streams are stopped at their next keep-alive verdict.
--
-- apps.toml:            [apps.defaultApp]  plugin = "allowed_hours.lua"
-- server.properties:    keep_alive_streaming_sessions_enabled=true
local FROM_HOUR = 8
local TO_HOUR = 22

local M = {}

local function open_now()
  local hour = (now_ms() // 3600000) % 24
  if FROM_HOUR <= TO_HOUR then
    return hour >= FROM_HOUR and hour < TO_HOUR, hour
  end
  return hour >= FROM_HOUR or hour < TO_HOUR, hour
end

local function closed_reason(hour)
  return string.format("streaming is open %02d:00-%02d:00 UTC (now %02d h)", FROM_HOUR, TO_HOUR, hour)
end

function M.on_keepalive(stream)
  local open, hour = open_now()
  if open then
    return 200
  end
  return 403, closed_reason(hour)
end

local function admit(stream, request)
  local open, hour = open_now()
  if open then
    return 200
  end
  return 403, closed_reason(hour)
end

M.on_publish = admit
M.on_play = admit

return M
