//! `server.properties`: Java properties syntax, parsed by the `java-properties` crate, into
//! one typed [`Settings`] with defaults.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use java_properties::{LineContent, PropertiesIter};

use super::ConfigError;

/// Where media flows: one UDP port shared by every session, or a port per session from a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaPorts {
    /// One socket for all sessions (`media_udp_mux_port`); `0` lets the OS choose it.
    Mux(u16),
    /// A socket per session from `media_port_from..=media_port_to`; `0..=0` lets the OS choose.
    Range(u16, u16),
}

/// Typed server settings. Every field has a default; see the README for each key.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `rest_api_address`: the address the HTTP(S) listeners bind.
    pub rest_api_address: IpAddr,
    /// `rest_api_port`; `None` (0 or empty) turns the HTTP listener off.
    pub rest_api_port: Option<u16>,
    /// `rest_api_https_port`; `None` (0 or empty) turns the HTTPS listener off.
    pub rest_api_https_port: Option<u16>,
    /// `rest_api_https_cert` / `rest_api_https_key` (PEM); self-signed when absent.
    pub https_cert: Option<PathBuf>,
    pub https_key: Option<PathBuf>,
    /// `rest_api_tokens`: comma list of bearer tokens for `/rest-api/`; none means open.
    pub rest_api_tokens: Vec<String>,
    /// `rest_api_tokens_file`: more tokens, one per line (`#` comments), re-read on change.
    pub rest_api_tokens_file: Option<PathBuf>,
    pub media_ports: MediaPorts,
    /// `media_public_ip`: announced as an extra ICE candidate for clients beyond NAT.
    pub media_public_ip: Option<IpAddr>,
    /// `ice_include_loopback`: offer 127.0.0.1 candidates (needed by clients on the same host).
    pub ice_include_loopback: bool,
    /// `ice_loopback_only`: gather candidates on loopback only (tests, single-host set-ups).
    pub ice_loopback_only: bool,
    /// `ice_disconnected_timeout` / `ice_failed_timeout` (ms): how long a silent peer lives.
    pub ice_disconnected_timeout: Duration,
    pub ice_failed_timeout: Duration,
    /// `node_id`: shown as `nodeId` in stream records.
    pub node_id: String,
    /// `max_sdp_size` (bytes): larger WHIP/WHEP bodies get `413`.
    pub max_sdp_size: usize,
    /// `http_header_timeout` (ms): a client must send its request headers within this
    /// time or its connection is closed (slow-loris clients).
    pub http_header_timeout: Duration,
    /// `http_request_timeout` (ms): a request must be read and answered within this time
    /// (`408` otherwise); status event streams are not cut once they have started.
    pub http_request_timeout: Duration,
    /// `player_wait_for_publisher` (ms): how long a WHEP request waits for a publisher that
    /// has connected but not yet sent its first media.
    pub player_wait_for_publisher: Duration,
    /// `plugin_dir`: where `apps.toml` plugins live (relative to the config directory).
    pub plugin_dir: PathBuf,
    /// `rest_hook_timeout` (ms): how long one REST hook call may take.
    pub rest_hook_timeout: Duration,
    /// `rest_hook_max_in_flight`: REST hook calls in flight per app at most.
    pub rest_hook_max_in_flight: usize,
    /// `keep_alive_failures_to_stop`: with `restOnError = FAIL`, a stream is stopped after this
    /// many keep-alive verdicts in a row that failed (hook down, timeout, garbage).
    pub keep_alive_failures_to_stop: u32,
    /// `rest_hook_breaker_failures`: after this many failed calls in a row to an app's web
    /// server, its hooks are not called for a cool-down; `0` turns the breaker off.
    pub rest_hook_breaker_failures: u32,
    /// `rest_hook_breaker_cooldown` (ms): how long an open breaker waits before one probe.
    pub rest_hook_breaker_cooldown: Duration,
    /// `plugin_memory_limit` (bytes): the memory cap of each plugin's Lua state.
    pub plugin_memory_limit: usize,
    /// `plugin_instruction_budget`: Lua VM instructions one plugin call may run.
    pub plugin_instruction_budget: u64,
    /// `plugin_call_timeout` (ms): wall-clock time one plugin call may take.
    pub plugin_call_timeout: Duration,
    /// `max_sessions`: live streams (publishers and players) the server takes at most;
    /// `0` means no limit.
    pub max_sessions: usize,
    /// `offer_rate_per_address`: WHIP/WHEP offers one client address may make per second
    /// (bursts of twice that); `0` turns the limit off.
    pub offer_rate_per_address: u32,
    /// `shutdown_timeout` (ms): how long a shutdown may take to end every stream and deliver
    /// the last status events.
    pub shutdown_timeout: Duration,
    pub keep_alive_streaming_sessions_enabled: bool,
    pub streaming_sessions_keep_alive_interval: Duration,
    pub streaming_sessions_keep_alive_app_keys: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            rest_api_address: IpAddr::from([0, 0, 0, 0]),
            rest_api_port: Some(8081),
            rest_api_https_port: Some(8444),
            https_cert: None,
            https_key: None,
            rest_api_tokens: Vec::new(),
            rest_api_tokens_file: None,
            media_ports: MediaPorts::Range(31001, 32000),
            media_public_ip: None,
            ice_include_loopback: true,
            ice_loopback_only: false,
            ice_disconnected_timeout: Duration::from_millis(4000),
            ice_failed_timeout: Duration::from_millis(8000),
            node_id: "sluice".into(),
            max_sdp_size: 64 * 1024,
            http_header_timeout: Duration::from_millis(10_000),
            http_request_timeout: Duration::from_millis(30_000),
            player_wait_for_publisher: Duration::from_millis(5000),
            plugin_dir: PathBuf::from("plugins"),
            rest_hook_timeout: Duration::from_millis(3000),
            rest_hook_max_in_flight: 64,
            keep_alive_failures_to_stop: 3,
            rest_hook_breaker_failures: 5,
            rest_hook_breaker_cooldown: Duration::from_millis(5000),
            plugin_memory_limit: 16 * 1024 * 1024,
            plugin_instruction_budget: 1_000_000,
            plugin_call_timeout: Duration::from_millis(1000),
            max_sessions: 10_000,
            offer_rate_per_address: 50,
            shutdown_timeout: Duration::from_millis(10_000),
            keep_alive_streaming_sessions_enabled: false,
            streaming_sessions_keep_alive_interval: Duration::from_millis(10_000),
            streaming_sessions_keep_alive_app_keys: vec!["defaultApp".into()],
        }
    }
}

