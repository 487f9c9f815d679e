//! `ice_servers`: the STUN/TURN servers a WHIP/WHEP `201` offers its client as
//! `Link: <…>; rel="ice-server"` headers (RFC 9725 §4.6). Written as URLs, TURN credentials
//! in the URL's user part (`turn://user:secret@turn.example.net:3478?transport=udp`, as
//! GStreamer's `turn-server` takes them); the link carries them as `username` and
//! `credential`. The server itself never contacts them.

use std::fmt;

/// One STUN or TURN server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceServer {
    /// The URI as RFC 7064/7065 write it (`turn:host:port?transport=udp`), no credentials.
    pub uri: String,
    pub username: Option<String>,
    pub credential: Option<String>,
}

impl IceServer {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let url = url::Url::parse(raw).map_err(|e| format!("'{raw}' is not a URL: {e}"))?;
        let scheme = url.scheme();
        let turn = match scheme {
            "stun" | "stuns" => false,
            "turn" | "turns" => true,
            other => {
                return Err(format!(
                    "'{raw}': an ICE server is stun:, stuns:, turn: or turns:, not {other}:"
                ));
            }
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        // `turn://user:secret@host:port?…` has an authority; `stun:host:port` is opaque.
        let (uri, username, credential) = match url.host_str() {
            Some(host) => {
                let mut uri = format!("{scheme}:{host}");
                if let Some(port) = url.port() {
                    uri.push_str(&format!(":{port}"));
                }
                if let Some(query) = url.query() {
                    uri.push_str(&format!("?{query}"));
                }
                let username = (!url.username().is_empty()).then(|| decode(url.username()));
                (uri, username, url.password().map(decode))
            }
            None if url.path().is_empty() => return Err(format!("'{raw}' names no host")),
            None => (raw.to_string(), None, None),
        };
        match (turn, &username, &credential) {
            (true, Some(_), Some(_)) | (false, None, None) => {}
            (true, _, _) => {
                return Err(format!(
                    "'{raw}': a TURN server needs credentials, written {scheme}://user:secret@host:port"
                ));
            }
            (false, _, _) => return Err(format!("'{raw}': a STUN server takes no credentials")),
        }
        Ok(IceServer {
            uri,
            username,
            credential,
        })
    }

    /// The `Link` header value for this server.
    pub fn link(&self) -> String {
        let mut link = format!("<{}>; rel=\"ice-server\"", self.uri);
        if let (Some(username), Some(credential)) = (&self.username, &self.credential) {
            link.push_str(&format!(
                "; username={}; credential={}; credential-type=\"password\"",
                quoted(username),
                quoted(credential)
            ));
        }
        link
    }
}

/// Shown without its credentials (`/rest-api/config`, logs).
impl fmt::Display for IceServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.username {
            Some(_) => write!(f, "{} (with credentials)", self.uri),
            None => f.write_str(&self.uri),
        }
    }
}

/// An RFC 9110 quoted-string.
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_and_turn_become_links() {
        let stun = IceServer::parse("stun:stun.example.net:3478").unwrap();
        assert_eq!(
            stun.link(),
            "<stun:stun.example.net:3478>; rel=\"ice-server\""
        );
        let turn = IceServer::parse("turn://al%40ice:se\"cret@turn.example.net:3478?transport=udp")
            .unwrap();
        assert_eq!(turn.uri, "turn:turn.example.net:3478?transport=udp");
        assert_eq!(
            turn.link(),
            "<turn:turn.example.net:3478?transport=udp>; rel=\"ice-server\"; \
             username=\"al@ice\"; credential=\"se\\\"cret\"; credential-type=\"password\""
        );
        assert_eq!(
            turn.to_string(),
            "turn:turn.example.net:3478?transport=udp (with credentials)"
        );
    }

    #[test]
    fn bad_servers_are_refused_with_a_reason() {
        for (raw, expected) in [
            ("turn:turn.example.net:3478", "needs credentials"),
            ("stun://u:p@stun.example.net", "takes no credentials"),
            ("http://example.net", "not http:"),
            ("not a url", "not a URL"),
        ] {
            let err = IceServer::parse(raw).unwrap_err();
            assert!(err.contains(expected), "{raw}: {err}");
        }
    }
}
