//! What a plugin's state is given besides its own code: the prelude that takes away what a
//! sandbox must not have (and makes the budget's cut-off uncatchable), and the host API —
//! `log`, `json`, `now_ms`, `shared`, `streams`, `files`.

use std::rc::Rc;
use std::sync::Arc;

use mlua::{Function, Lua, LuaSerdeExt, Value};

use super::budget;
use super::sandbox::{Host, json_options};
use super::shared::SharedStore;

const PRELUDE: &str = r#"
-- Globals a sandboxed plugin must not have.
dofile, loadfile, collectgarbage = nil, nil, nil
string.dump = nil
-- A call over its budget or out of memory cannot be caught: whatever catches errors
-- re-raises then.
local over, raw_error = sluice_over, error
sluice_over = nil
local function pass(ok, ...)
  if not ok and (over() or (...) == "not enough memory") then raw_error((...), 0) end
  return ok, ...
end
local raw_pcall, raw_xpcall = pcall, xpcall
local raw_resume, raw_close = coroutine.resume, coroutine.close
pcall = function(...) return pass(raw_pcall(...)) end
-- A message handler runs inside the hook that raised the cut-off, where no hook fires: it is
-- not called then.
xpcall = function(f, handler, ...)
  return pass(raw_xpcall(f, function(...)
    if over() then return ... end
    return handler(...)
  end, ...))
end
-- Finalizers run with hooks off, so a looping one could never be cut off: none are allowed.
local raw_setmetatable, raw_rawget = setmetatable, rawget
setmetatable = function(t, mt)
  if type(t) ~= "table" then
    raw_error("bad argument #1 to 'setmetatable' (table expected, got " .. type(t) .. ")", 2)
  end
  if type(mt) == "table" and raw_rawget(mt, "__gc") ~= nil then
    raw_error("__gc finalizers are not allowed in plugins", 2)
  end
  return raw_setmetatable(t, mt)
end
coroutine.resume = function(...) return pass(raw_resume(...)) end
coroutine.close = function(...) return pass(raw_close(...)) end
local raw_load = load
-- Text chunks only, never precompiled bytecode.
load = function(chunk, name, _mode, env) return raw_load(chunk, name, "t", env) end
local function readonly(t)
  if type(t) ~= "table" then return t end
  for k, v in pairs(t) do
    if type(v) == "table" then t[k] = readonly(v) end
  end
  return setmetatable({}, {
    __index = t,
    __newindex = function() error("read-only", 2) end,
    __pairs = function() return next, t, nil end,
    __len = function() return #t end,
    __metatable = false,
  })
end
return readonly
"#;

pub(super) fn install_host_api(
    lua: &Lua,
    label: &str,
    store: Arc<SharedStore>,
    host: Rc<dyn Host>,
) -> mlua::Result<()> {
    lua.globals().set(
        "sluice_over",
        lua.create_function(|_, ()| Ok(budget::tripped().is_some()))?,
    )?;
    let readonly: Function = lua.load(PRELUDE).set_name("=sluice").eval()?;
    lua.set_named_registry_value("sluice_readonly", readonly)?;
    let globals = lua.globals();

    let log = lua.create_table()?;
    for level in ["info", "warn", "error"] {
        let plugin = label.to_string();
        log.set(
            level,
            lua.create_function(move |_, message: String| {
                let message: String = message.chars().take(2000).collect();
                match level {
                    "info" => tracing::info!(plugin = %plugin, "{message}"),
                    "warn" => tracing::warn!(plugin = %plugin, "{message}"),
                    _ => tracing::error!(plugin = %plugin, "{message}"),
                }
                Ok(())
            })?,
        )?;
    }
    globals.set("log", log)?;

    let json = lua.create_table()?;
    json.set(
        "encode",
        lua.create_function(|lua, value: Value| {
            let value: serde_json::Value = lua.from_value(value)?;
            serde_json::to_string(&value).map_err(mlua::Error::external)
        })?,
    )?;
    json.set(
        "decode",
        lua.create_function(|lua, text: String| {
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(mlua::Error::external)?;
            lua.to_value_with(&value, json_options())
        })?,
    )?;
    globals.set("json", json)?;
    globals.set(
        "now_ms",
        lua.create_function(|_, ()| Ok(crate::registry::now_ms()))?,
    )?;

    let shared = lua.create_table()?;
    let s = store.clone();
    shared.set(
        "get",
        lua.create_function(move |lua, key: String| match s.get(&key) {
            Some(v) => lua.to_value_with(&v, json_options()),
            None => Ok(Value::Nil),
        })?,
    )?;
    let s = store.clone();
    shared.set(
        "set",
        lua.create_function(
            move |lua, (key, value, ttl_ms): (String, Value, Option<u64>)| {
                let value: serde_json::Value = lua.from_value(value)?;
                s.set(&key, value, ttl_ms).map_err(mlua::Error::external)
            },
        )?,
    )?;
    let s = store.clone();
    shared.set(
        "incr",
        lua.create_function(
            move |_, (key, by, ttl_ms): (String, Option<f64>, Option<u64>)| {
                s.incr(&key, by.unwrap_or(1.0), ttl_ms)
                    .map_err(mlua::Error::external)
            },
        )?,
    )?;
    let s = store;
    shared.set(
        "delete",
        lua.create_function(move |_, key: String| Ok(s.delete(&key)))?,
    )?;
    globals.set("shared", shared)?;

    let counter = host.clone();
    let streams = lua.create_table()?;
    streams.set(
        "count",
        lua.create_function(move |_, (name, published): (String, Option<bool>)| {
            Ok(counter.count_streams(&name, published))
        })?,
    )?;
    globals.set("streams", streams)?;

    let files = lua.create_table()?;
    let reader = host.clone();
    files.set(
        "lines",
        lua.create_function(move |_, file: String| {
            reader.read_lines(&file).map_err(mlua::Error::RuntimeError)
        })?,
    )?;
    globals.set("files", files)?;
    Ok(())
}
