//! One plugin's Lua state: the sandboxed standard library, the memory cap, the budget of
//! each call (instructions and wall clock, on every Lua thread: see [`super::budget`]),
//! read-only stream views, and the calls into the plugin's entry points. The prelude and the
//! host API it is given live in [`super::host_api`]. It lives on one thread (its worker), so
//! no lock is ever held around a Lua call.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use mlua::{
    AnyUserData, ChunkMode, Function, Lua, LuaOptions, LuaSerdeExt, MetaMethod, StdLib, Table,
    UserData, UserDataMethods, Value,
};

use super::budget::{self, Trip};
use super::host_api::install_host_api;
use super::shared::SharedStore;
use super::{AdmissionRequest, PolicyError};
use crate::registry::{MediaKind, StreamRecord};

/// Limits of one plugin state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: usize,
    /// VM instructions one call may run, in all its coroutines together.
    pub instructions_per_call: u64,
    /// Wall-clock time one call may take.
    pub call_timeout: Duration,
}

/// How long loading a plugin may take (compiling and running its top level).
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 16 * 1024 * 1024,
            instructions_per_call: 1_000_000,
            call_timeout: Duration::from_millis(1000),
        }
    }
}

/// What the host offers a plugin beyond its own code.
pub trait Host: 'static {
    /// Counts streams of `name`: players (`published = false`), publishers, or both.
    fn count_streams(&self, name: &str, published: Option<bool>) -> usize;
    /// The non-empty, non-comment (`#`) lines of a file in the plugin directory, read now.
    fn read_lines(&self, file: &str) -> Result<Vec<String>, String>;
}

/// Reads the lines of `file` (a plain name, no path) in `dir`, for [`Host::read_lines`].
pub fn read_plugin_file(dir: &std::path::Path, file: &str) -> Result<Vec<String>, String> {
    let plain = !file.is_empty()
        && std::path::Path::new(file).components().count() == 1
        && !file.starts_with('.');
    if !plain {
        return Err(format!(
            "'{file}' is not a file name in the plugin directory"
        ));
    }
    let text = std::fs::read_to_string(dir.join(file)).map_err(|e| format!("{file}: {e}"))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect())
}

/// A compiled plugin in its own sandboxed state.
pub struct Sandbox {
    lua: Lua,
    module: Table,
    limits: Limits,
    label: String,
}

/// A Lua answer `code[, reason[, options]]` as the host reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    /// `nil`: no opinion.
    Abstain,
    Code(u16, Option<String>),
    /// `403, reason, {hold_ms = N}`: stop, and refuse the stream's return for N ms.
    Held(Option<String>, u64),
}

impl Sandbox {
    /// Compiles `source` (text only) into a fresh sandboxed state and runs its top level,
    /// which must return a table.
    pub fn load(
        label: &str,
        source: &str,
        limits: Limits,
        store: Arc<SharedStore>,
        host: Rc<dyn Host>,
    ) -> Result<Sandbox, PolicyError> {
        let libs = StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8 | StdLib::COROUTINE;
        let lua = Lua::new_with(libs, LuaOptions::default())
            .map_err(|e| PolicyError::Load(e.to_string()))?;
        lua.set_memory_limit(limits.memory_bytes)
            .map_err(|e| PolicyError::Load(e.to_string()))?;
        install_host_api(&lua, label, store, host).map_err(|e| PolicyError::Load(e.to_string()))?;
        budget::install(&lua).map_err(|e| PolicyError::Load(e.to_string()))?;
        // The top level runs under the budget of a call too, with the load's time limit.
        budget::begin(limits.instructions_per_call, LOAD_TIMEOUT);
        let module: Table = lua
            .load(source)
            .set_name(format!("@{label}"))
            .set_mode(ChunkMode::Text)
            .eval()
            .map_err(|e| PolicyError::Load(failure(&e, &limits)))?;
        Ok(Sandbox {
            lua,
            module,
            limits,
            label: label.to_string(),
        })
    }

    /// Starts the budget of one call.
    fn begin(&self) {
        budget::begin(self.limits.instructions_per_call, self.limits.call_timeout);
    }

