//! The documentation against the code: `docs/protocol.md` is the project's
//! own protocol reference for client authors, and these tests keep the parts
//! a machine can compare equal to what the server does (error codes and their
//! statuses, WebSocket message types, close codes, event types), so that a
//! code added, renamed or dropped fails `cargo test` until the reference says
//! so too. They also keep the documents self-contained: none points at a
//! file outside the repository.
//!
//! The code is read as text, not compiled against, so that moving a
//! definition to another module of the same crate does not break the test;
//! each extraction fails loudly when it finds nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};

/// The reference the tests check.
const PROTOCOL: &str = "docs/protocol.md";

fn root() -> PathBuf {
    // The tests run with CARGO_MANIFEST_DIR = xtask/, one level below the root.
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

fn read(rel: &str) -> Result<String> {
    let path = root().join(rel);
    fs::read_to_string(&path).with_context(|| format!("could not read {}", path.display()))
}

/// Every `.rs` file under `rel`, with its text, in path order.
fn sources(rel: &str) -> Result<Vec<(PathBuf, String)>> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) -> Result<()> {
        let mut entries: Vec<PathBuf> = fs::read_dir(dir)
            .with_context(|| format!("could not list {}", dir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out)?;
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = fs::read_to_string(&path)
                    .with_context(|| format!("could not read {}", path.display()))?;
                out.push((path, text));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(&root().join(rel), &mut out)?;
    Ok(out)
}

/// The one source file under `rel` that contains `needle`.
fn defining(rel: &str, needle: &str) -> Result<String> {
    let mut found: Vec<String> = sources(rel)?
        .into_iter()
        .filter(|(_, text)| text.contains(needle))
        .map(|(_, text)| text)
        .collect();
    ensure!(
        found.len() == 1,
        "expected exactly one file under {rel} containing `{needle}`, found {}",
        found.len()
    );
    Ok(found.remove(0))
}

/// The body of the first `{ ... }` block after `start` in `text`.
fn block_after<'a>(text: &'a str, start: &str) -> Result<&'a str> {
    let at = text
        .find(start)
        .with_context(|| format!("`{start}` not found"))?;
    let open = at + text[at..].find('{').context("no opening brace")?;
    let mut depth = 0usize;
    for (i, c) in text[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(&text[open + 1..open + i]);
                }
            }
            _ => {}
        }
    }
    bail!("unbalanced braces after `{start}`")
}

/// Whether `s` looks like a wire constant: `A_B`, upper case.
fn is_wire_name(s: &str) -> bool {
    s.len() >= 3
        && s.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        && s.starts_with(|c: char| c.is_ascii_uppercase())
}

/// The string literals of `text` with what precedes and follows each
/// (on the same line), as `(before, literal, after)`.
fn literals(text: &str) -> Vec<(&str, &str, &str)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut rest = line;
        let mut offset = 0;
        while let Some(open) = rest.find('"') {
            let Some(len) = rest[open + 1..].find('"') else {
                break;
            };
            let start = offset + open;
            let end = start + 1 + len;
            out.push((&line[..start], &line[start + 1..end], &line[end + 1..]));
            offset = end + 1;
            rest = &line[offset..];
        }
    }
    out
}

/// The backticked first cells (or, with `column` 1, second cells) of the
/// table rows under the heading `heading` of `doc`, up to the next heading.
fn table_cells(doc: &str, heading: &str, column: usize) -> Result<Vec<String>> {
    let mut lines = doc.lines().skip_while(|l| l.trim() != heading);
    ensure!(
        lines.next().is_some(),
        "{PROTOCOL} has no heading `{heading}`"
    );
    let mut cells = Vec::new();
    for line in lines.take_while(|l| !l.starts_with('#')) {
        let Some(row) = line.trim().strip_prefix('|') else {
            continue;
        };
        let Some(cell) = row.split('|').nth(column) else {
            continue;
        };
        let cell = cell.trim();
        if cell.starts_with("---") {
            continue;
        }
        cells.push(cell.trim_matches('`').to_owned());
    }
    ensure!(
        !cells.is_empty(),
        "no table under `{heading}` in {PROTOCOL}"
    );
    // The header row.
    cells.remove(0);
    Ok(cells)
}