/// The keys this version knows. An unknown key is an error: a typo must not silently
/// leave a default in force.
const KNOWN_KEYS: &[&str] = &[
    "rest_api_address",
    "rest_api_port",
    "rest_api_https_port",
    "rest_api_https_cert",
    "rest_api_https_key",
    "rest_api_tokens",
    "rest_api_tokens_file",
    "media_port_from",
    "media_port_to",
    "media_udp_mux_port",
    "media_public_ip",
    "ice_include_loopback",
    "ice_loopback_only",
    "ice_disconnected_timeout",
    "ice_failed_timeout",
    "node_id",
    "max_sdp_size",
    "http_header_timeout",
    "http_request_timeout",
    "player_wait_for_publisher",
    "plugin_dir",
    "rest_hook_timeout",
    "rest_hook_max_in_flight",
    "keep_alive_failures_to_stop",
    "rest_hook_breaker_failures",
    "rest_hook_breaker_cooldown",
    "plugin_memory_limit",
    "plugin_instruction_budget",
    "plugin_call_timeout",
    "max_sessions",
    "offer_rate_per_address",
    "shutdown_timeout",
    "keep_alive_streaming_sessions_enabled",
    "streaming_sessions_keep_alive_interval",
    "streaming_sessions_keep_alive_app_keys",
];