    /// A failed call as the host reports it.
    fn failed(&self, e: &mlua::Error) -> PolicyError {
        PolicyError::Call(failure(e, &self.limits))
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn has(&self, entry: &str) -> bool {
        matches!(self.module.get::<Value>(entry), Ok(Value::Function(_)))
    }

    /// The names of the plugin's `filters` table.
    pub fn filter_names(&self) -> Vec<String> {
        let Ok(filters) = self.module.get::<Table>("filters") else {
            return Vec::new();
        };
        filters
            .pairs::<String, Value>()
            .filter_map(|p| p.ok())
            .filter(|(_, v)| matches!(v, Value::Function(_)))
            .map(|(k, _)| k)
            .collect()
    }

    /// `on_keepalive(stream)` → `code[, reason]`.
    pub fn keepalive(&self, stream: StreamRecord) -> Result<Code, PolicyError> {
        self.keepalive_many(vec![stream], &|| {})
            .pop()
            .unwrap_or_else(|| Err(PolicyError::Call("no answer".into())))
    }

    /// `on_keepalive` for many streams, looking the function up once; `on_call` runs before
    /// each call (the worker stamps the call's start with it).
    pub fn keepalive_many(
        &self,
        streams: Vec<StreamRecord>,
        on_call: &dyn Fn(),
    ) -> Vec<Result<Code, PolicyError>> {
        let f: Function = match self.entry("on_keepalive") {
            Ok(f) => f,
            Err(e) => return streams.iter().map(|_| Err(e.clone())).collect(),
        };
        // One view for the whole batch, its record replaced before each call: a userdata per
        // verdict would cost a Lua finalizer each.
        let mut view: Option<AnyUserData> = None;
        streams
            .into_iter()
            .map(|stream| {
                let current = match &view {
                    Some(ud) => {
                        let mut slot = ud
                            .borrow_mut::<LuaStream>()
                            .map_err(|e| PolicyError::Call(one_line(&e)))?;
                        *slot = LuaStream::new(stream);
                        drop(slot);
                        ud.clone()
                    }
                    None => {
                        let ud = self.view(stream)?;
                        view = Some(ud.clone());
                        ud
                    }
                };
                on_call();
                self.code(&f, (current,))
            })
            .collect()
    }

    /// `on_publish(stream, request)` / `on_play(stream, request)` → `code[, reason]`.
    pub fn admit(
        &self,
        stream: StreamRecord,
        request: &AdmissionRequest,
    ) -> Result<Code, PolicyError> {
        let entry = if stream.published {
            "on_publish"
        } else {
            "on_play"
        };
        let f: Function = self.entry(entry)?;
        let view = self.view(stream)?;
        self.begin();
        let request = self.readonly(
            &serde_json::to_value(request).map_err(|e| PolicyError::Call(e.to_string()))?,
        )?;
        self.code(&f, (view, request))
    }

    /// `filters.NAME(stream, args)` → boolean.
    pub fn filter(
        &self,
        name: &str,
        stream: StreamRecord,
        args: &serde_json::Value,
    ) -> Result<bool, PolicyError> {
        self.filter_many(name, vec![stream], args, &|| {})
            .pop()
            .unwrap_or_else(|| Err(PolicyError::Call("no answer".into())))
    }

    /// `filters.NAME(stream, args)` for many streams, with `args` made a Lua table once;
    /// `on_call` runs before each call.
    pub fn filter_many(
        &self,
        name: &str,
        streams: Vec<StreamRecord>,
        args: &serde_json::Value,
        on_call: &dyn Fn(),
    ) -> Vec<Result<bool, PolicyError>> {
        self.begin();
        let prepared = (|| {
            let filters: Table = self
                .module
                .get("filters")
                .map_err(|_| PolicyError::Call("the plugin has no filters table".into()))?;
            let f: Function = filters
                .get(name)
                .map_err(|_| PolicyError::Call(format!("no filter '{name}'")))?;
            Ok::<_, PolicyError>((f, self.readonly(args)?))
        })();
        let (f, args) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => return streams.iter().map(|_| Err(e.clone())).collect(),
        };
        streams
            .into_iter()
            .map(|stream| {
                let view = self.view(stream)?;
                on_call();
                self.begin();
                match f
                    .call::<Value>((view, args.clone()))
                    .map_err(|e| self.failed(&e))?
                {
                    Value::Boolean(b) => Ok(b),
                    other => Err(PolicyError::WrongType(format!(
                        "filter '{name}' returned {}, not a boolean",
                        other.type_name()
                    ))),
                }
            })
            .collect()
    }