fn compare(what: &str, in_code: &BTreeSet<String>, in_doc: &BTreeSet<String>) -> Result<()> {
    let undocumented: Vec<&String> = in_code.difference(in_doc).collect();
    let stale: Vec<&String> = in_doc.difference(in_code).collect();
    ensure!(
        undocumented.is_empty() && stale.is_empty(),
        "{what}: in the code but not in {PROTOCOL}: {undocumented:?}; \
         in {PROTOCOL} but not in the code: {stale:?}"
    );
    Ok(())
}

/// `Self::Variant => "WIRE"` pairs of the error code enum, and each variant's
/// HTTP status from its `status()` match.
fn error_codes() -> Result<BTreeMap<String, u16>> {
    let text = defining("crates/http-actix/src", "pub enum Code")?;
    let variants: Vec<&str> = block_after(&text, "pub enum Code")?
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("//") && !l.starts_with('#') && !l.is_empty())
        .map(|l| l.trim_end_matches(','))
        .collect();
    let as_str = block_after(&text, "fn as_str")?;
    let mut wire = BTreeMap::new();
    for (before, literal, _) in literals(as_str) {
        if let Some(variant) = before.trim().strip_suffix("=>").map(str::trim) {
            let variant = variant.trim_start_matches("Self::");
            wire.insert(variant.to_owned(), literal.to_owned());
        }
    }
    ensure!(
        wire.len() == variants.len(),
        "Code has {} variants but as_str maps {}: {variants:?}",
        variants.len(),
        wire.len()
    );

    // `Self::A | Self::B => StatusCode::NAME,`: each name applies to the
    // variants listed since the previous one.
    let status_names: BTreeMap<&str, u16> = [
        ("BAD_REQUEST", 400),
        ("UNAUTHORIZED", 401),
        ("FORBIDDEN", 403),
        ("NOT_FOUND", 404),
        ("METHOD_NOT_ALLOWED", 405),
        ("CONFLICT", 409),
        ("PAYLOAD_TOO_LARGE", 413),
        ("TOO_MANY_REQUESTS", 429),
        ("INTERNAL_SERVER_ERROR", 500),
        ("SERVICE_UNAVAILABLE", 503),
    ]
    .into();
    let status_fn = block_after(&text, "fn status(")?;
    let mut statuses = BTreeMap::new();
    let mut pending = Vec::new();
    for token in status_fn.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')) {
        if let Some(variant) = token.strip_prefix("Self::") {
            pending.push(variant.to_owned());
        } else if let Some(name) = token.strip_prefix("StatusCode::") {
            let status = *status_names
                .get(name)
                .with_context(|| format!("unknown StatusCode::{name}: add it to the table"))?;
            for variant in pending.drain(..) {
                let code = wire.get(&variant).with_context(|| {
                    format!("status() maps Self::{variant}, which as_str lacks")
                })?;
                statuses.insert(code.clone(), status);
            }
        }
    }
    ensure!(
        statuses.len() == wire.len(),
        "status() maps {} codes, as_str {}",
        statuses.len(),
        wire.len()
    );
    Ok(statuses)
}

#[test]
fn every_error_code_is_documented_with_its_status() -> Result<()> {
    let doc = read(PROTOCOL)?;
    let in_code = error_codes()?;
    let statuses = table_cells(&doc, "### Errors", 0)?;
    let codes = table_cells(&doc, "### Errors", 1)?;
    let documented: BTreeMap<String, u16> = codes
        .into_iter()
        .zip(statuses)
        .map(|(code, status)| Ok((code, status.parse::<u16>()?)))
        .collect::<Result<_>>()?;
    compare(
        "error codes",
        &in_code.keys().cloned().collect(),
        &documented.keys().cloned().collect(),
    )?;
    for (code, status) in &in_code {
        ensure!(
            documented.get(code) == Some(status),
            "{code} is {status} in the code but {:?} in {PROTOCOL}",
            documented.get(code)
        );
    }
    Ok(())
}

/// The message types the WebSocket code sends (constants and `kind:` fields
/// of the encoders, serde renames) and accepts (the parser's match arms).
fn message_types() -> Result<(BTreeSet<String>, BTreeSet<String>)> {
    let mut sent = BTreeSet::new();
    let mut accepted = BTreeSet::new();
    for (_, text) in sources("crates/http-actix/src")? {
        for (before, literal, after) in literals(&text) {
            if !is_wire_name(literal) {
                continue;
            }
            let before = before.trim_end();
            let after = after.trim_start();
            if before.ends_with("kind:")
                || before.ends_with("rename =")
                || (before.trim_start().contains("const ") && before.ends_with("&str ="))
            {
                sent.insert(literal.to_owned());
            } else if after.starts_with("=>") || after.starts_with('|') {
                accepted.insert(literal.to_owned());
            }
        }
    }
    ensure!(
        !sent.is_empty() && !accepted.is_empty(),
        "found no WebSocket message types in crates/http-actix/src \
         (sent {sent:?}, accepted {accepted:?}): teach message_types() the new layout"
    );
    Ok((sent, accepted))
}