/// Keys read once at start: a change is reported and takes effect at the next restart.
pub const RESTART_KEYS: &[&str] = &[
    "rest_api_address",
    "rest_api_port",
    "rest_api_https_port",
    "media_port_from",
    "media_port_to",
    "media_udp_mux_port",
    "media_public_ip",
    "ice_include_loopback",
    "ice_loopback_only",
    "ice_disconnected_timeout",
    "ice_failed_timeout",
    "node_id",
    "max_sdp_size",
    "http_header_timeout",
];

struct Reader<'a> {
    file: &'a Path,
    values: HashMap<String, (usize, String)>,
}

impl Reader<'_> {
    fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let line = self.values.get(key).map(|(l, _)| *l).unwrap_or(0);
        ConfigError::Value {
            file: self.file.to_path_buf(),
            line,
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn raw(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(|(_, v)| v.trim())
    }

    fn parse<T: std::str::FromStr>(
        &self,
        key: &str,
        allowed: &str,
    ) -> Result<Option<T>, ConfigError> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| self.error(key, format!("'{v}' is not {allowed}"))),
        }
    }

    /// A port where `0` or an empty value means "off".
    fn optional_port(&self, key: &str, default: Option<u16>) -> Result<Option<u16>, ConfigError> {
        match self.raw(key) {
            None => Ok(default),
            Some("") | Some("0") => Ok(None),
            Some(_) => self.parse::<u16>(key, "a port number (1-65535, or 0/empty for off)"),
        }
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(key) {
            None => Ok(default),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(self.error(key, format!("'{v}' is not true or false"))),
        }
    }

    fn millis(&self, key: &str, default: Duration, min: u64) -> Result<Duration, ConfigError> {
        match self.parse::<u64>(key, "a number of milliseconds")? {
            None => Ok(default),
            Some(ms) if ms < min => {
                Err(self.error(key, format!("{ms} ms is below the minimum of {min} ms")))
            }
            Some(ms) => Ok(Duration::from_millis(ms)),
        }
    }

    /// A comma-separated list; blanks dropped.
    fn list(&self, key: &str) -> Option<Vec<String>> {
        self.raw(key).map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        let v = self.raw(key)?;
        if v.is_empty() {
            return None;
        }
        Some(self.relative(Path::new(v)))
    }

    /// Relative paths are relative to the file that names them, not to the working directory.
    fn relative(&self, path: &Path) -> PathBuf {
        match self.file.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }
}

