//! The `PresenceRegistry` contract, held against both registries: Redis
//! (`RedisPresence`, on the test Redis) and memory (`MemoryPresence`).
//! Counts per user and connection, `presence_joined` only for a user's
//! first connection with no leave pending, the leave delay and a reconnect
//! inside it, leases that lapse and are swept into leaves and absences,
//! claims with leases, and concurrent joins on one user.

mod common;

use std::sync::Arc;

use adapter_memory::MemoryPresence;
use kairos_domain::{
    Absence, ParticipantId, PresenceConnection, PresenceRegistry, SessionId, StoreError,
};
use store_redis::RedisPresence;

/// The lease of the test about lapsing.
const LEASE: i64 = 1_000;
/// The lease everywhere else: longer than any test's timeline.
const LONG: i64 = 10_000_000;
const DELAY: i64 = 5_000;
const CLAIM: i64 = 2_000;

async fn registries() -> Vec<(&'static str, Arc<dyn PresenceRegistry>)> {
    let (store, config) = common::store().await;
    vec![
        (
            "redis",
            Arc::new(RedisPresence::new(store.connection(), &config.key_prefix)),
        ),
        ("memory", Arc::new(MemoryPresence::new())),
    ]
}

fn session() -> SessionId {
    SessionId::from_uuid(uuid::Uuid::new_v4())
}

fn pid(s: &str) -> ParticipantId {
    s.parse().expect("a participant id")
}

fn conn(
    session_id: SessionId,
    id: &str,
    sub: &str,
    participant: Option<&str>,
    since_ms: i64,
) -> PresenceConnection {
    PresenceConnection {
        session_id,
        connection_id: id.into(),
        sub: sub.into(),
        participant_id: participant.map(pid),
        since_ms,
    }
}

async fn join(
    r: &dyn PresenceRegistry,
    c: &PresenceConnection,
    now: i64,
) -> Result<bool, StoreError> {
    r.join(c, now, LONG).await
}

/// (sub, connections, since) of each user, and the total.
async fn counts(
    r: &dyn PresenceRegistry,
    s: SessionId,
    now: i64,
) -> (u32, Vec<(String, u32, i64)>) {
    let snap = r.snapshot(s, now).await.expect("a snapshot");
    let users = snap
        .users
        .iter()
        .map(|u| (u.sub.clone(), u.connections, u.since_ms))
        .collect();
    (snap.connections, users)
}

