//! Tests of the Lua host and its sandbox: verdicts, escapes, budgets on every coroutine,
//! the wall-clock deadline, the host API.

use super::*;
use crate::registry::NewStream;
use std::rc::Rc;

struct Count(usize);
impl Host for Count {
    fn count_streams(&self, _: &str, _: Option<bool>) -> usize {
        self.0
    }
    fn read_lines(&self, _: &str) -> Result<Vec<String>, String> {
        Err("no files in tests".into())
    }
}

fn sandbox(source: &str) -> Result<Sandbox, PolicyError> {
    let limits = Limits {
        memory_bytes: 4 * 1024 * 1024,
        instructions_per_call: 200_000,
        call_timeout: Duration::from_secs(2),
    };
    Sandbox::load(
        "test.lua",
        source,
        limits,
        Arc::default(),
        Rc::new(Count(2)),
    )
}

fn view(published: bool) -> StreamRecord {
    let registry = Registry::new("n");
    registry
        .register_synthetic(NewStream::publisher("cam", "defaultApp"))
        .unwrap();
    let new = if published {
        NewStream::publisher("cam2", "defaultApp")
    } else {
        NewStream::player("cam", "defaultApp")
    };
    registry.register_synthetic(new).unwrap()
}

fn keepalive(source: &str) -> Result<Code, PolicyError> {
    sandbox(source)?.keepalive(view(false))
}

#[test]
fn verdicts_and_fields() {
    let ka = |body: &str| {
        keepalive(&format!(
            "local M = {{}} function M.on_keepalive(s) {body} end return M"
        ))
    };
    assert_eq!(ka("return 200").unwrap(), Code::Code(200, None));
    assert_eq!(
        ka("return 403, 'too long'").unwrap(),
        Code::Code(403, Some("too long".into()))
    );
    assert_eq!(ka("return nil").unwrap(), Code::Abstain);
    assert_eq!(
        ka("if s.published == false and s.publisher == 'cam' and s.age_ms >= 0 and s.status == 'PLAYING' then return 403 end return 200").unwrap(),
        Code::Code(403, None)
    );
    assert_eq!(
        ka("return 403, 'come back later', {hold_ms = 5000}").unwrap(),
        Code::Held(Some("come back later".into()), 5000)
    );
    assert!(
        ka("return 200, nil, {hold_ms = 5000}").is_err(),
        "a hold needs a 403"
    );
    assert!(ka("return 403, 'x', {hold_ms = -1}").is_err());
    assert!(ka("return 403, 'x', {hold_ms = 'soon'}").is_err());
    assert!(ka("return 403, 'x', 5").is_err());
    assert!(matches!(ka("return 'yes'"), Err(PolicyError::WrongType(_))));
    assert!(matches!(ka("return {}"), Err(PolicyError::WrongType(_))));
    assert!(matches!(ka("error('boom')"), Err(PolicyError::Call(m)) if m.contains("boom")));
    assert!(
        matches!(ka("s.name = 'x' return 200"), Err(PolicyError::Call(m)) if m.contains("read-only"))
    );
    assert!(
        matches!(ka("s.custom.x = 'y' return 200"), Err(PolicyError::Call(m)) if m.contains("read-only"))
    );
}

#[test]
fn the_sandbox_holds() {
    for escape in [
        "return io.open('/etc/passwd')",
        "return os.execute('true')",
        "return os.exit(1)",
        "return os.getenv('HOME')",
        "return require('os')",
        "return debug.getinfo(1)",
        "return dofile('/etc/passwd')",
        "return loadfile('/etc/passwd')",
        "return string.dump(function() end)",
        "return load('\\27Lua')()",
        "return package.loadlib('x', 'y')",
        "return collectgarbage('count')",
        "return #string.rep('x', 1e10)",
        "setmetatable(s, {}) return 200",
        "rawset(s, 'name', 'x') return 200",
        "getmetatable(s).__index = function() return 'evil' end return 200",
        "if s.bearer ~= nil or s.token ~= nil then return 200 end error('no token on the view')",
    ] {
        let source = format!("local M = {{}} function M.on_keepalive(s) {escape} end return M");
        let result = keepalive(&source);
        assert!(result.is_err(), "{escape}: {result:?}");
    }
}