    /// `on_connect(connection)` → `code[, reason]`: the connection's fields as its web server's
    /// `connect` hook gets them, read-only.
    pub fn connect(&self, connection: &serde_json::Value) -> Result<Code, PolicyError> {
        let f: Function = self.entry("on_connect")?;
        self.begin();
        let connection = self.readonly(connection)?;
        self.code(&f, (connection,))
    }

    /// `on_stop(stream, reason)`: notification.
    pub fn stopped(&self, stream: StreamRecord, reason: &str) -> Result<(), PolicyError> {
        let f: Function = self.entry("on_stop")?;
        let view = self.view(stream)?;
        self.begin();
        f.call::<()>((view, reason)).map_err(|e| self.failed(&e))
    }

    fn entry(&self, name: &str) -> Result<Function, PolicyError> {
        self.module
            .get(name)
            .map_err(|_| PolicyError::Call(format!("the plugin has no {name}")))
    }

    fn code(&self, f: &Function, args: impl mlua::IntoLuaMulti) -> Result<Code, PolicyError> {
        self.begin();
        let (code, reason, options): (Value, Value, Value) =
            f.call(args).map_err(|e| self.failed(&e))?;
        let hold_ms = hold_option(&options)?;
        let reason = match reason {
            Value::Nil => None,
            Value::String(s) => Some(s.to_string_lossy().chars().take(512).collect()),
            other => {
                return Err(PolicyError::WrongType(format!(
                    "reason is {}, not a string",
                    other.type_name()
                )));
            }
        };
        let code = match code {
            Value::Nil => Ok(Code::Abstain),
            Value::Integer(n) if (100..600).contains(&n) => Ok(Code::Code(n as u16, reason)),
            Value::Number(n) if n.fract() == 0.0 && (100.0..600.0).contains(&n) => {
                Ok(Code::Code(n as u16, reason))
            }
            other => Err(PolicyError::WrongType(format!(
                "returned {} instead of an HTTP-like code (200, 403) or nil",
                describe(&other)
            ))),
        }?;
        match (code, hold_ms) {
            (code, None) => Ok(code),
            (Code::Code(403, reason), Some(ms)) => Ok(Code::Held(reason, ms)),
            (_, Some(_)) => Err(PolicyError::WrongType("hold_ms goes only with 403".into())),
        }
    }

    /// The stream as a read-only userdata: fields are read on access, nothing is copied
    /// into Lua tables, and every write raises.
    fn view(&self, stream: StreamRecord) -> Result<AnyUserData, PolicyError> {
        self.lua
            .create_userdata(LuaStream::new(stream))
            .map_err(|e| PolicyError::Call(one_line(&e)))
    }

    /// A read-only Lua view of a JSON value: writes raise, nested tables too.
    fn readonly(&self, value: &serde_json::Value) -> Result<Table, PolicyError> {
        let err = |e: mlua::Error| PolicyError::Call(one_line(&e));
        let data = self.lua.to_value_with(value, json_options()).map_err(err)?;
        let make: Function = self
            .lua
            .named_registry_value("sluice_readonly")
            .map_err(err)?;
        make.call(data).map_err(err)
    }
}

/// A stream as Lua sees it: the registry's record itself, read field by field on access.
struct LuaStream {
    record: StreamRecord,
    age_ms: u64,
}

impl LuaStream {
    fn new(record: StreamRecord) -> Self {
        let age_ms = crate::registry::now_ms().saturating_sub(record.created_date);
        LuaStream { record, age_ms }
    }
}

