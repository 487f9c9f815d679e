//! Whether a player can receive what a publisher sends: the codecs a WHEP offer accepts,
//! read from its SDP, matched against a relay track's codec the way the engine binds a
//! track to a payload type (same media type; for H.264 the same packetization mode and
//! profile, for VP9 the same profile). A player that cannot decode the stream is refused
//! with the codecs on both sides named, rather than answered and left with black video.
//! Pure functions, testable without sockets.

use std::collections::HashMap;
use std::io::Cursor;

use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
use webrtc::sdp::SessionDescription;

use crate::registry::MediaKind;

/// A codec an offer accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offered {
    pub kind: MediaKind,
    /// `video/H264`, `audio/opus`, … as the `rtpmap` names it.
    pub mime: String,
    pub clock_rate: u32,
    pub fmtp: String,
}

/// The codecs of the sections in which the client receives, by kind. Retransmission,
/// redundancy and FEC formats are left out: they carry no stream of their own.
pub fn offered(sdp: &str) -> Vec<Offered> {
    let Ok(parsed) = SessionDescription::unmarshal(&mut Cursor::new(sdp.as_bytes())) else {
        return Vec::new();
    };
    let mut codecs = Vec::new();
    for media in &parsed.media_descriptions {
        let kind = match media.media_name.media.as_str() {
            "audio" => MediaKind::Audio,
            "video" => MediaKind::Video,
            _ => continue,
        };
        let has = |name: &str| media.attributes.iter().any(|a| a.key == name);
        if media.media_name.port.value == 0 || has("sendonly") || has("inactive") {
            continue;
        }
        let values = |key: &str| -> HashMap<String, String> {
            media
                .attributes
                .iter()
                .filter(|a| a.key == key)
                .filter_map(|a| a.value.as_deref()?.split_once(' '))
                .map(|(pt, rest)| (pt.to_string(), rest.to_string()))
                .collect()
        };
        let (rtpmap, fmtp) = (values("rtpmap"), values("fmtp"));
        for format in &media.media_name.formats {
            let Some(map) = rtpmap.get(format) else {
                continue;
            };
            let mut parts = map.split('/');
            let name = parts.next().unwrap_or("");
            if ["rtx", "red", "ulpfec", "flexfec-03"]
                .iter()
                .any(|skip| name.eq_ignore_ascii_case(skip))
            {
                continue;
            }
            codecs.push(Offered {
                kind,
                mime: format!("{}/{name}", media.media_name.media),
                clock_rate: parts.next().and_then(|r| r.parse().ok()).unwrap_or(0),
                fmtp: fmtp.get(format).cloned().unwrap_or_default(),
            });
        }
    }
    codecs
}

fn parameters(fmtp: &str) -> HashMap<String, String> {
    fmtp.split(';')
        .filter_map(|p| {
            let (key, value) = p.trim().split_once('=')?;
            Some((key.trim().to_ascii_lowercase(), value.trim().to_string()))
        })
        .collect()
}

/// The first two bytes of an H.264 `profile-level-id` (profile and constraints), as the
/// engine compares them; RFC 6184's default when absent.
fn h264_profile(p: &HashMap<String, String>) -> Option<String> {
    let id = p.get("profile-level-id").map_or("42001f", String::as_str);
    (id.len() >= 4 && id.is_char_boundary(4)).then(|| id[..4].to_ascii_lowercase())
}

/// Whether a player that accepts `offered` can receive a stream sent as `sent`.
pub fn compatible(sent: &RTCRtpCodecCapability, offered: &Offered) -> bool {
    if !sent.mime_type.eq_ignore_ascii_case(&offered.mime)
        || (offered.clock_rate != 0 && sent.clock_rate != offered.clock_rate)
    {
        return false;
    }
    let (a, b) = (parameters(&sent.sdp_fmtp_line), parameters(&offered.fmtp));
    let param = |p: &HashMap<String, String>, key: &str, default: &str| {
        p.get(key).cloned().unwrap_or_else(|| default.to_string())
    };
    match sent.mime_type.to_ascii_lowercase().as_str() {
        "video/h264" => {
            param(&a, "packetization-mode", "0") == param(&b, "packetization-mode", "0")
                && h264_profile(&a).is_some()
                && h264_profile(&a) == h264_profile(&b)
        }
        "video/vp9" => param(&a, "profile-id", "0") == param(&b, "profile-id", "0"),
        _ => true,
    }
}

