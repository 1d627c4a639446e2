//! The SSRF guard: which webhook URLs may be stored and which addresses a
//! delivery may connect to (contract section 9). A URL is `https://`, or
//! `http://` when allowed; its host, once resolved, must not be loopback,
//! private (RFC 1918, ULA `fc00::/7`), link-local, multicast, unspecified,
//! CGNAT (`100.64.0.0/10`), reserved, or an IPv4-mapped (or NAT64) IPv6 form
//! of one of those, unless private addresses are allowed (local development
//! and tests).
//!
//! The same rules run twice: when an endpoint is created ([`check_url`]: every
//! address the host resolves to must be public), and at each send, where the
//! sender's resolver keeps only the public addresses ([`allowed`]) so that a
//! name re-pointed at an internal address after the check (DNS rebinding)
//! reaches nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use url::Url;

/// The longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;
/// A name that takes longer than this to resolve is refused at creation.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the deployment allows (`WEBHOOK_ALLOW_HTTP`, `WEBHOOK_ALLOW_PRIVATE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    /// `http://` URLs are accepted (else `https://` only).
    pub allow_http: bool,
    /// Hosts on loopback, private, link-local... addresses are accepted.
    pub allow_private: bool,
}

/// Why a URL was refused; the message is safe to show to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not an absolute URL.
    #[error("must be an absolute URL: {0}")]
    Malformed(String),
    /// Over [`MAX_URL_LEN`].
    #[error("must be at most {MAX_URL_LEN} characters")]
    TooLong,
    /// Neither `https` nor (when allowed) `http`.
    #[error("{0}")]
    Scheme(&'static str),
    /// No host, or a host that does not resolve.
    #[error("{0}")]
    Host(String),
    /// The host is (or resolves to) an address the guard refuses.
    #[error(
        "host resolves to {addr}, a {kind} address; webhooks go to public addresses only (WEBHOOK_ALLOW_PRIVATE=true allows it)"
    )]
    Forbidden {
        /// The address.
        addr: IpAddr,
        /// What kind of address it is.
        kind: &'static str,
    },
}

/// The kind of address `ip` is when the guard refuses it, `None` when it is
/// a public address a webhook may go to.
pub fn forbidden_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
}

/// Whether a delivery may connect to `ip` under `policy`.
pub fn allowed(ip: IpAddr, policy: UrlPolicy) -> bool {
    policy.allow_private || forbidden_kind(ip).is_none()
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(if ip.is_unspecified() || a == 0 {
        "unspecified"
    } else if ip.is_loopback() {
        "loopback"
    } else if ip.is_private() {
        "private"
    } else if ip.is_link_local() {
        "link-local"
    } else if ip.is_multicast() {
        "multicast"
    } else if a == 100 && (b & 0xc0) == 64 {
        "shared (CGNAT)"
    } else if a >= 240 {
        // 240.0.0.0/4, broadcast included.
        "reserved"
    } else {
        return None;
    })
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_kind(v4);
    }
    let segments = ip.segments();
    // NAT64 (64:ff9b::/96) reaches the IPv4 address in its last 32 bits.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., hi, lo] = segments;
        let v4 = Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
        return v4_kind(v4);
    }
    Some(if ip.is_unspecified() {
        "unspecified"
    } else if ip.is_loopback() {
        "loopback"
    } else if segments[0] & 0xfe00 == 0xfc00 {
        "private (ULA)"
    } else if segments[0] & 0xffc0 == 0xfe80 || segments[0] & 0xffc0 == 0xfec0 {
        "link-local"
    } else if ip.is_multicast() {
        "multicast"
    } else if segments[..6] == [0; 6] {
        // The deprecated IPv4-compatible form (::a.b.c.d).
        "reserved"
    } else {
        return None;
    })
}

/// The pure part of the check: the URL parses, its scheme is allowed, it
/// has a host, and a literal IP host is allowed. Returns the URL and its
/// port.
pub fn parse_url(raw: &str, policy: UrlPolicy) -> Result<(Url, u16), UrlError> {
    if raw.len() > MAX_URL_LEN {
        return Err(UrlError::TooLong);
    }
    let url = Url::parse(raw.trim()).map_err(|e| UrlError::Malformed(e.to_string()))?;
    match url.scheme() {
        "https" => {}
        "http" if policy.allow_http => {}
        "http" => {
            return Err(UrlError::Scheme(
                "must be https:// (WEBHOOK_ALLOW_HTTP=true allows http://)",
            ));
        }
        _ => return Err(UrlError::Scheme("must be an https:// URL")),
    }
    let port = url
        .port_or_known_default()
        .ok_or_else(|| UrlError::Host("has no port".to_owned()))?;
    match url.host() {
        None => return Err(UrlError::Host("has no host".to_owned())),
        Some(url::Host::Ipv4(ip)) => literal(IpAddr::V4(ip), policy)?,
        Some(url::Host::Ipv6(ip)) => literal(IpAddr::V6(ip), policy)?,
        Some(url::Host::Domain("")) => {
            return Err(UrlError::Host("has no host".to_owned()));
        }
        Some(url::Host::Domain(_)) => {}
    }
    Ok((url, port))
}

