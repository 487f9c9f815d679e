//! Sluice: a WebRTC media server (WHIP in, WHEP out) whose streams live only as long as
//! policy allows. `ARCHITECTURE.md` maps the modules; the README says how to run it.
//!
//! Modules by capability; dependencies point one way (`api` and `media` use `registry` and
//! `config`; `registry` knows nothing of WebRTC).

pub mod api;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod hooks;
pub mod keepalive;
pub mod media;
pub mod memory;
pub mod policy;
pub mod procstat;
pub mod registry;
pub mod server;
pub mod sessions;
pub mod signalling;
mod tls;

pub use server::{RunningServer, ServerOptions, start};
