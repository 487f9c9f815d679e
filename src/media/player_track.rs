//! A player's local track: the one webrtc-rs track its sender binds, written straight to
//! that single binding. webrtc-rs' `TrackLocalStaticRTP` serves any number of bindings, so
//! each packet it writes takes an async lock, copies the binding list and builds an
//! extension map; a relay's player only ever has one binding, read here without a lock,
//! and each packet is rewritten in a buffer the player's feed reuses. The feed keeps the
//! binding it last read and looks again only when a counter says it changed: one atomic
//! load per packet (reading the `ArcSwap` itself per packet cost 1.5 % of the relay).

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use portable_atomic::AtomicBool;
use webrtc::rtp::packet::Packet;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType,
};
use webrtc::track::track_local::{TrackLocal, TrackLocalContext, TrackLocalWriter};

/// What the sender's binding gave: where packets go and how they are stamped.
struct Binding {
    id: String,
    ssrc: u32,
    payload_type: u8,
    /// The `sdes:mid` header extension, when negotiated: its id and the transceiver's mid.
    mid: Option<(u8, Bytes)>,
    paused: Arc<AtomicBool>,
    writer: Arc<dyn TrackLocalWriter + Send + Sync>,
}

pub struct PlayerTrack {
    codec: RTCRtpCodecCapability,
    id: String,
    stream_id: String,
    kind: RTPCodecType,
    binding: ArcSwapOption<Binding>,
    /// Bumped on every bind and unbind, after `binding` is stored.
    changes: AtomicU64,
}

/// What a player's feed keeps between writes: its rewrite buffer and the binding it read.
#[derive(Default)]
pub struct WriteState {
    scratch: Packet,
    seen: Option<(u64, Option<Arc<Binding>>)>,
}

impl PlayerTrack {
    pub fn new(codec: RTCRtpCodecCapability, id: String, stream_id: String) -> Self {
        let kind = if codec.mime_type.to_ascii_lowercase().starts_with("audio/") {
            RTPCodecType::Audio
        } else {
            RTPCodecType::Video
        };
        PlayerTrack {
            codec,
            id,
            stream_id,
            kind,
            binding: ArcSwapOption::empty(),
            changes: AtomicU64::new(0),
        }
    }

    /// Writes `packet` to the player, stamped with its binding's SSRC, payload type and mid,
    /// through `state` (kept by the caller, so steady writes allocate nothing here).
    /// Bytes written: 0 before the sender is bound (or while it is paused), and 0 when
    /// webrtc-rs drops the packet because the player's SRTP is not keyed yet.
    pub async fn write(
        &self,
        packet: &Packet,
        state: &mut WriteState,
    ) -> webrtc::error::Result<usize> {
        let changes = self.changes.load(Ordering::Acquire);
        if state.seen.as_ref().is_none_or(|(seen, _)| *seen != changes) {
            state.seen = Some((changes, self.binding.load_full()));
        }
        let Some((_, Some(binding))) = &state.seen else {
            return Ok(0);
        };
        let scratch = &mut state.scratch;
        if binding.paused.load(Ordering::Relaxed) {
            return Ok(0);
        }
        let header = &mut scratch.header;
        header.version = packet.header.version;
        header.padding = packet.header.padding;
        header.extension = packet.header.extension;
        header.marker = packet.header.marker;
        header.sequence_number = packet.header.sequence_number;
        header.timestamp = packet.header.timestamp;
        header.csrc.clone_from(&packet.header.csrc);
        header.extension_profile = packet.header.extension_profile;
        header.extensions.clone_from(&packet.header.extensions);
        header.extensions_padding = packet.header.extensions_padding;
        header.ssrc = binding.ssrc;
        header.payload_type = binding.payload_type;
        if let Some((id, mid)) = &binding.mid {
            header.set_extension(*id, mid.clone())?;
        }
        scratch.payload = packet.payload.clone();
        binding.writer.write_rtp(scratch).await
    }
}

/// The transceiver's codec for `ours`: the same MIME type and format line, else the same
/// MIME type (as webrtc-rs' own tracks match).
fn matching_codec(
    ours: &RTCRtpCodecCapability,
    negotiated: &[RTCRtpCodecParameters],
) -> Option<RTCRtpCodecParameters> {
    let same_type =
        |c: &&RTCRtpCodecParameters| c.capability.mime_type.eq_ignore_ascii_case(&ours.mime_type);
    negotiated
        .iter()
        .filter(same_type)
        .find(|c| c.capability.sdp_fmtp_line == ours.sdp_fmtp_line)
        .or_else(|| negotiated.iter().find(same_type))
        .cloned()
}

#[async_trait::async_trait]
impl TrackLocal for PlayerTrack {
    async fn bind(&self, t: &TrackLocalContext) -> webrtc::error::Result<RTCRtpCodecParameters> {
        let codec = matching_codec(&self.codec, t.codec_parameters())
            .ok_or(webrtc::Error::ErrUnsupportedCodec)?;
        let mid = t
            .header_extensions()
            .iter()
            .find(|e| e.uri == webrtc::sdp::extmap::SDES_MID_URI)
            .and_then(|e| u8::try_from(e.id).ok())
            .zip(t.mid().map(|mid| Bytes::copy_from_slice(mid.as_bytes())));
        self.binding.store(Some(Arc::new(Binding {
            id: t.id(),
            ssrc: t.ssrc(),
            payload_type: codec.payload_type,
            mid,
            paused: t.paused(),
            writer: t.write_stream(),
        })));
        self.changes.fetch_add(1, Ordering::Release);
        Ok(codec)
    }

    async fn unbind(&self, t: &TrackLocalContext) -> webrtc::error::Result<()> {
        let id = t.id();
        let bound = self.binding.load();
        if bound.as_ref().is_some_and(|b| b.id == id) {
            self.binding.store(None);
            self.changes.fetch_add(1, Ordering::Release);
            Ok(())
        } else {
            Err(webrtc::Error::ErrUnbindFailed)
        }
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn rid(&self) -> Option<&str> {
        None
    }

    fn stream_id(&self) -> &str {
        &self.stream_id
    }

    fn kind(&self) -> RTPCodecType {
        self.kind
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(mime: &str, fmtp: &str, payload_type: u8) -> RTCRtpCodecParameters {
        RTCRtpCodecParameters {
            capability: RTCRtpCodecCapability {
                mime_type: mime.into(),
                clock_rate: 90000,
                sdp_fmtp_line: fmtp.into(),
                ..Default::default()
            },
            payload_type,
            ..Default::default()
        }
    }

    #[test]
    fn the_binding_codec_is_the_same_format_first_then_the_same_type() {
        let h264 = |fmtp: &str| RTCRtpCodecCapability {
            mime_type: "video/H264".into(),
            sdp_fmtp_line: fmtp.into(),
            ..Default::default()
        };
        let negotiated = [
            codec("video/VP8", "", 96),
            codec("video/h264", "profile-level-id=42001f", 102),
            codec("video/H264", "profile-level-id=42e01f", 106),
        ];
        let exact = matching_codec(&h264("profile-level-id=42e01f"), &negotiated);
        assert_eq!(exact.map(|c| c.payload_type), Some(106));
        let loose = matching_codec(&h264("profile-level-id=640032"), &negotiated);
        assert_eq!(loose.map(|c| c.payload_type), Some(102));
        let opus = RTCRtpCodecCapability {
            mime_type: "audio/opus".into(),
            ..Default::default()
        };
        assert!(matching_codec(&opus, &negotiated).is_none());
    }
}
