//! SDP fragments (`application/trickle-ice-sdpfrag`, RFC 8840) as WHIP/WHEP clients send
//! them in a `PATCH` (RFC 9725 §4.3): reading one, building the offer an ICE restart
//! applies, and writing the server's fragment back. Pure text work, testable without sockets.

use std::io::Cursor;

use webrtc::ice::candidate::Candidate;
use webrtc::ice::candidate::candidate_base::unmarshal_candidate;
use webrtc::sdp::SessionDescription;

/// One candidate of a fragment, with the media section it was given in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragCandidate {
    /// The attribute's value without `candidate:`.
    pub value: String,
    pub mid: Option<String>,
    pub mline_index: u16,
}

/// What a client's fragment says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SdpFrag {
    pub ufrag: Option<String>,
    pub pwd: Option<String>,
    /// Candidates the server can use (UDP); others are dropped as RFC 9725 asks.
    pub candidates: Vec<FragCandidate>,
    /// Candidates dropped because the server does not use their transport.
    pub dropped: usize,
    pub end_of_candidates: bool,
}

/// Why a fragment was refused, in one line for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FragError(pub String);

fn bad(message: impl Into<String>) -> FragError {
    FragError(message.into())
}

/// Reads a fragment. Unknown attributes are ignored; a line that is not SDP, a candidate
/// that cannot be read, or two different credentials are refused.
pub fn parse(text: &str) -> Result<SdpFrag, FragError> {
    let mut frag = SdpFrag::default();
    let mut section: Option<u16> = None;
    let mut mid: Option<String> = None;
    let mut sections = 0u16;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let number = number + 1;
        let Some((kind, value)) = line.split_once('=') else {
            return Err(bad(format!("line {number} is not an SDP line: '{line}'")));
        };
        if kind.len() != 1 || !kind.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(bad(format!("line {number} is not an SDP line: '{line}'")));
        }
        match kind {
            "m" => {
                section = Some(sections);
                sections = sections.saturating_add(1);
                mid = None;
            }
            "a" => {
                let (name, attribute) = value.split_once(':').unwrap_or((value, ""));
                match name {
                    "mid" => mid = Some(attribute.to_string()),
                    "ice-ufrag" => set_once(&mut frag.ufrag, attribute, "ice-ufrag")?,
                    "ice-pwd" => set_once(&mut frag.pwd, attribute, "ice-pwd")?,
                    "end-of-candidates" => frag.end_of_candidates = true,
                    "candidate" => {
                        let candidate = unmarshal_candidate(attribute).map_err(|e| {
                            bad(format!("line {number}: unreadable candidate ({e})"))
                        })?;
                        if candidate.network_type().is_tcp() {
                            frag.dropped += 1;
                            continue;
                        }
                        frag.candidates.push(FragCandidate {
                            value: attribute.to_string(),
                            mid: mid.clone(),
                            mline_index: section.unwrap_or(0),
                        });
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if frag.ufrag.is_some() != frag.pwd.is_some() {
        return Err(bad(
            "a fragment with ICE credentials must carry both a=ice-ufrag and a=ice-pwd",
        ));
    }
    Ok(frag)
}

fn set_once(slot: &mut Option<String>, value: &str, name: &str) -> Result<(), FragError> {
    if value.is_empty() || value.contains(char::is_whitespace) {
        return Err(bad(format!("a={name} has no usable value")));
    }
    match slot {
        Some(existing) if existing != value => Err(bad(format!(
            "two different a={name} values in one fragment"
        ))),
        _ => {
            *slot = Some(value.to_string());
            Ok(())
        }
    }
}

/// The ICE credentials an SDP carries (the first found, session or media level).
pub fn credentials(sdp: &str) -> Option<(String, String)> {
    let find = |name: &str| {
        sdp.lines()
            .find_map(|l| l.trim_end_matches('\r').strip_prefix(name))
            .map(str::to_string)
    };
    Some((find("a=ice-ufrag:")?, find("a=ice-pwd:")?))
}

/// The offer an ICE restart applies: the client's current offer with its credentials and
/// candidates replaced by the fragment's (RFC 9725: nothing but ICE changes). The new
/// credentials go at the end of every media section, where SDP allows attributes.
pub fn restart_offer(current: &str, frag: &SdpFrag) -> Result<String, FragError> {
    let (Some(ufrag), Some(pwd)) = (&frag.ufrag, &frag.pwd) else {
        return Err(bad("an ICE restart needs a=ice-ufrag and a=ice-pwd"));
    };
    let mut out = String::with_capacity(current.len() + 512);
    let mut section: Option<u16> = None;
    let close_section = |out: &mut String, section: Option<u16>| {
        if let Some(index) = section {
            out.push_str(&format!("a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n"));
            for c in frag.candidates.iter().filter(|c| c.mline_index == index) {
                out.push_str(&format!("a=candidate:{}\r\n", c.value));
            }
        }
    };
    let mut sections = 0u16;
    for line in current.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        if line.starts_with("m=") {
            close_section(&mut out, section);
            section = Some(sections);
            sections = sections.saturating_add(1);
        }
        let replaced = ["a=ice-ufrag:", "a=ice-pwd:", "a=candidate:"]
            .iter()
            .any(|p| line.starts_with(p))
            || line == "a=end-of-candidates";
        if !replaced {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    close_section(&mut out, section);
    Ok(out)
}

/// The server's fragment after an ICE restart, read from its new answer: the ICE options,
/// the bundle group, the first media section's line and mid, the new credentials and every
/// candidate, then `a=end-of-candidates` (the server gathers before it answers).
pub fn answer_fragment(answer: &str) -> Result<String, FragError> {
    let parsed = SessionDescription::unmarshal(&mut Cursor::new(answer.as_bytes()))
        .map_err(|e| bad(format!("the new answer is not SDP: {e}")))?;
    let (ufrag, pwd) =
        credentials(answer).ok_or_else(|| bad("the new answer has no ICE credentials"))?;
    let mut out = String::new();
    for a in &parsed.attributes {
        if matches!(a.key.as_str(), "ice-lite" | "ice-options" | "group") {
            out.push_str(&format!("a={a}\r\n"));
        }
    }
    let first = parsed
        .media_descriptions
        .first()
        .ok_or_else(|| bad("the new answer has no media section"))?;
    out.push_str(&format!("m={}\r\n", first.media_name));
    if let Some(mid) = first.attribute("mid").flatten() {
        out.push_str(&format!("a=mid:{mid}\r\n"));
    }
    out.push_str(&format!("a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n"));
    for a in first.attributes.iter().filter(|a| a.key == "candidate") {
        out.push_str(&format!("a={a}\r\n"));
    }
    out.push_str("a=end-of-candidates\r\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRICKLE: &str = "a=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
        a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n\
        a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw network-id 1\r\n\
        a=candidate:473322822 1 tcp 1518280447 192.0.2.1 9 typ host tcptype active generation 0\r\n\
        a=end-of-candidates\r\n";

    #[test]
    fn a_trickle_fragment_is_read_and_tcp_dropped() {
        let frag = parse(TRICKLE).unwrap();
        assert_eq!(frag.ufrag.as_deref(), Some("EsAw"));
        assert_eq!(frag.pwd.as_deref(), Some("P2uYro0UCOQ4zxjKXaWCBui1"));
        assert_eq!(frag.candidates.len(), 1);
        assert_eq!(frag.candidates[0].mid.as_deref(), Some("0"));
        assert_eq!(frag.candidates[0].mline_index, 0);
        assert!(frag.candidates[0].value.starts_with("1387637174 1 udp"));
        assert_eq!(frag.dropped, 1);
        assert!(frag.end_of_candidates);
    }

    #[test]
    fn malformed_fragments_are_refused_with_a_reason() {
        for (text, expected) in [
            ("hello\r\n", "not an SDP line"),
            ("a=candidate:1 1 udp\r\n", "unreadable candidate"),
            ("a=ice-ufrag:abcd\r\n", "both a=ice-ufrag and a=ice-pwd"),
            (
                "a=ice-ufrag:abcd\r\na=ice-pwd:x\r\nm=audio 9 X 0\r\na=ice-ufrag:efgh\r\n",
                "two different",
            ),
            ("Ab=c\r\n", "not an SDP line"),
        ] {
            let err = parse(text).unwrap_err().0;
            assert!(err.contains(expected), "{text:?}: {err}");
        }
        assert_eq!(parse("").unwrap(), SdpFrag::default());
    }

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=ice-ufrag:old1\r\n\
        a=ice-pwd:oldpasswordoldpassword\r\na=candidate:1 1 udp 1 10.0.0.1 1000 typ host\r\n\
        a=end-of-candidates\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=ice-ufrag:old1\r\n\
        a=ice-pwd:oldpasswordoldpassword\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\n";

    #[test]
    fn a_restart_offer_changes_only_ice() {
        let frag = parse(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=ice-ufrag:new2\r\n\
             a=ice-pwd:newpasswordnewpassword\r\n\
             a=candidate:2 1 udp 2 127.0.0.1 2000 typ host\r\n",
        )
        .unwrap();
        let offer = restart_offer(OFFER, &frag).unwrap();
        assert!(
            !offer.contains("old1") && !offer.contains("10.0.0.1"),
            "{offer}"
        );
        assert_eq!(offer.matches("a=ice-ufrag:new2").count(), 2, "{offer}");
        assert_eq!(offer.matches("a=candidate:").count(), 1, "{offer}");
        assert!(offer.contains("a=rtpmap:96 VP8/90000"));
        // Still SDP that the engine's parser reads, sections in order.
        let parsed = SessionDescription::unmarshal(&mut Cursor::new(offer.as_bytes())).unwrap();
        assert_eq!(parsed.media_descriptions.len(), 2);
        assert_eq!(
            credentials(&offer),
            Some(("new2".into(), "newpasswordnewpassword".into()))
        );
        let no_credentials = parse("a=candidate:2 1 udp 2 127.0.0.1 2000 typ host\r\n").unwrap();
        assert!(restart_offer(OFFER, &no_credentials).is_err());
    }

    #[test]
    fn the_answer_fragment_carries_the_new_ice_session() {
        let answer = OFFER.replace("a=sendonly", "a=recvonly");
        let frag = answer_fragment(&answer).unwrap();
        assert!(
            frag.starts_with(
                "a=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
            ),
            "{frag}"
        );
        assert!(frag.contains("a=ice-ufrag:old1\r\na=ice-pwd:oldpasswordoldpassword\r\n"));
        assert!(frag.contains("a=candidate:1 1 udp 1 10.0.0.1 1000 typ host\r\n"));
        assert!(frag.ends_with("a=end-of-candidates\r\n"));
        // What the server sends back, a client reads as a fragment.
        let back = parse(&frag).unwrap();
        assert_eq!(back.ufrag.as_deref(), Some("old1"));
        assert_eq!(back.candidates.len(), 1);
    }
}
