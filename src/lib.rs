//! Sluice: a WebRTC media server (WHIP in, WHEP out) whose streams live only as long as
//! policy allows. See `DESIGN.md` in the shared folder and the README.
//!
//! Modules by capability; dependencies point one way (`api` and `media` use `registry` and
//! `config`; `registry` knows nothing of WebRTC).

pub mod api;
pub mod client;
pub mod clock;
pub mod config;
pub mod hooks;
pub mod keepalive;
pub mod media;
pub mod policy;
pub mod registry;
pub mod server;
mod tls;

pub use server::{RunningServer, ServerOptions, start};
