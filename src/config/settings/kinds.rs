//! The kinds of value a `server.properties` key can hold: how each is read from its text and
//! how it is spelled back (for `GET /rest-api/config`, the README's table and restart diffs).

use std::fmt::Display;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// How one key's text becomes a value. `Ok(None)` means "the default" (an empty value where
/// the key has no meaning for empty).
pub trait Kind {
    type Value;
    /// `base` is the directory of the file, for relative paths.
    fn parse(&self, raw: &str, base: &Path) -> Result<Option<Self::Value>, String>;
    fn show(&self, value: &Self::Value) -> String;
    /// The unit shown beside a default in the README (`ms`, `bytes`), if any.
    fn unit(&self) -> &'static str {
        ""
    }
}

/// An IP address.
pub struct Address;
impl Kind for Address {
    type Value = IpAddr;
    fn parse(&self, raw: &str, _: &Path) -> Result<Option<IpAddr>, String> {
        raw.parse()
            .map(Some)
            .map_err(|_| format!("'{raw}' is not an IP address"))
    }
    fn show(&self, value: &IpAddr) -> String {
        value.to_string()
    }
}

/// Any kind, or nothing when the value is empty.
pub struct Optional<K>(pub K);
impl<K: Kind> Kind for Optional<K> {
    type Value = Option<K::Value>;
    fn parse(&self, raw: &str, base: &Path) -> Result<Option<Option<K::Value>>, String> {
        if raw.is_empty() {
            return Ok(Some(None));
        }
        Ok(self.0.parse(raw, base)?.map(Some))
    }
    fn show(&self, value: &Option<K::Value>) -> String {
        value.as_ref().map(|v| self.0.show(v)).unwrap_or_default()
    }
}

/// A listener's port: `0` or empty turns the listener off.
pub struct ListenerPort;
impl Kind for ListenerPort {
    type Value = Option<u16>;
    fn parse(&self, raw: &str, _: &Path) -> Result<Option<Option<u16>>, String> {
        match raw {
            "" | "0" => Ok(Some(None)),
            _ => raw
                .parse()
                .map(|p| Some(Some(p)))
                .map_err(|_| format!("'{raw}' is not a port number (1-65535, or 0/empty for off)")),
        }
    }
    fn show(&self, value: &Option<u16>) -> String {
        value.unwrap_or(0).to_string()
    }
}

/// A UDP port; `0` lets the OS choose.
pub struct Port;
impl Kind for Port {
    type Value = u16;
    fn parse(&self, raw: &str, _: &Path) -> Result<Option<u16>, String> {
        raw.parse()
            .map(Some)
            .map_err(|_| format!("'{raw}' is not a port number (0 lets the OS choose)"))
    }
    fn show(&self, value: &u16) -> String {
        value.to_string()
    }
}

/// `true` or `false`, in any case.
pub struct Flag;
impl Kind for Flag {
    type Value = bool;
    fn parse(&self, raw: &str, _: &Path) -> Result<Option<bool>, String> {
        if raw.eq_ignore_ascii_case("true") {
            Ok(Some(true))
        } else if raw.eq_ignore_ascii_case("false") {
            Ok(Some(false))
        } else {
            Err(format!("'{raw}' is not true or false"))
        }
    }
    fn show(&self, value: &bool) -> String {
        value.to_string()
    }
}

/// A whole number of milliseconds, at least `min`.
pub struct Millis {
    pub min: u64,
}
impl Kind for Millis {
    type Value = Duration;
    fn parse(&self, raw: &str, _: &Path) -> Result<Option<Duration>, String> {
        let ms: u64 = raw
            .parse()
            .map_err(|_| format!("'{raw}' is not a number of milliseconds"))?;
        if ms < self.min {
            return Err(format!("{ms} ms is below the minimum of {} ms", self.min));
        }
        Ok(Some(Duration::from_millis(ms)))
    }
    fn show(&self, value: &Duration) -> String {
        value.as_millis().to_string()
    }
    fn unit(&self) -> &'static str {
        "ms"
    }
}

/// A whole number of at least `min`; `what` says what it counts, for errors.
pub struct Count<T> {
    pub min: T,
    pub what: &'static str,
}
impl<T: FromStr + Display + PartialOrd + Copy> Kind for Count<T> {
    type Value = T;
    fn parse(&self, raw: &str, _: &Path) -> Result<Option<T>, String> {
        let n: T = raw
            .parse()
            .map_err(|_| format!("'{raw}' is not {}", self.what))?;
        if n < self.min {
            return Err(format!("must be at least {}", self.min));
        }
        Ok(Some(n))
    }
    fn show(&self, value: &T) -> String {
        value.to_string()
    }
}

/// Text; empty means the default.
pub struct Text;
impl Kind for Text {
    type Value = String;
    fn parse(&self, raw: &str, _: &Path) -> Result<Option<String>, String> {
        Ok((!raw.is_empty()).then(|| raw.to_string()))
    }
    fn show(&self, value: &String) -> String {
        value.clone()
    }
}

/// A comma-separated list, blanks dropped; `secret` lists are shown as a count only.
pub struct List {
    pub secret: bool,
}
impl Kind for List {
    type Value = Vec<String>;
    fn parse(&self, raw: &str, _: &Path) -> Result<Option<Vec<String>>, String> {
        Ok(Some(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        ))
    }
    fn show(&self, value: &Vec<String>) -> String {
        if self.secret && value.is_empty() {
            String::new()
        } else if self.secret {
            format!("({} set)", value.len())
        } else {
            value.join(",")
        }
    }
}

/// STUN/TURN servers for clients: a comma list of URLs (see `ice_servers.rs`).
pub struct IceServers;
impl Kind for IceServers {
    type Value = Vec<super::IceServer>;
    fn parse(&self, raw: &str, _: &Path) -> Result<Option<Self::Value>, String> {
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(super::IceServer::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
    fn show(&self, value: &Self::Value) -> String {
        value
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A path, relative to the file that names it; empty means the default.
pub struct FilePath;
impl Kind for FilePath {
    type Value = PathBuf;
    fn parse(&self, raw: &str, base: &Path) -> Result<Option<PathBuf>, String> {
        Ok((!raw.is_empty()).then(|| base.join(raw)))
    }
    fn show(&self, value: &PathBuf) -> String {
        value.display().to_string()
    }
}
