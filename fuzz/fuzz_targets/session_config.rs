//! Fuzz target: any bytes as the body of `POST /v1/sessions`.
//!
//! The bytes are parsed as JSON and handed to [`SessionConfig::parse`],
//! which must refuse or accept without panicking. An accepted config must
//! make a session ([`machine::create`]) whose view, read at instants before,
//! at and long after its creation (before and after a start), shows no
//! negative number.

#![no_main]

use kairos_domain::{Command, SessionConfig, SessionId, SessionView, machine, view};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Creation instant: 2025-10-20T14:30:00Z, as the server's clock would give it.
const T0: i64 = 1_760_970_600_000;

/// Offsets from [`T0`] to read at: a clock that stepped back, creation,
/// within a cycle, past the longest bank (24 h), and the far end of time.
const OFFSETS: [i64; 6] = [-5_000, 0, 1, 61_000, 86_400_001, i64::MAX];

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(config) = SessionConfig::parse(&body) else {
        return;
    };
    let id = SessionId::from_uuid(Default::default());
    let (session, created) = machine::create(config, id, None, T0);
    assert_eq!(session.version, 1);
    assert_eq!(created.version, 1);
    for offset in OFFSETS {
        check(&view::view(&session, T0.saturating_add(offset)));
    }
    let started = machine::decide(&session, &Command::Start, None, T0)
        .expect("a new session starts")
        .state;
    assert_eq!(started.version, 2);
    for offset in OFFSETS {
        check(&view::view(&started, T0.saturating_add(offset)));
    }
});

/// Every number of a view is non-negative.
fn check(v: &SessionView) {
    assert!(v.version >= 1, "version {}", v.version);
    assert!(v.elapsed_ms >= 0, "elapsed_ms {}", v.elapsed_ms);
    if let Some(left) = v.time_remaining_ms {
        assert!(left >= 0, "time_remaining_ms {left}");
    }
    for p in &v.participants {
        assert!(
            p.total_time_ms >= 0,
            "{}: total {}",
            p.participant_id,
            p.total_time_ms
        );
        assert!(
            p.time_used_ms >= 0,
            "{}: used {}",
            p.participant_id,
            p.time_used_ms
        );
        assert!(
            p.time_remaining_ms >= 0,
            "{}: remaining {}",
            p.participant_id,
            p.time_remaining_ms
        );
    }
    for g in &v.groups {
        assert!(
            g.total_time_ms >= 0,
            "{}: total {}",
            g.group_id,
            g.total_time_ms
        );
        assert!(
            g.time_used_ms >= 0,
            "{}: used {}",
            g.group_id,
            g.time_used_ms
        );
        assert!(
            g.time_remaining_ms >= 0,
            "{}: remaining {}",
            g.group_id,
            g.time_remaining_ms
        );
    }
}
