-- viewing_time_limit.lua: players may watch for at most LIMIT_MS; publishers are never
-- stopped. Edit LIMIT_MS and save: the next verdict uses the new limit.
--
-- apps.toml:            [apps.defaultApp]  plugin = "viewing_time_limit.lua"
-- server.properties:    keep_alive_streaming_sessions_enabled=true
--
-- Also defines the terminate filter `older_than`:
--   POST /rest-api/stream/terminate {"filter": "older_than", "args": {"ms": 600000}}
local LIMIT_MS = 3600000

local M = {}

function M.on_keepalive(stream)
  if not stream.published and stream.age_ms > LIMIT_MS then
    return 403, string.format("viewing time limit of %d s reached", LIMIT_MS // 1000)
  end
  return 200
end

M.filters = {}

-- Streams older than args.ms milliseconds.
function M.filters.older_than(stream, args)
  return stream.age_ms > (args.ms or 0)
end

return M
