//! `sluice plugin test`: runs one entry point of a plugin file offline, with the same sandbox
//! and budgets as the server, and answers as JSON.

use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use super::sandbox::{self, Code, Host, Limits, Sandbox};
use super::{AdmissionRequest, PolicyError, StreamView};

/// Runs one entry point of a plugin file offline (`sluice plugin test`).
pub fn test_offline(path: &Path, call: OfflineCall) -> Result<serde_json::Value, PolicyError> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| PolicyError::Load(format!("{}: {e}", path.display())))?;
    struct Offline(usize, std::path::PathBuf);
    impl Host for Offline {
        fn count_streams(&self, _: &str, _: Option<bool>) -> usize {
            self.0
        }
        fn read_lines(&self, file: &str) -> Result<Vec<String>, String> {
            sandbox::read_plugin_file(&self.1, file)
        }
    }
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let label = path.display().to_string();
    let players = match &call {
        OfflineCall::Admit { players, .. } => *players,
        _ => 0,
    };
    let sandbox = Sandbox::load(
        &label,
        &source,
        Limits::default(),
        Arc::default(),
        Rc::new(Offline(players, dir)),
    )?;
    let code = |c: Code| match c {
        Code::Abstain => serde_json::json!({"code": null}),
        Code::Code(code, reason) => serde_json::json!({"code": code, "reason": reason}),
        Code::Held(reason, hold_ms) => {
            serde_json::json!({"code": 403, "reason": reason, "holdMs": hold_ms})
        }
    };
    Ok(match call {
        OfflineCall::KeepAlive(view) => code(sandbox.keepalive(view.into_record())?),
        OfflineCall::Admit { view, request, .. } => {
            code(sandbox.admit(view.into_record(), &request)?)
        }
        OfflineCall::Filter { name, args, view } => {
            serde_json::json!({"match": sandbox.filter(&name, view.into_record(), &args)?})
        }
        OfflineCall::Stop { view, reason } => {
            sandbox.stopped(view.into_record(), &reason)?;
            serde_json::json!({"ok": true})
        }
    })
}

/// One offline call of `sluice plugin test`.
pub enum OfflineCall {
    KeepAlive(StreamView),
    Admit {
        view: StreamView,
        request: AdmissionRequest,
        players: usize,
    },
    Filter {
        name: String,
        args: serde_json::Value,
        view: StreamView,
    },
    Stop {
        view: StreamView,
        reason: String,
    },
}