fn literal(ip: IpAddr, policy: UrlPolicy) -> Result<(), UrlError> {
    match forbidden_kind(ip) {
        Some(kind) if !policy.allow_private => Err(UrlError::Forbidden { addr: ip, kind }),
        _ => Ok(()),
    }
}

/// The whole check, for a URL about to be stored: [`parse_url`], then the
/// host's name resolved (within [`RESOLVE_TIMEOUT`]) and every address it
/// resolves to allowed. A name that does not resolve is refused too, so an
/// endpoint always points somewhere that was checked.
pub async fn check_url(raw: &str, policy: UrlPolicy) -> Result<Url, UrlError> {
    let (url, port) = parse_url(raw, policy)?;
    let Some(url::Host::Domain(name)) = url.host() else {
        // A literal address, already checked.
        return Ok(url);
    };
    if policy.allow_private {
        return Ok(url);
    }
    let addrs = resolve(name, port).await?;
    for addr in addrs {
        if let Some(kind) = forbidden_kind(addr.ip()) {
            return Err(UrlError::Forbidden {
                addr: addr.ip(),
                kind,
            });
        }
    }
    Ok(url)
}

/// Resolves `name` through the system resolver, within [`RESOLVE_TIMEOUT`].
pub(crate) async fn resolve(name: &str, port: u16) -> Result<Vec<SocketAddr>, UrlError> {
    let lookup = tokio::net::lookup_host((name, port));
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(_)) => return Err(UrlError::Host(format!("host {name} does not resolve"))),
        Err(_) => {
            return Err(UrlError::Host(format!(
                "host {name} did not resolve within {} s",
                RESOLVE_TIMEOUT.as_secs()
            )));
        }
    };
    if addrs.is_empty() {
        return Err(UrlError::Host(format!("host {name} has no address")));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const STRICT: UrlPolicy = UrlPolicy {
        allow_http: false,
        allow_private: false,
    };

    fn kind(s: &str) -> Option<&'static str> {
        forbidden_kind(s.parse().unwrap())
    }

    #[test]
    fn internal_addresses_are_refused_and_public_ones_pass() {
        for (ip, expected) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("224.0.0.1", "multicast"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("100.64.0.1", "shared (CGNAT)"),
            ("100.127.255.254", "shared (CGNAT)"),
            ("255.255.255.255", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fc00::1", "private (ULA)"),
            ("fd12:3456::1", "private (ULA)"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:169.254.169.254", "link-local"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("::127.0.0.1", "reserved"),
        ] {
            assert_eq!(kind(ip), Some(expected), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "192.169.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(kind(ip), None, "{ip}");
        }
    }

    #[test]
    fn allow_private_lets_everything_through() {
        let open = UrlPolicy {
            allow_http: true,
            allow_private: true,
        };
        assert!(allowed("127.0.0.1".parse().unwrap(), open));
        assert!(!allowed("127.0.0.1".parse().unwrap(), STRICT));
        assert!(allowed("8.8.8.8".parse().unwrap(), STRICT));
    }

    #[test]
    fn schemes_and_literal_hosts_are_checked_without_dns() {
        assert!(matches!(
            parse_url("http://example.com/hook", STRICT),
            Err(UrlError::Scheme(_))
        ));
        let http = UrlPolicy {
            allow_http: true,
            ..STRICT
        };
        assert_eq!(parse_url("http://example.com/hook", http).unwrap().1, 80);
        assert_eq!(
            parse_url("https://example.com:8443/h", STRICT).unwrap().1,
            8443
        );
        for bad in ["ftp://example.com/", "file:///etc/passwd", "gopher://x/"] {
            assert!(
                matches!(parse_url(bad, http), Err(UrlError::Scheme(_))),
                "{bad}"
            );
        }
        for bad in ["", "example.com/hook", "https://", "not a url"] {
            assert!(parse_url(bad, http).is_err(), "{bad}");
        }
        for internal in [
            "https://127.0.0.1/h",
            "https://[::1]:8443/h",
            "https://[::ffff:192.168.0.1]/h",
            "https://10.0.0.1/h",
            "https://0x7f000001/h",
            "https://2130706433/h",
        ] {
            assert!(
                matches!(parse_url(internal, STRICT), Err(UrlError::Forbidden { .. })),
                "{internal}"
            );
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(parse_url(&long, STRICT).unwrap_err(), UrlError::TooLong);
    }

    #[tokio::test]
    async fn a_name_is_resolved_and_every_address_checked() {
        let err = check_url("https://localhost:9/hook", STRICT)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                UrlError::Forbidden {
                    kind: "loopback",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("WEBHOOK_ALLOW_PRIVATE"));
        let open = UrlPolicy {
            allow_http: true,
            allow_private: true,
        };
        assert!(check_url("http://localhost:9/hook", open).await.is_ok());
        // `.invalid` never resolves (RFC 6761).
        let err = check_url("https://hooks.example.invalid/x", STRICT)
            .await
            .unwrap_err();
        assert!(matches!(err, UrlError::Host(_)), "{err:?}");
    }
}