#[tokio::test]
async fn counts_users_and_connections_and_announces_only_the_first() {
    for (name, r) in registries().await {
        let r = r.as_ref();
        let s = session();
        let other = session();
        assert_eq!(
            join(r, &conn(s, "a1", "ann", Some("white"), 10), 10).await,
            Ok(true),
            "{name}"
        );
        assert_eq!(
            join(r, &conn(s, "a2", "ann", None, 20), 20).await,
            Ok(false),
            "{name}"
        );
        assert_eq!(
            join(r, &conn(s, "b1", "bob", None, 30), 30).await,
            Ok(true),
            "{name}"
        );
        // Another session counts apart; a retried join is not another one.
        assert_eq!(
            join(r, &conn(other, "x", "ann", None, 30), 30).await,
            Ok(true),
            "{name}"
        );
        assert_eq!(
            join(r, &conn(other, "x", "ann", None, 30), 30).await,
            Ok(false),
            "{name}"
        );
        assert_eq!(
            counts(r, s, 40).await,
            (3, vec![("ann".into(), 2, 10), ("bob".into(), 1, 30)]),
            "{name}"
        );
        let snap = r.snapshot(s, 40).await.expect("a snapshot");
        assert_eq!(snap.users[0].participant_id, Some(pid("white")), "{name}");
        assert_eq!(counts(r, other, 40).await.0, 1, "{name}");

        assert_eq!(
            r.leave(s, "a1", 50, DELAY).await,
            Ok(false),
            "{name}: ann stays"
        );
        assert_eq!(
            r.leave(s, "a1", 50, DELAY).await,
            Ok(false),
            "{name}: unknown now"
        );
        assert_eq!(
            r.leave(s, "a2", 60, DELAY).await,
            Ok(true),
            "{name}: ann's last"
        );
        assert_eq!(
            counts(r, s, 70).await,
            (1, vec![("bob".into(), 1, 30)]),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_leave_is_due_after_the_delay_and_a_reconnect_inside_it_cancels_it() {
    for (name, r) in registries().await {
        let r = r.as_ref();
        let s = session();
        assert_eq!(
            join(r, &conn(s, "a1", "ann", Some("white"), 0), 0).await,
            Ok(true)
        );
        assert_eq!(r.leave(s, "a1", 100, DELAY).await, Ok(true));
        let early = r.claim_due_leaves(100 + DELAY - 1, 10, CLAIM, DELAY).await;
        assert_eq!(early, Ok(vec![]), "{name}: not before the delay");
        let due = r
            .claim_due_leaves(100 + DELAY, 10, CLAIM, DELAY)
            .await
            .expect("claims");
        assert_eq!(due.len(), 1, "{name}");
        assert_eq!(
            (
                due[0].session_id,
                due[0].sub.as_str(),
                due[0].left_at_ms,
                due[0].due_ms
            ),
            (s, "ann", 100, 100 + DELAY),
            "{name}"
        );
        assert_eq!(due[0].participant_id, Some(pid("white")), "{name}");
        // Claimed: hidden for the lease, then handed out again.
        let t = 100 + DELAY;
        assert_eq!(
            r.claim_due_leaves(t + CLAIM - 1, 10, CLAIM, DELAY).await,
            Ok(vec![])
        );
        let again = r
            .claim_due_leaves(t + CLAIM, 10, CLAIM, DELAY)
            .await
            .expect("claims");
        assert_eq!(again, due, "{name}: a lost claim comes back");
        r.finish_leave(&again[0]).await.expect("finishes");
        assert_eq!(
            r.claim_due_leaves(t + 10 * CLAIM, 10, CLAIM, DELAY).await,
            Ok(vec![])
        );

        // A reconnect inside the delay: no joined, and no leave later.
        assert_eq!(
            join(r, &conn(s, "b1", "bob", None, 0), 20_000).await,
            Ok(true)
        );
        assert_eq!(r.leave(s, "b1", 20_100, DELAY).await, Ok(true));
        assert_eq!(
            join(r, &conn(s, "b2", "bob", None, 0), 20_200).await,
            Ok(false),
            "{name}"
        );
        assert_eq!(
            r.claim_due_leaves(30_000 + DELAY, 10, CLAIM, DELAY).await,
            Ok(vec![]),
            "{name}: the reconnect cancelled the leave"
        );
        // After the delay a reconnect is a new join.
        assert_eq!(r.leave(s, "b2", 40_000, DELAY).await, Ok(true));
        let left = r
            .claim_due_leaves(40_000 + DELAY, 10, CLAIM, DELAY)
            .await
            .expect("claims");
        assert_eq!(left.len(), 1);
        r.finish_leave(&left[0]).await.expect("finishes");
        assert_eq!(
            join(r, &conn(s, "b3", "bob", None, 0), 50_000).await,
            Ok(true),
            "{name}"
        );
    }
}

#[tokio::test]
async fn finishing_a_claimed_leave_keeps_a_newer_one() {
    for (name, r) in registries().await {
        let r = r.as_ref();
        let s = session();
        join(r, &conn(s, "a1", "ann", None, 0), 0)
            .await
            .expect("joins");
        r.leave(s, "a1", 10, DELAY).await.expect("leaves");
        let first = r
            .claim_due_leaves(10 + DELAY, 10, CLAIM, DELAY)
            .await
            .expect("claims");
        assert_eq!(first.len(), 1);
        // Back and gone again while the first leave was being sent.
        assert_eq!(
            join(r, &conn(s, "a2", "ann", None, 0), 20 + DELAY).await,
            Ok(false)
        );
        assert_eq!(r.leave(s, "a2", 30 + DELAY, DELAY).await, Ok(true));
        r.finish_leave(&first[0]).await.expect("finishes");
        let second = r
            .claim_due_leaves(30 + 2 * DELAY, 10, CLAIM, DELAY)
            .await
            .expect("claims");
        assert_eq!(second.len(), 1, "{name}");
        assert_eq!(second[0].left_at_ms, 30 + DELAY, "{name}");
    }
}

#[tokio::test]
async fn a_lapsed_lease_leaves_the_counts_and_is_swept_into_a_leave_and_an_absence() {
    for (name, r) in registries().await {
        let r = r.as_ref();
        let s = session();
        r.join(&conn(s, "kept", "ann", None, 0), 0, LEASE)
            .await
            .expect("joins");
        r.join(&conn(s, "dead", "bob", Some("black"), 0), 0, LEASE)
            .await
            .expect("joins");
        // The living instance renews its connection; the dead one does not.
        r.renew(&[(s, "kept".into())], 900, LEASE)
            .await
            .expect("renews");
        assert_eq!(counts(r, s, 999).await.0, 2, "{name}");
        assert_eq!(
            counts(r, s, 1_000).await,
            (1, vec![("ann".into(), 1, 0)]),
            "{name}"
        );
        // A renewal never brings back a lapsed entry.
        r.renew(&[(s, "dead".into())], 1_200, LEASE)
            .await
            .expect("renews");
        assert_eq!(counts(r, s, 1_300).await.0, 1, "{name}");

        r.renew(&[(s, "kept".into())], 1_300, LONG)
            .await
            .expect("renews");
        // The sweep: bob left as of his lease's end.
        let none = r
            .claim_due_leaves(1_300, 10, CLAIM, DELAY)
            .await
            .expect("sweeps");
        assert_eq!(none, vec![], "{name}: swept, not yet due");
        let due = r
            .claim_due_leaves(1_000 + DELAY, 10, CLAIM, DELAY)
            .await
            .expect("claims");
        assert_eq!(due.len(), 1, "{name}");
        assert_eq!(
            (due[0].sub.as_str(), due[0].left_at_ms),
            ("bob", 1_000),
            "{name}"
        );
        let absent = r
            .claim_due_absences(1_300, 10, CLAIM)
            .await
            .expect("claims");
        assert_eq!(
            absent,
            vec![Absence {
                session_id: s,
                participant_id: pid("black"),
                absent_since_ms: 1_000
            }],
            "{name}"
        );
        // Bob back inside the delay: his swept leave is cancelled, no join.
        assert_eq!(
            join(r, &conn(s, "back", "bob", None, 0), 1_300).await,
            Ok(false),
            "{name}"
        );
        assert_eq!(
            r.claim_due_leaves(20_000, 10, CLAIM, DELAY).await,
            Ok(vec![]),
            "{name}"
        );
        assert_eq!(
            r.leave(s, "dead", 1_400, DELAY).await,
            Ok(false),
            "{name}: gone already"
        );
    }
}

#[tokio::test]
async fn absences_are_claimed_rescheduled_and_ended_by_a_return() {
    for (name, r) in registries().await {
        let r = r.as_ref();
        let s = session();
        // Only a participant that had connections and lost them all.
        join(r, &conn(s, "w1", "ann", Some("white"), 0), 0)
            .await
            .expect("joins");
        join(r, &conn(s, "w2", "ann2", Some("white"), 0), 0)
            .await
            .expect("joins");
        assert_eq!(
            r.claim_due_absences(0, 10, CLAIM).await,
            Ok(vec![]),
            "{name}"
        );
        r.leave(s, "w1", 100, DELAY).await.expect("leaves");
        assert_eq!(
            r.claim_due_absences(100, 10, CLAIM).await,
            Ok(vec![]),
            "{name}: w2 stays"
        );
        r.leave(s, "w2", 200, DELAY).await.expect("leaves");
        let claimed = r.claim_due_absences(200, 10, CLAIM).await.expect("claims");
        assert_eq!(claimed.len(), 1, "{name}");
        assert_eq!(claimed[0].absent_since_ms, 200);
        assert_eq!(
            r.claim_due_absences(200 + CLAIM - 1, 10, CLAIM).await,
            Ok(vec![])
        );
        r.reschedule_absence(&claimed[0], Some(10_000))
            .await
            .expect("reschedules");
        assert_eq!(
            r.claim_due_absences(9_999, 10, CLAIM).await,
            Ok(vec![]),
            "{name}"
        );
        assert_eq!(
            r.claim_due_absences(10_000, 10, CLAIM).await,
            Ok(claimed.clone())
        );

        // A return ends it; a stale reschedule does not bring it back.
        join(r, &conn(s, "w3", "ann", Some("white"), 0), 10_100)
            .await
            .expect("joins");
        r.reschedule_absence(&claimed[0], Some(10_200))
            .await
            .expect("no-op");
        assert_eq!(
            r.claim_due_absences(50_000, 10, CLAIM).await,
            Ok(vec![]),
            "{name}"
        );
        // Gone again: a newer absence, which the old one cannot touch.
        r.leave(s, "w3", 11_000, DELAY).await.expect("leaves");
        r.reschedule_absence(&claimed[0], None)
            .await
            .expect("no-op");
        let newer = r
            .claim_due_absences(11_000, 10, CLAIM)
            .await
            .expect("claims");
        assert_eq!(newer.len(), 1, "{name}");
        assert_eq!(newer[0].absent_since_ms, 11_000, "{name}");
        r.reschedule_absence(&newer[0], None).await.expect("drops");
        assert_eq!(
            r.claim_due_absences(90_000, 10, CLAIM).await,
            Ok(vec![]),
            "{name}"
        );
    }
}

#[tokio::test]
async fn concurrent_joins_of_one_user_announce_it_once() {
    for (name, r) in registries().await {
        let s = session();
        let joins = (0..24).map(|i| {
            let r = r.clone();
            tokio::spawn(async move {
                r.join(&conn(s, &format!("c{i}"), "ann", None, 0), 0, LEASE)
                    .await
            })
        });
        let mut firsts = 0;
        for j in joins {
            if j.await.expect("joined").expect("no error") {
                firsts += 1;
            }
        }
        assert_eq!(firsts, 1, "{name}");
        assert_eq!(
            counts(r.as_ref(), s, 1).await,
            (24, vec![("ann".into(), 24, 0)]),
            "{name}"
        );
    }
}

/// A renewal goes to Redis in script calls of at most 100 connections (one
/// script holds Redis, and every commit behind it, for its whole length),
/// and renews every connection: none lapses at its first lease's end.
#[tokio::test]
async fn a_renewal_is_a_call_per_100_connections_and_renews_them_all() {
    let (server, store) = common::own_store("renew:").await;
    let r = RedisPresence::new(store.connection(), "renew:");
    let s = session();
    let mut held = Vec::new();
    for i in 0..250 {
        let id = format!("c{i}");
        r.join(&conn(s, &id, &format!("u{i}"), None, 0), 0, LEASE)
            .await
            .expect("joins");
        held.push((s, id));
    }
    // Once, so that Redis has the script (a first call may be sent twice:
    // `EVALSHA`, then again after loading it).
    r.renew(&held[..1], 800, LEASE).await.expect("renews");
    let mut probe = common::raw(&server.url()).await;
    let before = common::script_calls(&mut probe).await;
    r.renew(&held, 900, LEASE).await.expect("renews");
    assert_eq!(
        common::script_calls(&mut probe).await - before,
        3,
        "250 connections renewed in calls of 100, 100 and 50"
    );
    assert_eq!(counts(&r, s, 1_500).await.0, 250);
}
