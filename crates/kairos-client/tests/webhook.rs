//! The webhook verifier against implementations that are not its own:
//! signatures made by Python's `hmac` module and by the `openssl` CLI from
//! the Standard Webhooks rules (content `{id}.{timestamp}.{body}`, key = the
//! base64-decoded secret after `whsec_`, HMAC-SHA256, base64, `v1,` prefix)
//! must verify, and every way of getting one wrong must be refused: another
//! secret, a tampered body, id or timestamp, an old or future timestamp, and
//! headers with several signatures, one or none of them right.
#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns unwrap too: a panic is a failed test.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use kairos_client::webhook::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use kairos_client::{WebhookError, WebhookVerifier};

/// Secrets as the server makes them (`whsec_` + base64 of 32 bytes), and a
/// shorter one as other Standard Webhooks senders use.
const SECRETS: [&str; 3] = [
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "whsec_q83u2vYy0Q0FQrC/q8K0eTsqk5WkV3Yb5m0n0pm3bWc=",
    "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
];

/// Bodies as a receiver gets them: compact JSON, pretty JSON with newlines,
/// non-ASCII text, an empty body.
fn bodies() -> Vec<Vec<u8>> {
    vec![
        br#"{"type":"session_expired","timestamp":"2026-12-06T14:00:00.000Z","data":{"event_id":"4f6c1b1e-7d0a-4a8f-9b59-1f2e3d4c5b6a","version":9}}"#.to_vec(),
        b"{\n  \"type\": \"cycle_switched\",\n  \"data\": {\"participant_id\": \"white\"}\n}\n".to_vec(),
        "{\"metadata\":{\"table\":\"Échecs ♞ 東京\"}}".as_bytes().to_vec(),
        Vec::new(),
    ]
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `v1,<signature>` computed by Python's standard library. The body goes
/// through stdin, so no byte of it is re-encoded on the way.
fn python_sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let script = r#"
import base64, hashlib, hmac, sys
secret, msg_id, ts = sys.argv[1], sys.argv[2], sys.argv[3]
key = base64.b64decode(secret[len("whsec_"):] if secret.startswith("whsec_") else secret)
body = sys.stdin.buffer.read()
content = msg_id.encode() + b"." + ts.encode() + b"." + body
print("v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode())
"#;
    run(
        Command::new("python3").args(["-c", script, secret, id, &timestamp.to_string()]),
        body,
    )
}

/// The same with the `openssl` CLI (key given in hex), for one more
/// implementation.
fn openssl_sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut content = format!("{id}.{timestamp}.").into_bytes();
    content.extend_from_slice(body);
    let digest = run_bytes(
        Command::new("openssl").args([
            "dgst",
            "-sha256",
            "-mac",
            "HMAC",
            "-macopt",
            &format!("hexkey:{hex}"),
            "-binary",
        ]),
        &content,
    );
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

fn run(cmd: &mut Command, stdin: &[u8]) -> String {
    String::from_utf8(run_bytes(cmd, stdin))
        .unwrap()
        .trim()
        .to_owned()
}

fn run_bytes(cmd: &mut Command, stdin: &[u8]) -> Vec<u8> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?} must be installed for this test: {e}"));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed");
    out.stdout
}

#[test]
fn signatures_made_by_python_and_openssl_verify() {
    let ts = now();
    let mut checked = 0;
    for secret in SECRETS {
        let verifier = WebhookVerifier::new(secret).unwrap();
        for (i, body) in bodies().iter().enumerate() {
            let id = format!("a1b2c3d4-0000-4000-8000-00000000000{i}");
            let py = python_sign(secret, &id, ts, body);
            assert_eq!(
                py,
                openssl_sign(secret, &id, ts, body),
                "two references agree"
            );
            assert_eq!(verifier.sign(&id, ts, body), py, "our signer agrees");
            verifier
                .verify(&id, &ts.to_string(), &py, body)
                .unwrap_or_else(|e| panic!("{secret} body {i}: {e}"));
            checked += 1;
        }
    }
    assert_eq!(checked, 12);
}

#[test]
fn the_reference_librarys_published_vector_is_what_python_computes() {
    // From the Standard Webhooks reference library's tests (Rust, `test_sign`).
    let body = br#"{"email":"test@example.com","username":"test_user"}"#;
    let (secret, id, ts) = (
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
        1_649_367_553,
    );
    let expected = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
    assert_eq!(python_sign(secret, id, ts, body), expected);
    WebhookVerifier::new(secret)
        .unwrap()
        .verify_at(id, &ts.to_string(), expected, body, ts + 60)
        .unwrap();
}

