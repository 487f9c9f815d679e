//! `server.properties`: Java properties syntax, parsed by the `java-properties` crate, into
//! one typed [`Settings`] with defaults. Every key is declared once, in the table below: its
//! type, default, when a change applies, and one line of doc. Parsing, `GET /rest-api/config`,
//! restart-key handling, `sluice check`, `sluice settings` and the README's table all come
//! from that table.

mod ice_servers;
mod kinds;
mod table;
mod wcs;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use java_properties::{LineContent, PropertiesIter};

use super::ConfigError;
pub use ice_servers::IceServer;
use kinds::{
    Address, Count, FilePath, Flag, IceServers, Kind, List, ListenerPort, Millis, Optional, Port,
    Text,
};
pub use table::{Apply, Declaration, markdown};
use table::{declare_settings, key_name};

/// Where media flows: one UDP port shared by every session, or a port per session from a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaPorts {
    /// One socket for all sessions (`media_udp_mux_port`); `0` lets the OS choose it.
    Mux(u16),
    /// A socket per session from `media_port_from..=media_port_to`; `0..=0` lets the OS choose.
    Range(u16, u16),
}

declare_settings! {
    rest_api_address: IpAddr = IpAddr::from([0, 0, 0, 0]), Address, Restart,
        "address the HTTP and HTTPS listeners bind";
    rest_api_port: Option<u16> = Some(8081), ListenerPort, Restart,
        "HTTP port; `0` or empty turns it off";
    rest_api_https_port: Option<u16> = Some(8444), ListenerPort, Restart,
        "HTTPS port; `0` or empty turns it off";
    rest_api_https_cert: Option<PathBuf> = None, Optional(FilePath), Restart,
        "PEM certificate (relative to the file), set together with the key; a self-signed one for `localhost` when absent. The file's content is reloaded when it changes";
    rest_api_https_key: Option<PathBuf> = None, Optional(FilePath), Restart,
        "PEM private key of that certificate; its content is reloaded when it changes";
    rest_api_tokens: Vec<String> = Vec::new(), List { secret: true }, Hot,
        "comma list of bearer tokens for `/rest-api/`; with none (and no file), `/rest-api/` answers loopback callers only";
    rest_api_tokens_file: Option<PathBuf> = None, Optional(FilePath), Hot,
        "more tokens, one per line (`#` comments), re-read on change";
    ws_port as "ws.port": Option<u16> = Some(8080), ListenerPort, Restart,
        "WCS WebSocket signalling port (plain `ws`), for pages built on the Flashphoner Web SDK; `0` turns it off";
    wss_port as "wss.port": Option<u16> = Some(8443), ListenerPort, Restart,
        "WCS WebSocket signalling port over TLS (`wss`), with the HTTPS certificate; `0` turns it off";
    ws_ping_interval as "keep_alive.server_interval": Duration = Duration::from_millis(5000), Millis { min: 100 }, Hot,
        "the server pings every WebSocket signalling connection this often";
    ws_ping_probes as "keep_alive.probes": u32 = 10, Count { min: 1, what: "a count from 1" }, Hot,
        "a WebSocket connection that leaves this many pings in a row unanswered is closed, and its streams end";
    cors_allowed_origins: Vec<String> = vec!["*".into()], List { secret: false }, Hot,
        "origins (`https://site.example`) whose pages may call WHIP, WHEP and the session resources from a browser (CORS); `*` allows any";
    rest_api_cors_allowed_origins: Vec<String> = Vec::new(), List { secret: false }, Hot,
        "origins whose pages may call `/rest-api/` from a browser; empty keeps the REST API same-origin";
    ice_servers: Vec<IceServer> = Vec::new(), IceServers, Hot,
        "STUN/TURN servers offered to WHIP/WHEP clients as `Link: rel=\"ice-server\"` (RFC 9725 §4.6), a comma list: `stun:host:port`, `turn://user:secret@host:port?transport=udp`; the server itself never contacts them";
    media_port_from: u16 = 31001, Port, Restart,
        "first UDP port for media with `media_udp_mux_port` empty, one socket per session; `0` with `media_port_to=0` lets the OS choose";
    media_port_to: u16 = 32000, Port, Restart,
        "last UDP port for media with `media_udp_mux_port` empty";
    media_udp_mux_port: Option<u16> = Some(31001), Optional(Port), Restart,
        "all media on this one UDP port (`0` lets the OS choose); empty for a port per session from `media_port_from..=media_port_to` instead. The default is that range's first port, so a firewall open for the range lets it through";
    media_udp_batch: bool = true, Flag, Restart,
        "with `media_udp_mux_port`, send the one socket's datagrams in batches instead of one system call each: the packets to one player that follow one another as one UDP GSO message, the rest by `sendmmsg`, up to 64 a call (0.88x the relay's CPU per packet at 200 players, BENCHMARKS.md)";
    media_rtc_players: bool = true, Flag, Restart,
        "players (WHEP and WCS) run on the sans-I/O `rtc` 0.21 engine (ICE-lite), fed by a shard task per core per track rather than a task per player; `false` (or no `media_udp_mux_port`, or `media_udp_batch=false`: it needs both) runs them on webrtc-rs 0.17. Their session resources take `PATCH` (trickle and ICE restart) either way. At 200 players, on the direct connections of `media_direct_players`, about a quarter of the CPU per forwarded packet of a plain 0.17 relay and a seventh of its memory per player (BENCHMARKS.md)";
    media_direct_players: bool = true, Flag, Restart,
        "with `media_rtc_players`, each player's ICE-lite, DTLS and SRTP are driven by Sluice itself over the `rtc` crate's parts once its peer connection has negotiated the answer: each forwarded packet is a header rewrite and one SRTP encryption (about 0.55x the CPU per packet of players on the peer connection and a fifth of their memory, BENCHMARKS.md); `false`, or an offer with a data channel or `a=setup:passive`, keeps the peer connection for the player";
    media_rtc_publishers: bool = true, Flag, Restart,
        "publishers (WHIP and WCS) run on the sans-I/O `rtc` 0.21 engine (ICE-lite, on the mux socket): NACKs for lost packets, receiver reports and transport-wide feedback to the publisher, key frame requests from the players; `false` (or no `media_udp_mux_port`, or `media_udp_batch=false`) runs them on webrtc-rs 0.17. An edge's pull of a stream from its origin runs on the same engine as publishers (on `rtc`, from a UDP socket of the pull's own)";
    media_public_ip: Option<IpAddr> = None, Optional(Address), Restart,
        "an address announced as an extra (server-reflexive) ICE candidate, for clients beyond NAT";
    ice_include_loopback: bool = true, Flag, Restart,
        "offer `127.0.0.1` candidates, for clients on the same host";
    ice_loopback_only: bool = false, Flag, Restart,
        "gather on loopback only (single-host set-ups, tests)";
    ice_disconnected_timeout: Duration = Duration::from_millis(4000), Millis { min: 500 }, Restart,
        "how long a silent peer is left disconnected";
    ice_failed_timeout: Duration = Duration::from_millis(8000), Millis { min: 500 }, Restart,
        "how long a silent peer lives before its session is stopped; not below `ice_disconnected_timeout`";
    node_id: String = "sluice".into(), Text, Restart,
        "`nodeId` in stream records; each node of a cluster needs its own";
    cluster_redis_url: Option<String> = None, Optional(Text), Restart,
        "`redis://host:port` of the cluster's Redis; empty runs a single node. Nodes sharing it answer find and terminate for the whole cluster";
    cluster_node_ttl: Duration = Duration::from_millis(5000), Millis { min: 300 }, Restart,
        "a node's entry in the cluster expires this long after its last refresh (it refreshes every third of it): a dead node leaves the view within it";
    cluster_answer_timeout: Duration = Duration::from_millis(1000), Millis { min: 50 }, Restart,
        "how long a cluster request waits for the nodes' answers (and for Redis); those that did not answer are named";
    max_sdp_size: usize = 64 * 1024, Count { min: 1, what: "a number of bytes" }, Restart,
        "bytes; a larger WHIP/WHEP body gets `413`";
    http_header_timeout: Duration = Duration::from_millis(10_000), Millis { min: 100 }, Restart,
        "a client must send its request headers within this time, or its connection is closed (slow-loris); request heads over 64 KiB get `431`";
    http_request_timeout: Duration = Duration::from_millis(30_000), Millis { min: 100 }, Hot,
        "a request body must arrive within this time (`408` otherwise); read before any handler runs, so none is cut off half-way";
    player_wait_for_publisher: Duration = Duration::from_millis(5000), Millis { min: 0 }, Hot,
        "how long a WHEP request waits for a publisher's first media";
    plugin_dir: PathBuf = PathBuf::from("plugins"), FilePath, Restart,
        "where Lua plugins live, relative to the config directory; the plugins in it are re-read when they change";
    rest_hook_timeout: Duration = Duration::from_millis(3000), Millis { min: 10 }, Hot,
        "how long one REST hook call may take";
    rest_hook_max_in_flight: usize = 64, Count { min: 1, what: "a count from 1" }, Hot,
        "REST hook calls in flight per app at most";
    keep_alive_failures_to_stop: u32 = 3, Count { min: 1, what: "a count from 1" }, Hot,
        "with `restOnError = FAIL`, failed verdicts in a row before a stop";
    rest_hook_breaker_failures: u32 = 5, Count { min: 0, what: "a count (0 turns the breaker off)" }, Hot,
        "failed calls in a row to an app's web server before its circuit opens; `0` turns the breaker off";
    rest_hook_breaker_cooldown: Duration = Duration::from_millis(5000), Millis { min: 100 }, Hot,
        "how long an open circuit waits before one probe call";
    plugin_memory_limit: usize = 16 * 1024 * 1024, Count { min: 1024 * 1024, what: "a number of bytes" }, NextLoad,
        "bytes per plugin state, at least 1 MiB";
    plugin_instruction_budget: u64 = 1_000_000, Count { min: 10_000, what: "a number of instructions" }, NextLoad,
        "Lua instructions per call, all its coroutines together";
    plugin_call_timeout: Duration = Duration::from_millis(1000), Millis { min: 10 }, NextLoad,
        "wall-clock time one plugin call may take; a worker stuck past it is replaced";
    max_sessions: usize = 10_000, Count { min: 0, what: "a count (0 for no limit)" }, Hot,
        "live streams (publishers and players) at most; one more offer gets `503` with `Retry-After`; `0` for no limit";
    offer_rate_per_address: u32 = 50, Count { min: 0, what: "a number of offers per second (0 turns the limit off)" }, Hot,
        "WHIP/WHEP offers per second from one client address (bursts of twice that); more get `429` with `Retry-After`; `0` turns it off";
    shutdown_timeout: Duration = Duration::from_millis(10_000), Millis { min: 100 }, Hot,
        "on SIGTERM/SIGINT: how long ending every stream and delivering the last status events may take";
    keep_alive_streaming_sessions_enabled: bool = false, Flag, Hot,
        "keep-alive verdicts on or off";
    streaming_sessions_keep_alive_interval: Duration = Duration::from_millis(10_000), Millis { min: 100 }, Hot,
        "each stream gets a verdict this often";
    streaming_sessions_keep_alive_app_keys: Vec<String> = vec!["defaultApp".into()], List { secret: false }, Hot,
        "comma list of the apps whose streams get verdicts";
}

