//! Measures the session encodings on the switch path (encode for the commit,
//! decode for the next load) to choose `StateCodec::DEFAULT`.
//!
//! Run: `cargo bench -p store-redis --bench encoding`. Plain `std::time`,
//! no harness: the question is which codec is faster and by roughly how
//! much, not a statistically careful figure.

// Printing the figures is this program's whole job.
#![allow(clippy::print_stdout)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use kairos_domain::{Command, Session, SessionConfig, SessionId, machine};
use store_redis::StateCodec;

/// A running per-participant session with `n` participants, a few cycles in.
fn session(n: usize) -> Result<Session, String> {
    let participants: Vec<serde_json::Value> = (0..n)
        .map(|i| serde_json::json!({"participant_id": format!("player-{i:04}"), "total_time_ms": 300_000}))
        .collect();
    let config = SessionConfig::parse(&serde_json::json!({
        "sync_mode": "per_participant",
        "participants": participants,
        "increment_ms": 2000,
        "metadata": {"table": "finals", "round": 3}
    }))
    .map_err(|e| format!("{e:?}"))?;
    let id = SessionId::from_uuid(uuid::Uuid::from_u128(0x1234));
    let (mut s, _) = machine::create(config, id, Some("host-1".into()), 1_700_000_000_000);
    let mut now = 1_700_000_000_000;
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
            .map_err(|e| e.to_string())?
            .state;
    }
    Ok(s)
}

/// Average time of one encode and one decode over enough rounds to take ~0.5 s.
fn measure(codec: StateCodec, s: &Session) -> Result<(Duration, Duration, usize), String> {
    let bytes = codec.encode(s).map_err(|e| e.to_string())?;
    // Warm up and size the run.
    let mut rounds = 1u32;
    loop {
        let start = Instant::now();
        for _ in 0..rounds {
            let b = codec.encode(black_box(s)).map_err(|e| e.to_string())?;
            black_box(StateCodec::decode(&b).map_err(|e| e.to_string())?);
        }
        if start.elapsed() > Duration::from_millis(100) {
            break;
        }
        rounds *= 2;
    }
    let rounds = rounds * 5;
    let start = Instant::now();
    for _ in 0..rounds {
        black_box(codec.encode(black_box(s)).map_err(|e| e.to_string())?);
    }
    let encode = start.elapsed() / rounds;
    let start = Instant::now();
    for _ in 0..rounds {
        black_box(StateCodec::decode(black_box(&bytes)).map_err(|e| e.to_string())?);
    }
    let decode = start.elapsed() / rounds;
    Ok((encode, decode, bytes.len()))
}

fn main() -> Result<(), String> {
    println!(
        "{:<14} {:>13} {:>10} {:>10} {:>10} {:>9}",
        "codec", "participants", "encode", "decode", "total", "bytes"
    );
    for n in [2, 1000] {
        let s = session(n)?;
        for codec in [StateCodec::Json, StateCodec::MessagePack] {
            let (encode, decode, size) = measure(codec, &s)?;
            println!(
                "{:<14} {:>13} {:>10.2?} {:>10.2?} {:>10.2?} {:>9}",
                format!("{codec:?}"),
                n,
                encode,
                decode,
                encode + decode,
                size
            );
        }
    }
    Ok(())
}