#[test]
fn wrong_secret_tampering_and_stale_timestamps_are_refused() {
    let secret = SECRETS[1];
    let verifier = WebhookVerifier::new(secret).unwrap();
    let body = &bodies()[0];
    let id = "4f6c1b1e-7d0a-4a8f-9b59-1f2e3d4c5b6a";
    let ts = now();
    let good = python_sign(secret, id, ts, body);
    verifier.verify(id, &ts.to_string(), &good, body).unwrap();

    // Another endpoint's secret.
    let other = WebhookVerifier::new(SECRETS[0]).unwrap();
    assert_eq!(
        other.verify(id, &ts.to_string(), &good, body),
        Err(WebhookError::InvalidSignature)
    );
    // One byte of the body, the id, the timestamp.
    let mut tampered = body.clone();
    let at = tampered.iter().position(|&b| b == b'9').unwrap();
    tampered[at] = b'8';
    assert_eq!(
        verifier.verify(id, &ts.to_string(), &good, &tampered),
        Err(WebhookError::InvalidSignature)
    );
    assert_eq!(
        verifier.verify(
            "4f6c1b1e-7d0a-4a8f-9b59-1f2e3d4c5b6b",
            &ts.to_string(),
            &good,
            body
        ),
        Err(WebhookError::InvalidSignature)
    );
    assert_eq!(
        verifier.verify(id, &(ts - 1).to_string(), &good, body),
        Err(WebhookError::InvalidSignature)
    );
    // Correctly signed, but replayed after the tolerance, or from the future.
    let old = ts - 6 * 60;
    let old_sig = python_sign(secret, id, old, body);
    assert_eq!(
        verifier.verify(id, &old.to_string(), &old_sig, body),
        Err(WebhookError::TimestampTooOld)
    );
    let future = ts + 6 * 60;
    let future_sig = python_sign(secret, id, future, body);
    assert_eq!(
        verifier.verify(id, &future.to_string(), &future_sig, body),
        Err(WebhookError::TimestampInFuture)
    );
    // Within the default 5 minutes: accepted.
    let recent = ts - 4 * 60;
    verifier
        .verify(
            id,
            &recent.to_string(),
            &python_sign(secret, id, recent, body),
            body,
        )
        .unwrap();
}

#[test]
fn a_header_with_several_signatures_verifies_when_one_is_right() {
    let body = &bodies()[1];
    let id = "evt-rotation";
    let ts = now();
    let (old_secret, new_secret) = (SECRETS[0], SECRETS[1]);
    // During a rotation the sender signs with both keys (and may add
    // signatures of schemes this verifier does not know).
    let header = format!(
        "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXwVLPo3mNl8EM+m7TBAg== {} {}",
        python_sign(old_secret, id, ts, body),
        python_sign(new_secret, id, ts, body)
    );
    for secret in [old_secret, new_secret] {
        WebhookVerifier::new(secret)
            .unwrap()
            .verify(id, &ts.to_string(), &header, body)
            .unwrap();
    }
    // Neither key is this one.
    assert_eq!(
        WebhookVerifier::new(SECRETS[2])
            .unwrap()
            .verify(id, &ts.to_string(), &header, body),
        Err(WebhookError::InvalidSignature)
    );
    // The right signature under another version tag does not count.
    let right = python_sign(new_secret, id, ts, body);
    let retagged = right.replacen("v1,", "v2,", 1);
    assert_eq!(
        WebhookVerifier::new(new_secret)
            .unwrap()
            .verify(id, &ts.to_string(), &retagged, body),
        Err(WebhookError::InvalidSignature)
    );
}

#[test]
fn headers_are_looked_up_by_their_standard_names() {
    let secret = SECRETS[0];
    let body = &bodies()[2];
    let ts = now().to_string();
    let sig = python_sign(secret, "evt-1", now(), body);
    let headers = [
        (HEADER_ID, "evt-1".to_owned()),
        (HEADER_TIMESTAMP, ts),
        (HEADER_SIGNATURE, sig),
    ];
    assert_eq!(
        (HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE),
        ("webhook-id", "webhook-timestamp", "webhook-signature")
    );
    let lookup = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    };
    WebhookVerifier::new(secret)
        .unwrap()
        .verify_headers(lookup, body)
        .unwrap();
}
