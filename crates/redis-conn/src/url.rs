//! URL helpers shared by every place that prints or lists Redis URLs: a
//! password must never reach a log line, and every list is split the same way.

/// Splits a list of URLs separated by commas and/or whitespace, dropping empties.
///
/// ```
/// assert_eq!(redis_conn::split_urls(" redis://a:1,redis://b:2  redis://c:3,"),
///            vec!["redis://a:1", "redis://b:2", "redis://c:3"]);
/// ```
pub fn split_urls(list: &str) -> Vec<String> {
    list.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Replaces the password of a `scheme://user:password@host` URL with `***`,
/// for logs and `Debug` output.
///
/// ```
/// assert_eq!(redis_conn::redact_url("redis://u:secret@h:6379/0"), "redis://u:***@h:6379/0");
/// assert_eq!(redis_conn::redact_url("redis://:secret@h"), "redis://:***@h");
/// assert_eq!(redis_conn::redact_url("redis://h:6379"), "redis://h:6379");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    // The userinfo ends at the last '@' before the path.
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

/// Redacts every URL of a list, for `Debug` output.
pub(crate) fn redact_all(urls: &[String]) -> Vec<String> {
    urls.iter().map(|u| redact_url(u)).collect()
}
