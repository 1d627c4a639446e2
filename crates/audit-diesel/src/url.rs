//! [`DatabaseUrl`]: the PostgreSQL connection string, wrapped so that the
//! password it may carry never reaches a log line, a panic message or a
//! `Debug` dump of the server's configuration.

use std::fmt;

/// What a redacted password is shown as.
const MASK: &str = "***";

/// A PostgreSQL connection string (URL form `postgres://user:pass@host/db?..`
/// or keyword form `host=.. user=.. password=..`).
///
/// `Debug` and `Display` show it with the password masked; only
/// [`DatabaseUrl::expose`] gives the real text, for the driver.
///
/// ```
/// use audit_diesel::DatabaseUrl;
/// let url = DatabaseUrl::new("postgres://kairos:s3cret@db:5432/kairos");
/// assert_eq!(url.to_string(), "postgres://kairos:***@db:5432/kairos");
/// assert!(!format!("{url:?}").contains("s3cret"));
/// assert_eq!(url.expose(), "postgres://kairos:s3cret@db:5432/kairos");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps a connection string.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The real connection string, password included. Hand it to the driver
    /// only; never format it into a message.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The connection string with every password masked.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

impl From<String> for DatabaseUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl From<&str> for DatabaseUrl {
    fn from(url: &str) -> Self {
        Self(url.to_owned())
    }
}

impl From<&DatabaseUrl> for DatabaseUrl {
    fn from(url: &DatabaseUrl) -> Self {
        url.clone()
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatabaseUrl")
            .field(&self.redacted())
            .finish()
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Masks the password of either form of connection string.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", redact_url_rest(rest)),
        None => redact_keywords(url),
    }
}

/// The part of a URL after `scheme://`: the user info's password and any
/// `password=` query parameter.
fn redact_url_rest(rest: &str) -> String {
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    // The last '@' ends the user info: a password may itself contain '@'
    // when the caller did not percent-encode it.
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:{MASK}@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                        format!("{key}={MASK}")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            let mut out = format!("{path}?{}", query.join("&"));
            if let Some(fragment) = fragment {
                out.push('#');
                out.push_str(fragment);
            }
            out
        }
        None => tail.to_owned(),
    };
    format!("{authority}{tail}")
}

/// The keyword form (`host=db password='a b' user=x`): masks the value of
/// every `password` keyword, quoted or not.
fn redact_keywords(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let (before, after_eq) = rest.split_at(eq);
        let key = before
            .trim_end()
            .rsplit(|c: char| c.is_whitespace())
            .next()
            .unwrap_or_default();
        out.push_str(before);
        out.push('=');
        let after_eq = &after_eq[1..];
        let value_start = after_eq.len() - after_eq.trim_start().len();
        out.push_str(&after_eq[..value_start]);
        let value = &after_eq[value_start..];
        let value_len = keyword_value_len(value);
        if key.eq_ignore_ascii_case("password") {
            out.push_str(MASK);
        } else {
            out.push_str(&value[..value_len]);
        }
        rest = &value[value_len..];
    }
    out.push_str(rest);
    out
}

/// Length in bytes of a keyword value at the start of `s`: up to the next
/// whitespace, or a single-quoted string with backslash escapes.
fn keyword_value_len(s: &str) -> usize {
    let mut chars = s.char_indices();
    if s.starts_with('\'') {
        chars.next();
        let mut escaped = false;
        for (i, c) in chars {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '\'' => return i + 1,
                _ => {}
            }
        }
        s.len()
    } else {
        s.find(char::is_whitespace).unwrap_or(s.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_user_info_password_is_masked() {
        assert_eq!(
            redact("postgres://u:p@ss@h:5432/db?sslmode=disable"),
            "postgres://u:***@h:5432/db?sslmode=disable"
        );
        assert_eq!(
            redact("postgresql://user@host/db"),
            "postgresql://user@host/db"
        );
        assert_eq!(redact("postgres://host"), "postgres://host");
        assert_eq!(redact("postgres://u:pw@host"), "postgres://u:***@host");
    }

    #[test]
    fn url_password_parameter_is_masked() {
        assert_eq!(
            redact("postgres://h/db?user=u&password=pw&application_name=k#x"),
            "postgres://h/db?user=u&password=***&application_name=k#x"
        );
    }

    #[test]
    fn keyword_form_password_is_masked() {
        assert_eq!(
            redact("host=db user=u password=pw dbname=k"),
            "host=db user=u password=*** dbname=k"
        );
        assert_eq!(
            redact("host=db password = 'a \\' b' dbname=k"),
            "host=db password = *** dbname=k"
        );
        assert_eq!(redact("password=pw"), "password=***");
        assert_eq!(redact("host=db"), "host=db");
    }

    #[test]
    fn debug_and_display_never_show_the_password() {
        let url = DatabaseUrl::new("postgres://kairos:hunter2@db/kairos");
        assert!(!format!("{url:?}").contains("hunter2"));
        assert!(!format!("{url}").contains("hunter2"));
        assert!(!format!("{:#?}", Some(&url)).contains("hunter2"));
    }
}