/// The values of one file, by key, with the line each was on.
struct Reader<'a> {
    file: &'a Path,
    base: PathBuf,
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

    fn read<K: Kind>(
        &self,
        key: &str,
        kind: &K,
        default: K::Value,
    ) -> Result<K::Value, ConfigError> {
        let Some((_, raw)) = self.values.get(key) else {
            return Ok(default);
        };
        match kind.parse(raw.trim(), &self.base) {
            Ok(value) => Ok(value.unwrap_or(default)),
            Err(message) => Err(self.error(key, message)),
        }
    }
}

impl Settings {
    /// Where media flows, from `media_udp_mux_port` or the port range.
    pub fn media_ports(&self) -> MediaPorts {
        match self.media_udp_mux_port {
            Some(port) => MediaPorts::Mux(port),
            None => MediaPorts::Range(self.media_port_from, self.media_port_to),
        }
    }

    /// The keys whose changes wait for a restart.
    pub fn restart_keys() -> Vec<&'static str> {
        Settings::declarations()
            .into_iter()
            .filter(|d| d.apply == Apply::Restart)
            .map(|d| d.key)
            .collect()
    }

    /// Parses the text of a `server.properties` file. `file` is used in error messages and
    /// to resolve relative paths. An unknown key is an error: a typo must not silently leave
    /// a default in force.
    pub fn parse(file: &Path, text: &str) -> Result<Settings, ConfigError> {
        Self::parse_with_ignored(file, text).map(|(settings, _)| settings)
    }

    /// Parses as [`parse`](Self::parse) does, and returns the keys of the model's documented
    /// settings that Sluice does not implement (a WCS `flashphoner.properties` as it is):
    /// they are ignored, not refused.
    pub fn parse_with_ignored(
        file: &Path,
        text: &str,
    ) -> Result<(Settings, Vec<String>), ConfigError> {
        let mut values = HashMap::new();
        let mut ignored = Vec::new();
        for line in PropertiesIter::new(text.as_bytes()) {
            let line = line.map_err(|e| ConfigError::Syntax {
                file: file.to_path_buf(),
                line: e.line_number().unwrap_or(0),
                message: e.to_string(),
            })?;
            let number = line.line_number();
            if let LineContent::KVPair(key, value) = line.consume_content() {
                if !Settings::is_known(&key) {
                    if wcs::is_documented(&key) {
                        ignored.push(key);
                        continue;
                    }
                    let declared = Settings::declarations();
                    let suggestion = wcs::nearest(&key, declared.iter().map(|d| d.key))
                        .map(|k| format!("; did you mean '{k}'?"))
                        .unwrap_or_default();
                    return Err(ConfigError::Value {
                        file: file.to_path_buf(),
                        line: number,
                        key: key.escape_debug().to_string(),
                        message: format!(
                            "unknown key{suggestion} (see the README for the keys Sluice reads)"
                        ),
                    });
                }
                values.insert(key, (number, value));
            }
        }
        let reader = Reader {
            file,
            base: file.parent().map(Path::to_path_buf).unwrap_or_default(),
            values,
        };
        let settings = Settings::read_declared(&reader)?;
        settings.validate(&reader)?;
        ignored.sort();
        ignored.dedup();
        Ok((settings, ignored))
    }

    /// The rules between keys.
    fn validate(&self, reader: &Reader) -> Result<(), ConfigError> {
        // Refused with the mux socket on too: the range is what `media_udp_mux_port=` falls
        // back to, and a file that names an impossible one is wrong either way.
        if self.media_port_to < self.media_port_from {
            return Err(reader.error(
                "media_port_to",
                format!(
                    "{} is below media_port_from ({})",
                    self.media_port_to, self.media_port_from
                ),
            ));
        }
        if self.rest_api_https_cert.is_some() != self.rest_api_https_key.is_some() {
            let key = if self.rest_api_https_cert.is_some() {
                "rest_api_https_key"
            } else {
                "rest_api_https_cert"
            };
            return Err(reader.error(
                key,
                "rest_api_https_cert and rest_api_https_key must be set together",
            ));
        }
        if self.ice_failed_timeout < self.ice_disconnected_timeout {
            return Err(reader.error(
                "ice_failed_timeout",
                "must not be below ice_disconnected_timeout",
            ));
        }
        Ok(())
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
        assert!(
            err.contains(":1: rest_api_prot: unknown key; did you mean 'rest_api_port'?"),
            "{err}"
        );
        // A WCS flashphoner.properties as it is: what Sluice implements takes effect, the
        // model's other documented keys are ignored and listed.
        let (settings, ignored) = Settings::parse_with_ignored(
            Path::new("flashphoner.properties"),
            "ip=10.0.0.1\nws.port=9080\ncodecs=opus,vp8\nice_tcp_transport=true\n",
        )
        .unwrap();
        assert_eq!(settings.ws_port, Some(9080));
        assert_eq!(ignored, ["codecs", "ice_tcp_transport", "ip"]);
        let err = parse("media_port_from=5000\nmedia_port_to=4000\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains(":2: media_port_to"), "{err}");
        assert!(parse("rest_api_https_cert=a.pem\n").is_err());
    }

    #[test]
    fn media_ports_mux_or_range() {
        assert_eq!(parse("").unwrap().media_ports(), MediaPorts::Mux(31001));
        assert_eq!(
            parse("media_udp_mux_port=0").unwrap().media_ports(),
            MediaPorts::Mux(0)
        );
        assert_eq!(
            parse("media_udp_mux_port=\nmedia_port_from=40000\nmedia_port_to=40100")
                .unwrap()
                .media_ports(),
            MediaPorts::Range(40000, 40100)
        );
    }

    #[test]
    fn relative_tls_paths_are_relative_to_the_file() {
        let s =
            parse("rest_api_https_cert=tls/cert.pem\nrest_api_https_key=/abs/key.pem\n").unwrap();
        assert_eq!(
            s.rest_api_https_cert.unwrap(),
            PathBuf::from("/etc/sluice/tls/cert.pem")
        );
        assert_eq!(s.rest_api_https_key.unwrap(), PathBuf::from("/abs/key.pem"));
    }

    #[test]
    fn every_default_reads_back_as_itself() {
        for d in Settings::declarations() {
            let text = format!("{}={}\n", d.key, d.default.replace('\\', "\\\\"));
            // A file with no directory: relative paths stay as written.
            let parsed = Settings::parse(Path::new("server.properties"), &text)
                .unwrap_or_else(|e| panic!("{}: {e}", d.key));
            assert_eq!(
                parsed.as_properties()[d.key],
                Settings::default().as_properties()[d.key],
                "{}",
                d.key
            );
        }
    }

    #[test]
    fn the_view_and_the_declarations_name_the_same_keys() {
        let declared: Vec<_> = Settings::declarations().iter().map(|d| d.key).collect();
        let mut sorted = declared.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), declared.len(), "a key is declared twice");
        let shown: Vec<_> = Settings::default().as_properties().into_keys().collect();
        assert_eq!(shown, sorted);
        assert!(declared.iter().all(|k| Settings::is_known(k)));
        assert!(!Settings::is_known("rest_api_prot"));
    }

    #[test]
    fn restart_keys_keep_their_running_values() {
        let running = Settings::default();
        let mut edited = parse(
            "http_header_timeout=500\nplugin_dir=/elsewhere\nrest_api_https_cert=c.pem\nrest_api_https_key=k.pem\nmax_sessions=3\n",
        )
        .unwrap();
        edited.keep_restart_values(&running);
        assert_eq!(edited.http_header_timeout, running.http_header_timeout);
        assert_eq!(edited.plugin_dir, running.plugin_dir);
        assert_eq!(edited.rest_api_https_cert, None);
        assert_eq!(edited.max_sessions, 3, "a hot key takes its new value");
        for key in ["http_header_timeout", "plugin_dir", "rest_api_https_cert"] {
            assert!(Settings::restart_keys().contains(&key), "{key}");
        }
    }

    /// The README's table is generated from the declarations: a key added without its doc
    /// row, or a row left for a key that is gone, fails here.
    #[test]
    fn the_readme_table_is_the_declared_table() {
        let readme = include_str!("../../../README.md");
        let begin = "<!-- settings:begin (generated by `sluice settings`) -->\n";
        let end = "<!-- settings:end -->";
        let start = readme.find(begin).expect("README has the settings markers") + begin.len();
        let stop = readme[start..]
            .find(end)
            .expect("README has the end marker")
            + start;
        assert_eq!(
            readme[start..stop],
            markdown(&Settings::declarations()),
            "the README's settings table is out of step: paste the output of `cargo run -- settings`"
        );
    }
}
