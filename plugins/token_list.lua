-- token_list.lua: only clients presenting an `Authorization: Bearer` token listed in
-- TOKENS_FILE (one per line, `#` comments, in the plugin directory) may publish or play.
-- The file is read on every request, so tokens added or removed apply at once.
--
-- apps.toml:   [apps.defaultApp]  plugin = "token_list.lua"
local TOKENS_FILE = "tokens.txt"

local M = {}

local function allowed(token)
  if token == nil then
    return false, "a bearer token is required"
  end
  local ok, lines = pcall(files.lines, TOKENS_FILE)
  if not ok then
    log.error("token list unreadable: " .. tostring(lines))
    return false, "the token list is unavailable"
  end
  for _, listed in ipairs(lines) do
    if listed == token then
      return true
    end
  end
  return false, "token not allowed"
end

local function admit(stream, request)
  local ok, why = allowed(request.token)
  if ok then
    return 200
  end
  return 403, why
end

M.on_publish = admit
M.on_play = admit

return M
