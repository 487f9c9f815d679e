-- max_players.lua: at most MAX_PLAYERS players per stream name; the next one is refused
-- with 403 until a player leaves. Publishers are not limited.
--
-- apps.toml:   [apps.defaultApp]  plugin = "max_players.lua"
local MAX_PLAYERS = 100

local M = {}

function M.on_play(stream, request)
  local playing = streams.count(stream.name, false)
  if playing >= MAX_PLAYERS then
    return 403, string.format("stream '%s' is full (%d players)", stream.name, MAX_PLAYERS)
  end
  return 200
end

return M
