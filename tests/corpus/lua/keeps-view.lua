local M = {}
local kept
function M.on_keepalive(s)
  if kept then return 403, kept.name end
  kept = s
  return 200
end
return M
