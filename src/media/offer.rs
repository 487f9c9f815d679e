//! Reading a WHIP/WHEP SDP offer before any peer connection exists: is it SDP, what media it
//! sends and receives. Pure functions, testable without sockets.

use std::io::Cursor;

use webrtc::sdp::SessionDescription;

use crate::registry::MediaKind;

use super::MediaError;

/// What an offer asks for, by media section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferSummary {
    /// Kinds of the sections the client sends (`sendonly` / `sendrecv`), in order.
    pub sending: Vec<MediaKind>,
    /// Kinds of the sections the client receives (`recvonly` / `sendrecv`), in order.
    pub receiving: Vec<MediaKind>,
    /// The offer has an `application` (data channel) section.
    pub has_data_channel: bool,
}

/// Parses an offer. `Err` explains in one line what is wrong with it.
pub fn inspect(sdp: &str) -> Result<OfferSummary, MediaError> {
    if !sdp.trim_start().starts_with("v=") {
        return Err(MediaError::BadOffer(
            "the body is not SDP (it must start with v=0)".into(),
        ));
    }
    let parsed = SessionDescription::unmarshal(&mut Cursor::new(sdp.as_bytes()))
        .map_err(|e| MediaError::BadOffer(format!("unparsable SDP: {e}")))?;
    let mut summary = OfferSummary {
        sending: Vec::new(),
        receiving: Vec::new(),
        has_data_channel: false,
    };
    for media in &parsed.media_descriptions {
        let kind = match media.media_name.media.as_str() {
            "audio" => MediaKind::Audio,
            "video" => MediaKind::Video,
            "application" => {
                summary.has_data_channel = true;
                continue;
            }
            _ => continue,
        };
        if is_rejected(media) {
            continue;
        }
        let has = |name: &str| media.attributes.iter().any(|a| a.key == name);
        let (sends, receives) = if has("sendonly") {
            (true, false)
        } else if has("recvonly") {
            (false, true)
        } else if has("inactive") {
            (false, false)
        } else {
            (true, true)
        };
        if sends {
            summary.sending.push(kind);
        }
        if receives {
            summary.receiving.push(kind);
        }
    }
    Ok(summary)
}

/// A section with port 0 is rejected and carries nothing — unless it is `a=bundle-only`
/// (RFC 8843 §7.2): then port 0 only says it rides the bundle's transport, as GStreamer's
/// webrtcbin offers every section after the first under `max-bundle`.
pub(super) fn is_rejected(media: &webrtc::sdp::MediaDescription) -> bool {
    media.media_name.port.value == 0 && !media.attributes.iter().any(|a| a.key == "bundle-only")
}

/// The codec each kind of media was agreed on, read from an answer: the first payload type
/// of each live section, by its `rtpmap` name (`opus`, `VP8`, `H264`, …).
pub fn agreed_codecs(answer: &str) -> (Option<String>, Option<String>) {
    let Ok(parsed) = SessionDescription::unmarshal(&mut Cursor::new(answer.as_bytes())) else {
        return (None, None);
    };
    let (mut audio, mut video) = (None, None);
    for media in &parsed.media_descriptions {
        if is_rejected(media) {
            continue;
        }
        let Some(first) = media.media_name.formats.first() else {
            continue;
        };
        let codec = media.attributes.iter().find_map(|a| {
            let value = a.value.as_deref().filter(|_| a.key == "rtpmap")?;
            let (pt, rest) = value.split_once(' ')?;
            (pt == first)
                .then(|| super::codecs::canonical_name(rest.split('/').next().unwrap_or(rest)))
        });
        match media.media_name.media.as_str() {
            "audio" if audio.is_none() => audio = codec,
            "video" if video.is_none() => video = codec,
            _ => {}
        }
    }
    (audio, video)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agreed_codecs_are_read_from_an_answer() {
        let answer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:97 rtx/90000\r\na=rtpmap:96 VP8/90000\r\n";
        assert_eq!(
            agreed_codecs(answer),
            (Some("opus".into()), Some("VP8".into()))
        );
        assert_eq!(agreed_codecs("not sdp"), (None, None));
    }

    const HEAD: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

    fn offer(sections: &str) -> String {
        format!("{HEAD}{sections}")
    }

    #[test]
    fn directions_and_kinds() {
        let s = inspect(&offer(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=sendonly\r\n\
             m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=recvonly\r\n\
             m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\n\
             m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n",
        ))
        .unwrap();
        assert_eq!(s.sending, vec![MediaKind::Audio, MediaKind::Video]);
        assert_eq!(s.receiving, vec![MediaKind::Video, MediaKind::Video]);
        assert!(s.has_data_channel);
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let err = inspect("hello").unwrap_err().to_string();
        assert!(err.contains("not SDP"), "{err}");
        let err = inspect("v=0\r\nthis is not sdp\r\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unparsable SDP"), "{err}");
    }

    #[test]
    fn rejected_sections_carry_nothing() {
        let s = inspect(&offer(
            "m=video 0 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=sendonly\r\n",
        ))
        .unwrap();
        assert!(s.sending.is_empty());
    }

    #[test]
    fn a_bundle_only_section_is_live_despite_port_zero() {
        // GStreamer's max-bundle offer: every section after the first has port 0.
        let s = inspect(&offer(
            "a=group:BUNDLE video0 audio1\r\n\
             m=video 9 UDP/TLS/RTP/SAVPF 98\r\nc=IN IP4 0.0.0.0\r\na=sendonly\r\na=mid:video0\r\n\
             m=audio 0 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=bundle-only\r\na=sendonly\r\na=mid:audio1\r\n",
        ))
        .unwrap();
        assert_eq!(s.sending, vec![MediaKind::Video, MediaKind::Audio]);
    }
}
