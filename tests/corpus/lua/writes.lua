local M = {}
function M.on_keepalive(s)
  s.custom.room = "evil"
  return 200
end
return M
