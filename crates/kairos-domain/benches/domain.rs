//! Criterion micro-benchmarks of the domain's share of the switch path: one
//! switch transition ([`machine::decide`]) and one view computation
//! ([`view::view`]), for 2 and for 1,000 participants, plus the three calls
//! the service makes per switch together (decide, next deadline, view).
//!
//! Run: `cargo bench -p kairos-domain --bench domain` (`cargo xtask bench`
//! runs it too and puts the medians into `docs/performance.md`).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kairos_domain::{Command, Session, SessionConfig, SessionId, machine, view};

/// Epoch ms of the fixture's creation.
const T0: i64 = 1_700_000_000_000;

/// A running per-participant session with `n` participants, 5-minute banks
/// with a 2-second increment, a few switches in.
fn session(n: usize) -> Session {
    let participants: Vec<serde_json::Value> = (0..n)
        .map(|i| serde_json::json!({"participant_id": format!("player-{i:04}"), "total_time_ms": 300_000}))
        .collect();
    let config = SessionConfig::parse(&serde_json::json!({
        "sync_mode": "per_participant",
        "participants": participants,
        "increment_ms": 2000,
        "metadata": {"table": "finals", "round": 3}
    }))
    .unwrap_or_else(|e| panic!("the fixture config is valid: {e:?}"));
    let id = SessionId::from_uuid(uuid::Uuid::from_u128(0x1234));
    let (mut s, _) = machine::create(config, id, Some("host-1".into()), T0);
    let mut now = T0;
    for command in [
        Command::Start,
        Command::Switch {
            next: None,
            lag_ms: None,
        },
        Command::Switch {
            next: None,
            lag_ms: None,
        },
        Command::Switch {
            next: None,
            lag_ms: None,
        },
    ] {
        now += 1_234;
        s = machine::decide(&s, &command, None, now)
            .unwrap_or_else(|e| panic!("the fixture's commands apply: {e}"))
            .state;
    }
    s
}

fn benches(c: &mut Criterion) {
    for n in [2usize, 1000] {
        let s = session(n);
        // A second after the last switch: nothing is due, as on a normal switch.
        let now = s.updated_at_ms + 1_000;
        let switch = Command::Switch {
            next: None,
            lag_ms: None,
        };

        c.bench_with_input(BenchmarkId::new("switch_decide", n), &s, |b, s| {
            b.iter(|| machine::decide(black_box(s), black_box(&switch), None, black_box(now)));
        });
        c.bench_with_input(BenchmarkId::new("view", n), &s, |b, s| {
            b.iter(|| view::view(black_box(s), black_box(now)));
        });
        c.bench_with_input(BenchmarkId::new("switch_path", n), &s, |b, s| {
            b.iter(|| {
                let decision = machine::decide(black_box(s), &switch, None, now)
                    .unwrap_or_else(|e| panic!("the switch applies: {e}"));
                let deadline = machine::next_deadline(&decision.state);
                (deadline, view::view(&decision.state, now))
            });
        });
    }
}

criterion_group!(domain, benches);
criterion_main!(domain);
