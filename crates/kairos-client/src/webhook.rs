//! Verifying the signature of a SyncKairos webhook, exactly as Standard
//! Webhooks (and contract section 9) define it, for an application's
//! receiver.
//!
//! Headers `webhook-id`, `webhook-timestamp` (Unix seconds) and
//! `webhook-signature` (space-separated `v1,<base64>` signatures, several
//! during a secret rotation). The secret is `whsec_` + base64 of the key; the
//! signed content is `{webhook-id}.{webhook-timestamp}.{body}` with the raw
//! body bytes as received (never re-serialized JSON); the signature is
//! base64(HMAC-SHA256(key, content)). The comparison is constant-time, and a
//! timestamp more than the tolerance (default 5 minutes) away from now, in
//! either direction, is refused against replays.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header carrying the message id (the event's `event_id`, the same on
/// every retry: use it to deduplicate).
pub const HEADER_ID: &str = "webhook-id";
/// The header carrying the attempt's Unix time in seconds.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// The header carrying the signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// The prefix of a symmetric secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// The default timestamp tolerance: 5 minutes.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// Why a webhook was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// The secret is not base64 (after the `whsec_` prefix) or is empty.
    #[error("the secret is not `whsec_` + base64")]
    InvalidSecret,
    /// A header is missing.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not an integer.
    #[error("webhook-timestamp is not an integer")]
    InvalidTimestamp,
    /// The timestamp is older than the tolerance.
    #[error("webhook-timestamp is too old")]
    TimestampTooOld,
    /// The timestamp is further in the future than the tolerance.
    #[error("webhook-timestamp is too far in the future")]
    TimestampInFuture,
    /// No `v1` signature in the header matches.
    #[error("no signature matches")]
    InvalidSignature,
}

/// Verifies (and, for tests and senders, makes) webhook signatures with one
/// endpoint's secret.
///
/// ```
/// use kairos_client::webhook::WebhookVerifier;
///
/// let verifier = WebhookVerifier::new("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")?;
/// let body = br#"{"type":"session_expired","timestamp":"...","data":{}}"#;
/// let now = 1_700_000_000;
/// let signature = verifier.sign("evt_1", now, body);
/// verifier.verify_at("evt_1", &now.to_string(), &signature, body, now)?;
/// # Ok::<(), kairos_client::webhook::WebhookError>(())
/// ```
#[derive(Clone)]
pub struct WebhookVerifier {
    key: Vec<u8>,
    tolerance: Duration,
}

impl std::fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("WebhookVerifier")
            .field("tolerance", &self.tolerance)
            .finish_non_exhaustive()
    }
}

impl WebhookVerifier {
    /// A verifier for a secret as the server shows it (`whsec_` + base64 of
    /// the key); the prefix may be left out.
    pub fn new(secret: &str) -> Result<Self, WebhookError> {
        let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
        let key = STANDARD
            .decode(encoded.trim())
            .map_err(|_| WebhookError::InvalidSecret)?;
        if key.is_empty() {
            return Err(WebhookError::InvalidSecret);
        }
        Ok(Self::from_key(key))
    }

    /// A verifier for the raw key bytes.
    pub fn from_key(key: Vec<u8>) -> Self {
        Self {
            key,
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    /// Accepts timestamps this far from now in either direction (default 5 minutes).
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// `v1,<base64 signature>` of a message: what a sender puts in
    /// `webhook-signature`.
    pub fn sign(&self, webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self
            .mac(webhook_id, &timestamp.to_string(), body)
            .finalize();
        format!("v1,{}", STANDARD.encode(tag.into_bytes()))
    }

    /// Verifies a webhook received now, given a function that looks a header
    /// up by its (lower-case) name, e.g. `|name| headers.get(name)?.to_str().ok()`.
    pub fn verify_headers<'a>(
        &self,
        header: impl Fn(&str) -> Option<&'a str>,
        body: &[u8],
    ) -> Result<(), WebhookError> {
        let id = header(HEADER_ID).ok_or(WebhookError::MissingHeader(HEADER_ID))?;
        let timestamp =
            header(HEADER_TIMESTAMP).ok_or(WebhookError::MissingHeader(HEADER_TIMESTAMP))?;
        let signature =
            header(HEADER_SIGNATURE).ok_or(WebhookError::MissingHeader(HEADER_SIGNATURE))?;
        self.verify(id, timestamp, signature, body)
    }

    /// Verifies a webhook received now from its three header values and the
    /// raw body.
    pub fn verify(
        &self,
        webhook_id: &str,
        webhook_timestamp: &str,
        webhook_signature: &str,
        body: &[u8],
    ) -> Result<(), WebhookError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.verify_at(webhook_id, webhook_timestamp, webhook_signature, body, now)
    }

