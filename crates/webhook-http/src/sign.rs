//! Standard Webhooks signing, exactly as contract section 9 says:
//! `webhook-signature` = `v1,` + base64(HMAC-SHA256(key,
//! "{webhook-id}.{webhook-timestamp}.{body}")), where the key is the
//! base64-decoded part of the endpoint's secret after `whsec_`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The prefix of every endpoint secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// The secret is not `whsec_` + base64 of a non-empty key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the endpoint secret is not whsec_ + base64")]
pub struct BadSecret;

/// The `webhook-signature` header value for one attempt.
pub fn signature(
    secret: &str,
    webhook_id: &str,
    timestamp_s: i64,
    body: &[u8],
) -> Result<String, BadSecret> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).ok_or(BadSecret)?;
    let key = STANDARD.decode(encoded).map_err(|_| BadSecret)?;
    if key.is_empty() {
        return Err(BadSecret);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| BadSecret)?;
    mac.update(webhook_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The vector of the Standard Webhooks reference library's own tests.
    #[test]
    fn the_reference_vector() {
        assert_eq!(
            signature(
                "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#,
            )
            .unwrap(),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn a_bad_secret_is_refused() {
        for bad in ["C2FVsBQIhrscChlQIMV+b5sSYspob7oD", "whsec_", "whsec_!!"] {
            assert_eq!(signature(bad, "id", 1, b"{}"), Err(BadSecret), "{bad}");
        }
    }
}
