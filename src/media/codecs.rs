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
        if super::offer::is_rejected(media) || has("sendonly") || has("inactive") {
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

/// The H.264 profile a `profile-level-id` names, read as RFC 6184 §8.1 and browsers read
/// it (profile_idc and the constraint flags; the level does not matter): `42e01f` and
/// `42c015` are both constrained baseline. RFC 6184's default when absent.
fn h264_profile(p: &HashMap<String, String>) -> Option<&'static str> {
    let id = p.get("profile-level-id").map_or("42001f", String::as_str);
    if id.len() != 6 || !id.is_ascii() {
        return None;
    }
    let idc = u8::from_str_radix(&id[0..2], 16).ok()?;
    let iop = u8::from_str_radix(&id[2..4], 16).ok()?;
    Some(match (idc, iop) {
        (0x42, iop) if iop & 0x40 != 0 => "constrained-baseline",
        (0x4d, iop) if iop & 0x80 != 0 => "constrained-baseline",
        (0x58, iop) if iop & 0xc0 == 0xc0 => "constrained-baseline",
        (0x42, _) => "baseline",
        (0x58, iop) if iop & 0x80 != 0 => "baseline",
        (0x58, _) => "extended",
        (0x4d, _) => "main",
        (0x64, iop) if iop & 0x0c == 0x0c => "constrained-high",
        (0x64, _) => "high",
        (0xf4, _) => "high-444",
        _ => return None,
    })
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

/// A codec's name as records show it (`opus`, `VP8`, `H264`), however a client's SDP
/// spelled it (GStreamer writes `OPUS`).
pub fn canonical_name(name: &str) -> String {
    const KNOWN: [&str; 9] = [
        "opus", "VP8", "VP9", "H264", "H265", "AV1", "G722", "PCMU", "PCMA",
    ];
    KNOWN
        .iter()
        .find(|k| k.eq_ignore_ascii_case(name))
        .map_or_else(|| name.to_string(), |k| k.to_string())
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

/// The codec to send a player for each track it asks for, as its own offer writes it (so
/// the engine binds the payload type the player expects), or why it cannot receive the
/// stream. `None` for a track of a kind the player does not receive.
pub fn choose(
    name: &str,
    sent: &[(MediaKind, &RTCRtpCodecCapability)],
    offer: &[Offered],
) -> Result<Vec<Option<RTCRtpCodecCapability>>, String> {
    let mut chosen = Vec::new();
    for (kind, codec) in sent {
        let accepted: Vec<&Offered> = offer.iter().filter(|o| o.kind == *kind).collect();
        if accepted.is_empty() {
            chosen.push(None);
            continue;
        }
        if let Some(offered) = accepted.iter().find(|o| compatible(codec, o)) {
            chosen.push(Some(RTCRtpCodecCapability {
                sdp_fmtp_line: offered.fmtp.clone(),
                ..(*codec).clone()
            }));
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
        return Err(format!(
            "stream '{name}' sends {kind} as {}, which this player does not accept (its offer takes {})",
            describe(&codec.mime_type, &codec.sdp_fmtp_line),
            names.join(", ")
        ));
    }
    Ok(chosen)
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
        let why = choose(
            "cam",
            &[(MediaKind::Video, &vp9), (MediaKind::Audio, &opus)],
            &offer,
        )
        .unwrap_err();
        assert!(why.contains("sends video as VP9 (profile-id=0)"), "{why}");
        assert!(
            why.contains("VP8, H264 (packetization-mode=1;profile-level-id=42e01f)"),
            "{why}"
        );
        // A player is sent the codec as its own offer wrote it.
        let h264 = cap(
            "video/H264",
            90000,
            "packetization-mode=1;profile-level-id=42c015",
        );
        let chosen = choose(
            "cam",
            &[(MediaKind::Audio, &opus), (MediaKind::Video, &h264)],
            &offer,
        )
        .unwrap();
        assert_eq!(chosen[0].as_ref().unwrap().mime_type, "audio/opus");
        assert_eq!(
            chosen[1].as_ref().unwrap().sdp_fmtp_line,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
        );
        let audio_only = offered(&PLAYER[..PLAYER.find("m=video").unwrap()]);
        assert_eq!(
            choose("cam", &[(MediaKind::Video, &h264)], &audio_only).unwrap(),
            [None]
        );
    }
}