/// A codec as people read it: `H264 (profile-level-id=42e01f;packetization-mode=1)`.
pub fn describe(mime: &str, fmtp: &str) -> String {
    let name = mime.split_once('/').map_or(mime, |(_, n)| n);
    let shown: Vec<&str> = fmtp
        .split(';')
        .map(str::trim)
        .filter(|p| {
            ["profile-level-id", "packetization-mode", "profile-id"]
                .iter()
                .any(|k| p.starts_with(k))
        })
        .collect();
    if shown.is_empty() {
        name.to_string()
    } else {
        format!("{name} ({})", shown.join(";"))
    }
}

/// Why a player cannot receive a stream: `None` when every track it asks for has a codec
/// it accepts.
pub fn refusal(
    name: &str,
    sent: &[(MediaKind, &RTCRtpCodecCapability)],
    offer: &[Offered],
) -> Option<String> {
    for (kind, codec) in sent {
        let accepted: Vec<&Offered> = offer.iter().filter(|o| o.kind == *kind).collect();
        if accepted.is_empty() || accepted.iter().any(|o| compatible(codec, o)) {
            continue;
        }
        let mut names: Vec<String> = accepted
            .iter()
            .map(|o| describe(&o.mime, &o.fmtp))
            .collect();
        names.dedup();
        let kind = match kind {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        };
        return Some(format!(
            "stream '{name}' sends {kind} as {}, which this player does not accept (its offer takes {})",
            describe(&codec.mime_type, &codec.sdp_fmtp_line),
            names.join(", ")
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(mime: &str, clock_rate: u32, fmtp: &str) -> RTCRtpCodecCapability {
        RTCRtpCodecCapability {
            mime_type: mime.into(),
            clock_rate,
            sdp_fmtp_line: fmtp.into(),
            ..Default::default()
        }
    }

    const PLAYER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103\r\nc=IN IP4 0.0.0.0\r\na=recvonly\r\n\
        a=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
        a=rtpmap:102 H264/90000\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
        a=rtpmap:103 H264/90000\r\na=fmtp:103 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=recvonly\r\na=rtpmap:111 opus/48000/2\r\n";

    #[test]
    fn an_offer_is_read_as_the_codecs_it_accepts() {
        let codecs = offered(PLAYER);
        let names: Vec<String> = codecs.iter().map(|c| c.mime.clone()).collect();
        assert_eq!(
            names,
            ["video/VP8", "video/H264", "video/H264", "audio/opus"]
        );
        assert_eq!(codecs[3].clock_rate, 48000);
    }

    #[test]
    fn h264_matches_on_packetization_mode_and_profile_vp9_on_profile() {
        let offer = offered(PLAYER);
        let h264 = |fmtp: &str| cap("video/H264", 90000, fmtp);
        let accepts = |c: &RTCRtpCodecCapability| offer.iter().any(|o| compatible(c, o));
        assert!(accepts(&h264(
            "packetization-mode=1;profile-level-id=42e01f"
        )));
        // A higher level of the same profile still matches; another profile does not.
        assert!(accepts(&h264(
            "packetization-mode=1;profile-level-id=42e034"
        )));
        assert!(!accepts(&h264(
            "packetization-mode=1;profile-level-id=640028"
        )));
        assert!(!accepts(&h264(
            "packetization-mode=0;profile-level-id=42e01f"
        )));
        assert!(accepts(&cap(
            "audio/opus",
            48000,
            "minptime=10;useinbandfec=1"
        )));
        assert!(!accepts(&cap("video/VP9", 90000, "profile-id=0")));
        let vp9 = offered(&PLAYER.replace("VP8/90000", "VP9/90000\r\na=fmtp:96 profile-id=2"));
        assert!(
            !vp9.iter()
                .any(|o| compatible(&cap("video/VP9", 90000, "profile-id=0"), o))
        );
        assert!(
            vp9.iter()
                .any(|o| compatible(&cap("video/VP9", 90000, "profile-id=2"), o))
        );
    }

    #[test]
    fn a_player_that_cannot_decode_is_told_both_sides() {
        let offer = offered(PLAYER);
        let vp9 = cap("video/VP9", 90000, "profile-id=0");
        let opus = cap("audio/opus", 48000, "");
        let why = refusal(
            "cam",
            &[(MediaKind::Video, &vp9), (MediaKind::Audio, &opus)],
            &offer,
        )
        .unwrap();
        assert!(why.contains("sends video as VP9 (profile-id=0)"), "{why}");
        assert!(
            why.contains("VP8, H264 (packetization-mode=1;profile-level-id=42e01f)"),
            "{why}"
        );
        assert_eq!(refusal("cam", &[(MediaKind::Audio, &opus)], &offer), None);
    }
}