impl Settings {
    /// Every key with the value in force, as `server.properties` would spell it. Tokens are
    /// shown as a count, never in clear.
    pub fn as_properties(&self) -> std::collections::BTreeMap<&'static str, String> {
        let ms = |d: Duration| d.as_millis().to_string();
        let opt = |v: Option<String>| v.unwrap_or_default();
        let port = |p: Option<u16>| p.map(|p| p.to_string()).unwrap_or_else(|| "0".into());
        let (from, to, mux) = match self.media_ports {
            MediaPorts::Range(from, to) => (from.to_string(), to.to_string(), String::new()),
            MediaPorts::Mux(port) => (String::new(), String::new(), port.to_string()),
        };
        std::collections::BTreeMap::from([
            ("rest_api_address", self.rest_api_address.to_string()),
            ("rest_api_port", port(self.rest_api_port)),
            ("rest_api_https_port", port(self.rest_api_https_port)),
            (
                "rest_api_https_cert",
                opt(self.https_cert.as_ref().map(|p| p.display().to_string())),
            ),
            (
                "rest_api_https_key",
                opt(self.https_key.as_ref().map(|p| p.display().to_string())),
            ),
            (
                "rest_api_tokens",
                format!("({} set)", self.rest_api_tokens.len()),
            ),
            (
                "rest_api_tokens_file",
                opt(self
                    .rest_api_tokens_file
                    .as_ref()
                    .map(|p| p.display().to_string())),
            ),
            ("media_port_from", from),
            ("media_port_to", to),
            ("media_udp_mux_port", mux),
            (
                "media_public_ip",
                opt(self.media_public_ip.map(|ip| ip.to_string())),
            ),
            (
                "ice_include_loopback",
                self.ice_include_loopback.to_string(),
            ),
            ("ice_loopback_only", self.ice_loopback_only.to_string()),
            (
                "ice_disconnected_timeout",
                ms(self.ice_disconnected_timeout),
            ),
            ("ice_failed_timeout", ms(self.ice_failed_timeout)),
            ("node_id", self.node_id.clone()),
            ("max_sdp_size", self.max_sdp_size.to_string()),
            ("http_header_timeout", ms(self.http_header_timeout)),
            ("http_request_timeout", ms(self.http_request_timeout)),
            (
                "player_wait_for_publisher",
                ms(self.player_wait_for_publisher),
            ),
            ("plugin_dir", self.plugin_dir.display().to_string()),
            ("rest_hook_timeout", ms(self.rest_hook_timeout)),
            (
                "rest_hook_max_in_flight",
                self.rest_hook_max_in_flight.to_string(),
            ),
            (
                "keep_alive_failures_to_stop",
                self.keep_alive_failures_to_stop.to_string(),
            ),
            (
                "rest_hook_breaker_failures",
                self.rest_hook_breaker_failures.to_string(),
            ),
            (
                "rest_hook_breaker_cooldown",
                ms(self.rest_hook_breaker_cooldown),
            ),
            ("plugin_memory_limit", self.plugin_memory_limit.to_string()),
            (
                "plugin_instruction_budget",
                self.plugin_instruction_budget.to_string(),
            ),
            ("plugin_call_timeout", ms(self.plugin_call_timeout)),
            ("max_sessions", self.max_sessions.to_string()),
            (
                "offer_rate_per_address",
                self.offer_rate_per_address.to_string(),
            ),
            ("shutdown_timeout", ms(self.shutdown_timeout)),
            (
                "keep_alive_streaming_sessions_enabled",
                self.keep_alive_streaming_sessions_enabled.to_string(),
            ),
            (
                "streaming_sessions_keep_alive_interval",
                ms(self.streaming_sessions_keep_alive_interval),
            ),
            (
                "streaming_sessions_keep_alive_app_keys",
                self.streaming_sessions_keep_alive_app_keys.join(","),
            ),
        ])
    }

    /// Parses the text of a `server.properties` file. `file` is used in error messages and
    /// to resolve relative paths.
    pub fn parse(file: &Path, text: &str) -> Result<Settings, ConfigError> {
        let mut values = HashMap::new();
        for line in PropertiesIter::new(text.as_bytes()) {
            let line = line.map_err(|e| ConfigError::Syntax {
                file: file.to_path_buf(),
                line: e.line_number().unwrap_or(0),
                message: e.to_string(),
            })?;
            let number = line.line_number();
            if let LineContent::KVPair(key, value) = line.consume_content() {
                if !KNOWN_KEYS.contains(&key.as_str()) {
                    return Err(ConfigError::Value {
                        file: file.to_path_buf(),
                        line: number,
                        key: key.escape_debug().to_string(),
                        message: "unknown key (see the README for the keys Sluice reads)".into(),
                    });
                }
                values.insert(key, (number, value));
            }
        }
        let r = Reader { file, values };
        let d = Settings::default();
        let media_ports =
            match r.parse::<u16>("media_udp_mux_port", "a port number (0 lets the OS choose)")? {
                Some(port) => MediaPorts::Mux(port),
                None => {
                    let (from, to) = match d.media_ports {
                        MediaPorts::Range(from, to) => (from, to),
                        MediaPorts::Mux(_) => (0, 0),
                    };
                    let from = r
                        .parse::<u16>("media_port_from", "a port number")?
                        .unwrap_or(from);
                    let to = r
                        .parse::<u16>("media_port_to", "a port number")?
                        .unwrap_or(to);
                    if to < from {
                        return Err(r.error(
                            "media_port_to",
                            format!("{to} is below media_port_from ({from})"),
                        ));
                    }
                    MediaPorts::Range(from, to)
                }
            };
        let app_keys = r
            .list("streaming_sessions_keep_alive_app_keys")
            .unwrap_or_else(|| d.streaming_sessions_keep_alive_app_keys.clone());
        let settings = Settings {
            rest_api_address: r
                .parse("rest_api_address", "an IP address")?
                .unwrap_or(d.rest_api_address),
            rest_api_port: r.optional_port("rest_api_port", d.rest_api_port)?,
            rest_api_https_port: r.optional_port("rest_api_https_port", d.rest_api_https_port)?,
            https_cert: r.path("rest_api_https_cert"),
            https_key: r.path("rest_api_https_key"),
            rest_api_tokens: r.list("rest_api_tokens").unwrap_or_default(),
            rest_api_tokens_file: r.path("rest_api_tokens_file"),
            media_ports,
            media_public_ip: r.parse("media_public_ip", "an IP address")?,
            ice_include_loopback: r.bool("ice_include_loopback", d.ice_include_loopback)?,
            ice_loopback_only: r.bool("ice_loopback_only", d.ice_loopback_only)?,
            ice_disconnected_timeout: r.millis(
                "ice_disconnected_timeout",
                d.ice_disconnected_timeout,
                500,
            )?,
            ice_failed_timeout: r.millis("ice_failed_timeout", d.ice_failed_timeout, 500)?,
            node_id: r
                .raw("node_id")
                .filter(|v| !v.is_empty())
                .map(String::from)
                .unwrap_or(d.node_id),
            max_sdp_size: r
                .parse::<usize>("max_sdp_size", "a number of bytes")?
                .unwrap_or(d.max_sdp_size),
            http_header_timeout: r.millis("http_header_timeout", d.http_header_timeout, 100)?,
            http_request_timeout: r.millis("http_request_timeout", d.http_request_timeout, 100)?,
            player_wait_for_publisher: r.millis(
                "player_wait_for_publisher",
                d.player_wait_for_publisher,
                0,
            )?,
            plugin_dir: r
                .path("plugin_dir")
                .unwrap_or_else(|| r.relative(&d.plugin_dir)),
            rest_hook_timeout: r.millis("rest_hook_timeout", d.rest_hook_timeout, 10)?,
            rest_hook_max_in_flight: match r
                .parse::<usize>("rest_hook_max_in_flight", "a count from 1")?
            {
                None => d.rest_hook_max_in_flight,
                Some(0) => return Err(r.error("rest_hook_max_in_flight", "must be at least 1")),
                Some(n) => n,
            },
            plugin_memory_limit: match r
                .parse::<usize>("plugin_memory_limit", "a number of bytes")?
            {
                None => d.plugin_memory_limit,
                Some(n) if n < 1024 * 1024 => {
                    return Err(r.error("plugin_memory_limit", "must be at least 1048576 (1 MiB)"));
                }
                Some(n) => n,
            },
            plugin_instruction_budget: match r
                .parse::<u64>("plugin_instruction_budget", "a number of instructions")?
            {
                None => d.plugin_instruction_budget,
                Some(n) if n < 10_000 => {
                    return Err(r.error("plugin_instruction_budget", "must be at least 10000"));
                }
                Some(n) => n,
            },
            plugin_call_timeout: r.millis("plugin_call_timeout", d.plugin_call_timeout, 10)?,
            max_sessions: r
                .parse::<usize>("max_sessions", "a count (0 for no limit)")?
                .unwrap_or(d.max_sessions),
            offer_rate_per_address: r
                .parse::<u32>(
                    "offer_rate_per_address",
                    "a number of offers per second (0 turns the limit off)",
                )?
                .unwrap_or(d.offer_rate_per_address),
            shutdown_timeout: r.millis("shutdown_timeout", d.shutdown_timeout, 100)?,
            keep_alive_failures_to_stop: match r
                .parse::<u32>("keep_alive_failures_to_stop", "a count from 1")?
            {
                None => d.keep_alive_failures_to_stop,
                Some(0) => return Err(r.error("keep_alive_failures_to_stop", "must be at least 1")),
                Some(n) => n,
            },
            rest_hook_breaker_failures: r
                .parse::<u32>(
                    "rest_hook_breaker_failures",
                    "a count (0 turns the breaker off)",
                )?
                .unwrap_or(d.rest_hook_breaker_failures),
            rest_hook_breaker_cooldown: r.millis(
                "rest_hook_breaker_cooldown",
                d.rest_hook_breaker_cooldown,
                100,
            )?,
            keep_alive_streaming_sessions_enabled: r.bool(
                "keep_alive_streaming_sessions_enabled",
                d.keep_alive_streaming_sessions_enabled,
            )?,
            streaming_sessions_keep_alive_interval: r.millis(
                "streaming_sessions_keep_alive_interval",
                d.streaming_sessions_keep_alive_interval,
                100,
            )?,
            streaming_sessions_keep_alive_app_keys: app_keys,
        };
        if settings.https_cert.is_some() != settings.https_key.is_some() {
            let key = if settings.https_cert.is_some() {
                "rest_api_https_key"
            } else {
                "rest_api_https_cert"
            };
            return Err(r.error(
                key,
                "rest_api_https_cert and rest_api_https_key must be set together",
            ));
        }
        if settings.ice_failed_timeout < settings.ice_disconnected_timeout {
            return Err(r.error(
                "ice_failed_timeout",
                "must not be below ice_disconnected_timeout",
            ));
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::parse(Path::new("/etc/sluice/server.properties"), text)
    }

    #[test]
    fn properties_syntax_with_comments_continuations_and_escapes() {
        let s = parse(
            "# comment\n! also a comment\nrest_api_port = 9000\nstreaming_sessions_keep_alive_app_keys=defaultApp,\\\n    liveApp\nnode_id=a\\u0062c\n",
        )
        .unwrap();
        assert_eq!(s.rest_api_port, Some(9000));
        assert_eq!(
            s.streaming_sessions_keep_alive_app_keys,
            vec!["defaultApp", "liveApp"]
        );
        assert_eq!(s.node_id, "abc");
    }

    #[test]
    fn zero_or_empty_turns_a_listener_off() {
        let s = parse("rest_api_port=0\nrest_api_https_port=\n").unwrap();
        assert_eq!(s.rest_api_port, None);
        assert_eq!(s.rest_api_https_port, None);
    }

    #[test]
    fn errors_name_line_key_and_what_is_allowed() {
        let err = parse("\n\nrest_api_https_port=eighty\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "/etc/sluice/server.properties:3: rest_api_https_port: 'eighty' is not a port number (1-65535, or 0/empty for off)"
        );
        let err = parse("rest_api_prot=1\n").unwrap_err().to_string();
        assert!(err.contains(":1: rest_api_prot: unknown key"), "{err}");
        let err = parse("media_port_from=5000\nmedia_port_to=4000\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains(":2: media_port_to"), "{err}");
        assert!(parse("rest_api_https_cert=a.pem\n").is_err());
    }

    #[test]
    fn media_ports_mux_or_range() {
        assert_eq!(
            parse("media_udp_mux_port=0").unwrap().media_ports,
            MediaPorts::Mux(0)
        );
        assert_eq!(
            parse("media_port_from=40000\nmedia_port_to=40100")
                .unwrap()
                .media_ports,
            MediaPorts::Range(40000, 40100)
        );
    }

    #[test]
    fn relative_tls_paths_are_relative_to_the_file() {
        let s =
            parse("rest_api_https_cert=tls/cert.pem\nrest_api_https_key=/abs/key.pem\n").unwrap();
        assert_eq!(
            s.https_cert.unwrap(),
            PathBuf::from("/etc/sluice/tls/cert.pem")
        );
        assert_eq!(s.https_key.unwrap(), PathBuf::from("/abs/key.pem"));
    }
}
