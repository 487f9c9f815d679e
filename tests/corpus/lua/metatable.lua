local M = {}
function M.on_keepalive(s)
  local mt = getmetatable(s)
  if type(mt) == "table" then mt.__index = function() return "evil" end end
  return 403, tostring(s.name)
end
return M
