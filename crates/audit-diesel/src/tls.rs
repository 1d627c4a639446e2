//! Connections to PostgreSQL with the TLS that the URL's `sslmode` asks
//! for, in libpq's words:
//!
//! | `sslmode` | what happens |
//! | --- | --- |
//! | `disable` | plain text |
//! | `prefer` (the default) | TLS when the server offers it, else plain text; the certificate is not verified |
//! | `require` | TLS or no connection; the certificate is not verified |
//! | `verify-ca`, `verify-full` | TLS, the certificate verified for the host name against the public web roots, or against the PEM file `sslrootcert` names |
//!
//! As in libpq, `prefer` and `require` protect against eavesdropping, not
//! against someone who can answer in the server's place; the `verify-`
//! modes protect against both. (`verify-ca` verifies the host name too:
//! rustls always does.) TLS is rustls with the ring provider.

use std::sync::Arc;

use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// How a URL asks to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tls {
    /// `sslmode=disable`.
    Off,
    /// `prefer` or `require`: encrypted, not verified.
    Unverified,
    /// `verify-ca` or `verify-full`, with the `sslrootcert` file if any.
    Verified { root_cert: Option<String> },
}

/// Splits `url` into what tokio-postgres understands (the `sslmode` it
/// knows, no `sslrootcert`) and the TLS to use.
pub(crate) fn parse(url: &str) -> Result<(String, Tls), String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut mode = "prefer".to_owned();
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", value)) => mode = value.to_owned(),
            Some(("sslrootcert", value)) => root_cert = Some(value.to_owned()),
            _ => kept.push(pair),
        }
    }
    let (tls, wire) = match mode.as_str() {
        "disable" => (Tls::Off, "sslmode=disable"),
        "allow" | "prefer" => (Tls::Unverified, "sslmode=prefer"),
        "require" => (Tls::Unverified, "sslmode=require"),
        "verify-ca" | "verify-full" => (Tls::Verified { root_cert }, "sslmode=require"),
        other => {
            return Err(format!(
                "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            ));
        }
    };
    kept.push(wire);
    Ok((format!("{base}?{}", kept.join("&")), tls))
}

/// Opens one connection to `url` with the TLS its `sslmode` asks for.
pub(crate) async fn connect(url: &str) -> Result<AsyncPgConnection, ConnectionError> {
    let (url, tls) = parse(url).map_err(ConnectionError::InvalidConnectionUrl)?;
    let bad = |e: tokio_postgres::Error| ConnectionError::BadConnection(chain(&e));
    match tls {
        Tls::Off => {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(bad)?;
            AsyncPgConnection::try_from_client_and_connection(client, conn).await
        }
        tls => {
            let config = client_config(&tls).map_err(ConnectionError::BadConnection)?;
            let connector = tokio_postgres_rustls::MakeRustlsConnect::new(config);
            let (client, conn) = tokio_postgres::connect(&url, connector)
                .await
                .map_err(bad)?;
            AsyncPgConnection::try_from_client_and_connection(client, conn).await
        }
    }
}

/// An error with its causes: tokio-postgres says "error performing TLS
/// handshake" and leaves the why ("invalid peer certificate: UnknownIssuer")
/// to its source.
fn chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn client_config(tls: &Tls) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    Ok(match tls {
        Tls::Verified { root_cert } => {
            let mut roots = rustls::RootCertStore::empty();
            match root_cert {
                Some(path) => {
                    let pem = std::fs::read(path)
                        .map_err(|e| format!("cannot read sslrootcert {path}: {e}"))?;
                    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
                        let cert: CertificateDer<'static> =
                            cert.map_err(|e| format!("sslrootcert {path}: {e}"))?;
                        roots
                            .add(cert)
                            .map_err(|e| format!("sslrootcert {path}: {e}"))?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth(),
    })
}

/// Accepts any certificate (libpq's `prefer` and `require`), while still
/// checking that the server holds the key of the certificate it showed.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_maps_to_what_tokio_postgres_knows() {
        let p = |u: &str| parse(u).unwrap();
        assert_eq!(
            p("postgres://h/db"),
            ("postgres://h/db?sslmode=prefer".into(), Tls::Unverified)
        );
        assert_eq!(
            p("postgres://h/db?sslmode=disable&application_name=k"),
            (
                "postgres://h/db?application_name=k&sslmode=disable".into(),
                Tls::Off
            )
        );
        assert_eq!(p("postgres://h/db?sslmode=require").1, Tls::Unverified);
        assert_eq!(
            p("postgres://h/db?sslmode=verify-full&sslrootcert=/ca.pem"),
            (
                "postgres://h/db?sslmode=require".into(),
                Tls::Verified {
                    root_cert: Some("/ca.pem".into())
                }
            )
        );
        assert_eq!(
            p("postgres://h/db?sslmode=verify-ca").1,
            Tls::Verified { root_cert: None }
        );
        assert!(
            parse("postgres://h/db?sslmode=maybe")
                .unwrap_err()
                .contains("sslmode=maybe")
        );
    }
}