#[test]
fn every_websocket_message_type_is_documented() -> Result<()> {
    let doc = read(PROTOCOL)?;
    let (sent, accepted) = message_types()?;
    let server = table_cells(&doc, "### Server to client", 0)?;
    let client = table_cells(&doc, "### Client to server", 0)?;
    compare(
        "server-to-client message types",
        &sent,
        &server.into_iter().collect(),
    )?;
    compare(
        "client-to-server message types",
        &accepted,
        &client.into_iter().collect(),
    )
}

#[test]
fn every_close_code_is_documented() -> Result<()> {
    // actix-ws's names (RFC 6455, section 7.4.1).
    let names: BTreeMap<&str, u16> = [
        ("Normal", 1000),
        ("Away", 1001),
        ("Protocol", 1002),
        ("Unsupported", 1003),
        ("Abnormal", 1006),
        ("Invalid", 1007),
        ("Policy", 1008),
        ("Size", 1009),
        ("Extension", 1010),
        ("Error", 1011),
        ("Restart", 1012),
        ("Again", 1013),
    ]
    .into();
    let mut in_code = BTreeSet::new();
    for (path, text) in sources("crates/http-actix/src")? {
        for piece in text.split("CloseCode::").skip(1) {
            let name: String = piece
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            if name == "from" {
                continue;
            }
            let code = names
                .get(name.as_str())
                .with_context(|| format!("CloseCode::{name} in {}", path.display()))?;
            in_code.insert(code.to_string());
        }
        // Application codes: `const CLOSE_...: u16 = 4404;`.
        for line in text.lines().filter(|l| l.contains("const CLOSE_")) {
            if let Some(value) = line.split("u16 =").nth(1) {
                in_code.insert(value.trim().trim_end_matches(';').trim().to_owned());
            }
        }
    }
    ensure!(in_code.len() > 3, "found few close codes: {in_code:?}");
    let doc = read(PROTOCOL)?;
    let documented = table_cells(&doc, "### Close codes", 0)?;
    compare("close codes", &in_code, &documented.into_iter().collect())
}

#[test]
fn every_event_type_is_documented() -> Result<()> {
    let text = defining("crates/kairos-domain/src", "pub enum EventType")?;
    let as_str = block_after(&text, "impl EventType")?;
    let in_code: BTreeSet<String> = literals(as_str)
        .into_iter()
        .filter(|(before, literal, _)| {
            before.trim_end().ends_with("=>") && literal.contains('_') && !literal.contains(' ')
        })
        .map(|(_, literal, _)| literal.to_owned())
        .collect();
    ensure!(in_code.len() > 5, "found few event types: {in_code:?}");
    let doc = read(PROTOCOL)?;
    let documented = table_cells(&doc, "## Events", 0)?;
    compare("event types", &in_code, &documented.into_iter().collect())
}

/// `grep -rn "shared/" docs README.md` finds nothing: a reader of the
/// repository has no `shared/` folder beside it.
#[test]
fn documents_point_at_nothing_outside_the_repository() -> Result<()> {
    let mut docs = vec![root().join("README.md")];
    for entry in fs::read_dir(root().join("docs"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(path);
        }
    }
    let mut offenders = Vec::new();
    for path in docs {
        let rel = path.strip_prefix(root())?.to_string_lossy().into_owned();
        let text = fs::read_to_string(&path)?;
        for (n, line) in text.lines().enumerate() {
            if line.contains("shared/") {
                offenders.push(format!("{rel}:{}: {line}", n + 1));
            }
        }
    }
    ensure!(
        offenders.is_empty(),
        "documents point outside the repository:\n{}",
        offenders.join("\n")
    );
    Ok(())
}

#[test]
fn the_reference_is_linked_from_the_readme_and_the_api_guide() -> Result<()> {
    for doc in ["README.md", "docs/api.md"] {
        ensure!(
            read(doc)?.contains("protocol.md"),
            "{doc} does not link the protocol reference"
        );
    }
    Ok(())
}