impl UserData for LuaStream {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::Index, |lua, this, key: mlua::String| {
            let r = &this.record;
            let text = |t: &str| lua.create_string(t).map(Value::String);
            let key = key.to_str()?;
            Ok(match &*key {
                "mediaSessionId" => text(&r.media_session_id.to_string())?,
                "name" => text(&r.name)?,
                "appKey" => text(&r.app_key)?,
                "published" => Value::Boolean(r.published),
                "status" => text(r.status.as_str())?,
                "info" => text(&r.info)?,
                "sessionId" => text(&r.session_id)?,
                "nodeId" => text(&r.node_id)?,
                "createdDate" => Value::Integer(r.created_date as i64),
                "age_ms" => Value::Integer(this.age_ms as i64),
                "remoteAddress" => text(&r.remote_address)?,
                "has_audio" => Value::Boolean(r.media_kinds.contains(&MediaKind::Audio)),
                "has_video" => Value::Boolean(r.media_kinds.contains(&MediaKind::Video)),
                // A player's publisher publishes under the same name.
                "publisher" if !r.published => text(&r.name)?,
                "media" => {
                    let kinds = r.media_kinds.iter().map(|k| match k {
                        MediaKind::Audio => "audio",
                        MediaKind::Video => "video",
                    });
                    Value::Table(lua.create_sequence_from(kinds)?)
                }
                "custom" => Value::UserData(lua.create_userdata(LuaMap(r.custom.clone()))?),
                _ => Value::Nil,
            })
        });
        methods.add_meta_method(
            MetaMethod::NewIndex,
            |_, _, (_key, _value): (Value, Value)| -> mlua::Result<()> {
                Err(mlua::Error::RuntimeError("the stream is read-only".into()))
            },
        );
    }
}

/// A read-only string map (`stream.custom`): `custom.key`, and `pairs(custom)`.
struct LuaMap(std::collections::BTreeMap<String, String>);

impl UserData for LuaMap {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::Index, |lua, this, key: String| {
            match this.0.get(&key) {
                Some(v) => lua.create_string(v).map(Value::String),
                None => Ok(Value::Nil),
            }
        });
        methods.add_meta_method(
            MetaMethod::NewIndex,
            |_, _, (_key, _value): (Value, Value)| -> mlua::Result<()> {
                Err(mlua::Error::RuntimeError("custom is read-only".into()))
            },
        );
        methods.add_meta_method(MetaMethod::Pairs, |lua, this, ()| {
            let table =
                lua.create_table_from(this.0.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
            let next: Function = lua.globals().get("next")?;
            Ok((next, table, Value::Nil))
        });
    }
}

/// JSON `null` becomes Lua `nil`, so that `request.token == nil` reads as a plugin expects.
pub(super) fn json_options() -> mlua::SerializeOptions {
    mlua::SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false)
}

/// The `hold_ms` of a verdict's options table: a whole number of milliseconds, at most a day.
fn hold_option(options: &Value) -> Result<Option<u64>, PolicyError> {
    let table = match options {
        Value::Nil => return Ok(None),
        Value::Table(t) => t,
        other => {
            return Err(PolicyError::WrongType(format!(
                "options are {}, not a table",
                other.type_name()
            )));
        }
    };
    let max = crate::registry::MAX_HOLD_MS;
    match table.raw_get::<Value>("hold_ms") {
        Ok(Value::Nil) => Ok(None),
        Ok(Value::Integer(n)) if n >= 1 && (n as u64) <= max => Ok(Some(n as u64)),
        Ok(Value::Number(n)) if n.fract() == 0.0 && n >= 1.0 && n <= max as f64 => {
            Ok(Some(n as u64))
        }
        Ok(other) => Err(PolicyError::WrongType(format!(
            "hold_ms is {}, not a whole number of milliseconds from 1 to {max}",
            describe(&other)
        ))),
        Err(e) => Err(PolicyError::WrongType(one_line(&e))),
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Integer(n) => format!("the number {n}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string '{}'", s.to_string_lossy()),
        other => format!("a {}", other.type_name()),
    }
}

/// Why a call failed: the budget it ran over, or the plugin's own error.
fn failure(e: &mlua::Error, limits: &Limits) -> String {
    match budget::tripped() {
        Some(Trip::Instructions) => format!(
            "instruction budget of {} exceeded",
            limits.instructions_per_call
        ),
        Some(Trip::Deadline) => format!(
            "call deadline of {} ms exceeded",
            limits.call_timeout.as_millis()
        ),
        None => one_line(e),
    }
}

/// An error on one line, without the Lua traceback.
fn one_line(e: &mlua::Error) -> String {
    let text = match e {
        mlua::Error::CallbackError { cause, .. } => cause.to_string(),
        other => other.to_string(),
    };
    text.lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(300)
        .collect()
}
