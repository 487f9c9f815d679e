//! What a finished DTLS handshake and an offer give a direct connection: the SRTP
//! contexts of both sides (RFC 5764 §4.2) and the certificate fingerprints to check the
//! client by.

use rtc::crypto::RTCCryptoProvider;
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;

use super::{Keys, error};

/// Our and the client's SRTP contexts from a finished DTLS handshake (RFC 5764 §4.2).
pub(super) fn srtp_contexts(
    state: &rtc::dtls::state::State,
    crypto: &dyn RTCCryptoProvider,
) -> Result<Keys, String> {
    let profile = match state.srtp_protection_profile() {
        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => ProtectionProfile::AeadAes128Gcm,
        SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm => ProtectionProfile::AeadAes256Gcm,
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => {
            ProtectionProfile::Aes128CmHmacSha1_80
        }
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32 => {
            ProtectionProfile::Aes128CmHmacSha1_32
        }
        _ => return Err("no SRTP profile agreed".into()),
    };
    let mut config = rtc::srtp::config::Config {
        profile,
        ..Default::default()
    };
    let material = state
        .export_keying_material(
            rtc::srtp::config::LABEL_EXTRACTOR_DTLS_SRTP,
            &[],
            config.keying_material_len(),
        )
        .map_err(error)?;
    config
        .set_session_keys_from_keying_material(material.as_ref(), state.is_client())
        .map_err(error)?;
    let keys = &config.keys;
    let local = Context::new(
        &keys.local_master_key,
        &keys.local_master_salt,
        profile,
        None,
        None,
        crypto.crypto(),
    )
    .map_err(error)?;
    let remote = Context::new(
        &keys.remote_master_key,
        &keys.remote_master_salt,
        profile,
        Some(rtc::srtp::option::srtp_replay_protection(64)),
        Some(rtc::srtp::option::srtcp_replay_protection(64)),
        crypto.crypto(),
    )
    .map_err(error)?;
    Ok(Keys { local, remote })
}

/// The `sha-256` fingerprints of an SDP (session or media level), lower case.
pub fn sha256_fingerprints(sdp: &str) -> Vec<String> {
    let mut found: Vec<String> = sdp
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("a=fingerprint:"))
        .filter_map(|f| {
            let (algorithm, value) = f.split_once(' ')?;
            algorithm
                .eq_ignore_ascii_case("sha-256")
                .then(|| value.trim().to_lowercase())
        })
        .collect();
    found.dedup();
    found
}

/// The `sha-256` fingerprint of a DER certificate, as SDP writes it (`ab:cd:…`).
pub fn fingerprint_of(crypto: &dyn RTCCryptoProvider, der: &[u8]) -> Result<String, String> {
    let hashed = crypto
        .crypto()
        .hash(rtc::crypto::HashAlgorithm::Sha256, der)
        .map_err(error)?;
    let hex: Vec<String> = hashed.iter().map(|b| format!("{b:02x}")).collect();
    Ok(hex.join(":"))
}