#[test]
fn loops_and_bombs_are_cut_off() {
    let looped =
        keepalive("local M = {} function M.on_keepalive(s) while true do end end return M");
    assert!(
        matches!(looped, Err(PolicyError::Call(m)) if m.contains("budget")),
        "infinite loop"
    );
    let bomb = keepalive(
        "local M = {} function M.on_keepalive(s) local t = {} for i = 1, 1e8 do t[i] = string.rep('x', 1000) .. i end end return M",
    );
    assert!(bomb.is_err(), "memory bomb: {bomb:?}");
    // The state survives: the next call works again with a fresh budget.
    let s = sandbox("local M = {} local n = 0 function M.on_keepalive(s) n = n + 1 if n == 1 then while true do end end return 200 end return M").unwrap();
    assert!(s.keepalive(view(true)).is_err());
    assert_eq!(s.keepalive(view(true)).unwrap(), Code::Code(200, None));
    assert!(
        sandbox("while true do end").is_err(),
        "a top level that loops does not load"
    );
    assert!(sandbox("return 5").is_err(), "a module must be a table");
    assert!(sandbox("local M = {").is_err(), "syntax error");
}

#[test]
fn budgets_hold_on_every_coroutine_and_cannot_be_caught() {
    let body = |b: &str| format!("local M = {{}} function M.on_keepalive(s) {b} end return M");
    for escape in [
        "coroutine.wrap(function() while true do end end)() return 200",
        "local co = coroutine.create(function() while true do end end) coroutine.resume(co) return 200",
        "coroutine.wrap(function() coroutine.wrap(function() while true do end end)() end)() return 200",
        "while true do pcall(function() while true do end end) end",
        "while true do pcall(error, 'x') end",
        "while true do xpcall(function() while true do end end, function() while true do end end) end",
        "local ok = pcall(coroutine.wrap(function() while true do end end)) return 200",
        "setmetatable({}, {__gc = function() while true do end end}) return 200",
        "local ok = xpcall(error, function() while true do end end) return 200",
        "local co = coroutine.create(function() local t = {} for i = 1, 1e8 do t[i] = string.rep('x', 1000) .. i end end) coroutine.resume(co) return 200",
    ] {
        let started = std::time::Instant::now();
        let result = keepalive(&body(escape));
        assert!(
            matches!(&result, Err(PolicyError::Call(m)) if m.contains("budget") || m.contains("memory") || m.contains("__gc")),
            "{escape}: {result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{escape} took {:?}",
            started.elapsed()
        );
    }
    // A plugin that catches its own errors still works when it stays within budget.
    assert_eq!(
        keepalive(&body(
            "local ok = pcall(error, 'x') if not ok then return 403, 'caught' end"
        ))
        .unwrap(),
        Code::Code(403, Some("caught".into()))
    );
    let co = body(
        "local co = coroutine.wrap(function() coroutine.yield(1) return 2 end) local a, b = co(), co() return 200 + a + b - 3",
    );
    assert_eq!(keepalive(&co).unwrap(), Code::Code(200, None));
}

#[test]
fn the_wall_clock_deadline_cuts_a_call_off() {
    let limits = Limits {
        memory_bytes: 4 * 1024 * 1024,
        instructions_per_call: u64::MAX / 2,
        call_timeout: Duration::from_millis(50),
    };
    let s = Sandbox::load(
        "slow.lua",
        "local M = {} function M.on_keepalive(s) coroutine.wrap(function() while true do end end)() end return M",
        limits,
        Arc::default(),
        Rc::new(Count(0)),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let result = s.keepalive(view(true));
    assert!(
        matches!(&result, Err(PolicyError::Call(m)) if m.contains("deadline of 50 ms")),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn host_api() {
    let s = sandbox(
        r#"
        local M = {}
        function M.on_keepalive(s)
          local n = shared.incr("calls", 1, 60000)
          shared.set("last", {name = s.name})
          local back = json.decode(json.encode({a = 1}))
          log.info("verdict " .. n)
          if n >= 2 and shared.get("last").name == "cam" and back.a == 1 and now_ms() > 0 and streams.count("cam", false) == 2 then
            return 403, "second call"
          end
          return 200
        end
        M.filters = {}
        function M.filters.named(s, args) return s.name == args.name end
        return M
        "#,
    )
    .unwrap();
    assert_eq!(s.keepalive(view(false)).unwrap(), Code::Code(200, None));
    assert_eq!(
        s.keepalive(view(false)).unwrap(),
        Code::Code(403, Some("second call".into()))
    );
    assert_eq!(s.filter_names(), vec!["named"]);
    assert!(
        s.filter("named", view(false), &serde_json::json!({"name": "cam"}))
            .unwrap()
    );
    assert!(
        !s.filter("named", view(false), &serde_json::json!({"name": "x"}))
            .unwrap()
    );
}