    /// [`verify`](Self::verify) as of `now` (Unix seconds).
    pub fn verify_at(
        &self,
        webhook_id: &str,
        webhook_timestamp: &str,
        webhook_signature: &str,
        body: &[u8],
        now: i64,
    ) -> Result<(), WebhookError> {
        let ts = webhook_timestamp.trim();
        if ts.is_empty() || !ts.bytes().all(|b| b.is_ascii_digit()) {
            return Err(WebhookError::InvalidTimestamp);
        }
        let timestamp: i64 = ts.parse().map_err(|_| WebhookError::InvalidTimestamp)?;
        let tolerance = i64::try_from(self.tolerance.as_secs()).unwrap_or(i64::MAX);
        if now.saturating_sub(timestamp) > tolerance {
            return Err(WebhookError::TimestampTooOld);
        }
        if timestamp.saturating_sub(now) > tolerance {
            return Err(WebhookError::TimestampInFuture);
        }
        // The content signed is the header's text, as sent.
        let mac = self.mac(webhook_id, ts, body);
        let matched = webhook_signature
            .split(' ')
            .filter_map(|entry| entry.split_once(','))
            .filter(|(version, _)| *version == "v1")
            .filter_map(|(_, sig)| STANDARD.decode(sig).ok())
            // `verify_slice` compares in constant time.
            .any(|sig| mac.clone().verify_slice(&sig).is_ok());
        if matched {
            Ok(())
        } else {
            Err(WebhookError::InvalidSignature)
        }
    }

    fn mac(&self, webhook_id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length.
        let mut mac = match HmacSha256::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes a key of any length"),
        };
        mac.update(webhook_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The vector of the Standard Webhooks reference library's own tests
    /// (libraries/rust/src/lib.rs, `test_sign`).
    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS: i64 = 1649367553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SIGNATURE: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    #[test]
    fn the_reference_vector_signs_and_verifies() {
        let v = WebhookVerifier::new(SECRET).unwrap();
        assert_eq!(v.sign(ID, TS, BODY), SIGNATURE);
        v.verify_at(ID, &TS.to_string(), SIGNATURE, BODY, TS)
            .unwrap();
    }

    #[test]
    fn the_timestamp_tolerance_applies_both_ways() {
        let v = WebhookVerifier::new(SECRET).unwrap();
        let ts = TS.to_string();
        v.verify_at(ID, &ts, SIGNATURE, BODY, TS + 300).unwrap();
        v.verify_at(ID, &ts, SIGNATURE, BODY, TS - 300).unwrap();
        assert_eq!(
            v.verify_at(ID, &ts, SIGNATURE, BODY, TS + 301),
            Err(WebhookError::TimestampTooOld)
        );
        assert_eq!(
            v.verify_at(ID, &ts, SIGNATURE, BODY, TS - 301),
            Err(WebhookError::TimestampInFuture)
        );
        let strict = v.with_tolerance(Duration::from_secs(10));
        assert_eq!(
            strict.verify_at(ID, &ts, SIGNATURE, BODY, TS + 11),
            Err(WebhookError::TimestampTooOld)
        );
    }

    #[test]
    fn malformed_input_is_refused() {
        let v = WebhookVerifier::new(SECRET).unwrap();
        for ts in ["", "-1", "16493675.53", "0x10", "1649367553 1"] {
            assert_eq!(
                v.verify_at(ID, ts, SIGNATURE, BODY, TS),
                Err(WebhookError::InvalidTimestamp),
                "{ts:?}"
            );
        }
        let ts = TS.to_string();
        for sig in [
            "",
            "v1,",
            "v1,not base64!",
            "v1a,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
            "tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        ] {
            assert_eq!(
                v.verify_at(ID, &ts, sig, BODY, TS),
                Err(WebhookError::InvalidSignature),
                "{sig:?}"
            );
        }
        assert_eq!(
            WebhookVerifier::new("whsec_!!!").unwrap_err(),
            WebhookError::InvalidSecret
        );
        assert_eq!(
            WebhookVerifier::new("whsec_").unwrap_err(),
            WebhookError::InvalidSecret
        );
    }

    #[test]
    fn missing_headers_are_named() {
        let v = WebhookVerifier::new(SECRET).unwrap();
        let err = v.verify_headers(|name| (name != HEADER_TIMESTAMP).then_some("x"), BODY);
        assert_eq!(err, Err(WebhookError::MissingHeader(HEADER_TIMESTAMP)));
    }

    #[test]
    fn the_debug_form_hides_the_key() {
        let v = WebhookVerifier::new(SECRET).unwrap();
        assert!(!format!("{v:?}").contains("C2FV"));
    }
}
