//! `RedisStore` as an `Outbox` against a real Redis: read, lease, reclaim
//! after idle, acknowledge, backlog, reads between full sweeps, and the
//! outbox switched off.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{bumped, chess, outbox_keys, raw, redis_now_ms, redis_url, script_calls, store};
use kairos_domain::{Command, Commit, Event, Outbox, SessionStore, machine};
use redis::AsyncCommands;
use store_redis::RedisStore;
use store_redis::outbox::CALL_ENTRIES;

/// Creates `n` sessions and starts each: 2 events per session, spread over partitions.
async fn write_events(store: &RedisStore, n: usize) -> Vec<Event> {
    let mut events = Vec::new();
    for _ in 0..n {
        let (session, created) = chess(60_000, 1_000);
        store
            .create(&session, std::slice::from_ref(&created))
            .await
            .expect("created");
        let decision = machine::decide(&session, &Command::Start, None, 2_000).expect("starts");
        events.push(created);
        events.extend(decision.events.iter().cloned());
        store
            .commit(&Commit {
                rate: None,
                deadline: machine::next_deadline(&decision.state),
                expected_version: session.version,
                events: decision.events,
                state: decision.state,
                publish: Vec::new(),
            })
            .await
            .expect("commits");
    }
    events
}

fn ids_of(events: impl IntoIterator<Item = Event>) -> BTreeSet<uuid::Uuid> {
    events.into_iter().map(|e| e.event_id).collect()
}

#[tokio::test]
async fn entries_are_leased_acknowledged_and_reclaimed_after_idle() {
    let (store, _) = store().await;
    // Every read visits every partition (see the test below for the reads
    // between full sweeps): the leases are the subject here.
    let store = store.with_outbox_full_sweep_every(Duration::ZERO);
    let written = write_events(&store, 3).await;

    // A first consumer takes everything; a second finds nothing free.
    let first = store.read("worker-a", 100, 60_000).await.expect("reads");
    assert_eq!(
        ids_of(first.iter().map(|e| e.event.clone())),
        ids_of(written.clone())
    );
    assert_eq!(
        first
            .iter()
            .find(|e| e.event == written[0])
            .map(|e| &e.event),
        Some(&written[0])
    );
    assert_eq!(store.read("worker-b", 100, 60_000).await, Ok(vec![]));

    // worker-a writes two of them to the audit store and dies.
    let (done, lost) = first.split_at(2);
    store
        .ack(&done.iter().map(|e| e.id.clone()).collect::<Vec<_>>())
        .await
        .expect("acks");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Idle past 200 ms: worker-b reclaims exactly the unacknowledged ones.
    let reclaimed = store.read("worker-b", 100, 200).await.expect("reads");
    assert_eq!(
        ids_of(reclaimed.iter().map(|e| e.event.clone())),
        ids_of(lost.iter().map(|e| e.event.clone()))
    );
    assert_eq!(
        store.read("worker-a", 100, 60_000).await,
        Ok(vec![]),
        "leased to worker-b now"
    );

    store
        .ack(&reclaimed.iter().map(|e| e.id.clone()).collect::<Vec<_>>())
        .await
        .expect("acks");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        store.read("worker-c", 100, 0).await,
        Ok(vec![]),
        "acknowledged entries never return"
    );
    assert_eq!(store.backlog(0).await, Ok((0, 0)));
}

/// Between full sweeps a reader visits only the partitions its own process
/// wrote to: it sees its own entries at once, costs no call when it wrote
/// nothing, and finds another process's entries (one that died before
/// reading them) at the next full sweep.
#[tokio::test]
async fn reads_visit_what_this_process_wrote_and_everything_at_each_full_sweep() {
    let (writer, config) = store().await;
    let every = Duration::from_millis(400);
    let writer = writer.with_outbox_full_sweep_every(every);
    let other = RedisStore::connect(&config)
        .await
        .expect("connects")
        .with_outbox_full_sweep_every(every);
    // The first read of each is a full sweep; both find nothing.
    assert_eq!(writer.read("a", 100, 60_000).await, Ok(vec![]));
    assert_eq!(other.read("b", 100, 60_000).await, Ok(vec![]));

    let mine = write_events(&writer, 3).await;
    // Its own writes, at once.
    let read = writer.read("a", 100, 60_000).await.expect("reads");
    assert_eq!(ids_of(read.iter().map(|e| e.event.clone())), ids_of(mine));
    writer
        .ack(&read.iter().map(|e| e.id.clone()).collect::<Vec<_>>())
        .await
        .expect("acks");

    // Another process's entries wait for the reader's next full sweep.
    let theirs = write_events(&other, 2).await;
    assert_eq!(writer.read("a", 100, 60_000).await, Ok(vec![]));
    tokio::time::sleep(every + Duration::from_millis(100)).await;
    let swept = writer.read("a", 100, 60_000).await.expect("reads");
    assert_eq!(
        ids_of(swept.iter().map(|e| e.event.clone())),
        ids_of(theirs)
    );
    // `other` never read them: nothing left for it.
    writer
        .ack(&swept.iter().map(|e| e.id.clone()).collect::<Vec<_>>())
        .await
        .expect("acks");
    tokio::time::sleep(every + Duration::from_millis(100)).await;
    assert_eq!(other.read("b", 100, 0).await, Ok(vec![]));
    assert_eq!(writer.backlog(0).await, Ok((0, 0)));
}

/// A batch that fills leaves its partitions marked: the next read goes on
/// there without waiting for a full sweep.
#[tokio::test]
async fn a_full_batch_leaves_the_rest_for_the_next_read() {
    let (store, _) = store().await;
    let store = store.with_outbox_full_sweep_every(Duration::from_secs(3_600));
    assert_eq!(store.read("w", 10, 60_000).await, Ok(vec![]));
    let written = write_events(&store, 10).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let batch = store.read("w", 7, 60_000).await.expect("reads");
        seen.extend(batch);
    }
    assert_eq!(seen.len(), 20);
    assert_eq!(ids_of(seen.into_iter().map(|e| e.event)), ids_of(written));
}

#[tokio::test]
async fn read_returns_at_most_max_and_the_rest_later() {
    let (store, _) = store().await;
    let written = write_events(&store, 20).await;

    let mut seen = Vec::new();
    for max in [1, 5, 13] {
        let batch = store.read("worker", max, 60_000).await.expect("reads");
        assert_eq!(batch.len(), max);
        seen.extend(batch);
    }
    let rest = store.read("worker", 1_000, 60_000).await.expect("reads");
    assert_eq!(rest.len(), 40 - 19);
    seen.extend(rest);

    assert_eq!(ids_of(seen.into_iter().map(|e| e.event)), ids_of(written));
}

#[tokio::test]
async fn backlog_counts_waiting_entries_and_ages_the_oldest() {
    let (store, _) = store().await;
    assert_eq!(store.backlog(0).await, Ok((0, 0)));
    let mut conn = raw(&redis_url()).await;
    let before = redis_now_ms(&mut conn).await;
    write_events(&store, 4).await;
    let after = redis_now_ms(&mut conn).await;

    let (count, age) = store.backlog(after + 5_000).await.expect("backlog");

    assert_eq!(count, 8);
    assert!(
        (5_000..=5_000 + (after - before)).contains(&age),
        "age {age}"
    );
    // Leased but unacknowledged entries still wait.
    let leased = store.read("worker", 3, 60_000).await.expect("reads");
    assert_eq!(store.backlog(after).await.map(|(c, _)| c), Ok(8));
    store
        .ack(&leased.iter().map(|e| e.id.clone()).collect::<Vec<_>>())
        .await
        .expect("acks");
    assert_eq!(store.backlog(after).await.map(|(c, _)| c), Ok(5));
}

#[tokio::test]
async fn with_the_outbox_off_nothing_is_written() {
    let mut config = common::config();
    config.outbox_enabled = false;
    let store = RedisStore::connect(&config).await.expect("connects");

    write_events(&store, 10).await;
    let (session, created) = chess(60_000, 1_000);
    store
        .create(&session, std::slice::from_ref(&created))
        .await
        .expect("created");
    store
        .commit(&Commit {
            rate: None,
            state: bumped(&session),
            expected_version: 1,
            deadline: None,
            events: vec![created],
            publish: Vec::new(),
        })
        .await
        .expect("commits");

    let mut conn = raw(&redis_url()).await;
    for key in outbox_keys(&config) {
        let exists: bool = conn.exists(&key).await.expect("EXISTS");
        assert!(!exists, "{key} must not exist");
    }
    assert_eq!(store.read("worker", 100, 0).await, Ok(vec![]));
    assert_eq!(store.backlog(0).await, Ok((0, 0)));
}

#[tokio::test]
async fn unknown_ids_are_refused() {
    let (store, _) = store().await;
    assert!(store.ack(&["nonsense".to_owned()]).await.is_err());
    assert_eq!(store.ack(&[]).await, Ok(()));
}

/// With one server, a read over many partitions is one script call per
/// [`CALL_ENTRIES`] entries (not one per partition, nor one for all: Redis
/// runs one script at a time, and every commit waits behind it), its
/// acknowledgement one call per [`CALL_ENTRIES`] ids, and a backlog measure
/// one call; the read still returns every event of every partition.
#[tokio::test]
async fn with_one_server_reads_and_acks_take_a_call_per_200_entries_and_a_backlog_one() {
    assert_eq!(CALL_ENTRIES, 200);
    let (server, store) = common::own_store("calls:").await;
    let store = store.with_outbox_full_sweep_every(Duration::ZERO);
    // 250 sessions, 500 events: events in nearly every one of the 64 partitions.
    let written = write_events(&store, 250).await;
    assert_eq!(written.len(), 500);
    let mut probe = raw(&server.url()).await;

    let before = script_calls(&mut probe).await;
    let read = store.read("worker", 1_000, 60_000).await.expect("reads");
    assert_eq!(
        script_calls(&mut probe).await - before,
        3,
        "500 entries read in calls of 200, 200 and 100"
    );
    assert_eq!(read.len(), 500);
    assert_eq!(
        ids_of(read.iter().map(|e| e.event.clone())),
        ids_of(written)
    );
    let partitions: BTreeSet<&str> = read.iter().map(|e| &e.id[..2]).collect();
    assert!(partitions.len() > 50, "{} partitions", partitions.len());

    let before = script_calls(&mut probe).await;
    let ids: Vec<String> = read.iter().map(|e| e.id.clone()).collect();
    store.ack(&ids).await.expect("acknowledged");
    assert_eq!(
        script_calls(&mut probe).await - before,
        3,
        "500 ids acknowledged in calls of at most 200"
    );

    let before = script_calls(&mut probe).await;
    assert_eq!(store.backlog(0).await.expect("measured").0, 0);
    assert_eq!(
        script_calls(&mut probe).await - before,
        1,
        "one call to measure"
    );

    // A read that ends on a full call looks once more and finds nothing.
    let before = script_calls(&mut probe).await;
    assert!(
        store
            .read("worker", 1_000, 60_000)
            .await
            .expect("reads")
            .is_empty()
    );
    assert_eq!(
        script_calls(&mut probe).await - before,
        1,
        "one call to find nothing"
    );

    // A read capped below one call's worth is one call.
    write_events(&store, 50).await;
    let before = script_calls(&mut probe).await;
    assert_eq!(
        store.read("worker", 60, 60_000).await.expect("reads").len(),
        60
    );
    assert_eq!(
        script_calls(&mut probe).await - before,
        1,
        "60 entries, one call"
    );
}

/// `XREADGROUP` calls Redis served so far (those of scripts included).
async fn xreadgroup_calls(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    common::command_calls(conn, &["xreadgroup"]).await
}

/// Between full sweeps, with the consumer groups in place, a read is plain
/// `XREADGROUP` calls over the partitions this process wrote to (no
/// script), each taking at most 200 entries spread over the streams, and
/// it still takes every entry once.
#[tokio::test]
async fn between_full_sweeps_reads_are_plain_xreadgroup_calls() {
    let (server, store) = common::own_store("plain:").await;
    let store = store.with_outbox_full_sweep_every(Duration::from_secs(3_600));
    let mut probe = raw(&server.url()).await;
    // The first read is a full sweep (a script, which creates the groups).
    let first = write_events(&store, 250).await;
    let read = store.read("worker", 1_000, 60_000).await.expect("reads");
    assert_eq!(ids_of(read.iter().map(|e| e.event.clone())), ids_of(first));
    let ids: Vec<String> = read.iter().map(|e| e.id.clone()).collect();
    store.ack(&ids).await.expect("acknowledged");

    // 500 entries over nearly every partition: about eight a stream.
    let written = write_events(&store, 250).await;
    let (scripts, calls) = (
        script_calls(&mut probe).await,
        xreadgroup_calls(&mut probe).await,
    );
    let read = store.read("worker", 1_000, 60_000).await.expect("reads");
    assert_eq!(read.len(), 500);
    assert_eq!(
        ids_of(read.iter().map(|e| e.event.clone())),
        ids_of(written)
    );
    assert_eq!(script_calls(&mut probe).await - scripts, 0, "no script");
    let used = xreadgroup_calls(&mut probe).await - calls;
    assert!((3..=8).contains(&used), "{used} calls of at most 200");

    // A read capped below what waits takes exactly its cap. `COUNT` is per
    // stream: 60 over the ~45 streams written is one from each, then one
    // from each of the first streams for the rest.
    let written = write_events(&store, 50).await;
    let scripts = script_calls(&mut probe).await;
    let calls = xreadgroup_calls(&mut probe).await;
    let capped = store.read("worker", 60, 60_000).await.expect("reads");
    assert_eq!(capped.len(), 60);
    let used = xreadgroup_calls(&mut probe).await - calls;
    assert!((1..=3).contains(&used), "{used} calls");
    // The rest comes with the next read (its partitions stay marked).
    let rest = store.read("worker", 1_000, 60_000).await.expect("reads");
    assert_eq!(rest.len(), 40);
    assert_eq!(
        ids_of(capped.into_iter().chain(rest).map(|e| e.event)),
        ids_of(written)
    );
    assert_eq!(
        script_calls(&mut probe).await - scripts,
        0,
        "still no script"
    );
}

/// A consumer group lost between full sweeps (Redis restarted without
/// persistence, a stream deleted by hand): the plain read answers
/// `NOGROUP`, and the read falls back to the script, which creates the
/// group again; no entry is skipped.
#[tokio::test]
async fn a_lost_consumer_group_is_created_again_by_the_next_read() {
    let (server, store) = common::own_store("lost:").await;
    let store = store.with_outbox_full_sweep_every(Duration::from_secs(3_600));
    let mut probe = raw(&server.url()).await;
    let first = write_events(&store, 20).await;
    let read = store.read("worker", 1_000, 60_000).await.expect("reads");
    assert_eq!(ids_of(read.iter().map(|e| e.event.clone())), ids_of(first));
    let ids: Vec<String> = read.iter().map(|e| e.id.clone()).collect();
    store.ack(&ids).await.expect("acknowledged");

    let mut config = store_redis::RedisConfig::new(server.url());
    config.key_prefix = "lost:".into();
    for key in outbox_keys(&config) {
        let _: redis::Value = redis::cmd("XGROUP")
            .arg("DESTROY")
            .arg(&key)
            .arg("audit")
            .query_async(&mut probe)
            .await
            .expect("XGROUP DESTROY");
    }
    let written = write_events(&store, 20).await;
    let scripts = script_calls(&mut probe).await;
    let read = store.read("worker", 1_000, 60_000).await.expect("reads");
    assert_eq!(
        ids_of(read.iter().map(|e| e.event.clone())),
        ids_of(written)
    );
    assert!(
        script_calls(&mut probe).await - scripts >= 1,
        "the script created the groups"
    );
}

/// Taking leases over: a read takes over as many as it may (three calls
/// for 500) when the leases it takes stay younger than the reclaim time
/// while it reads; with a reclaim time of zero, where every lease is idle
/// enough at once, each read stops at the first entry it already took, so
/// the takeover goes a call's worth per read. Either way, every entry of the
/// dead consumer is someone else's in the end, each once.
#[tokio::test]
async fn leases_are_taken_over_each_once_whatever_the_reclaim_time() {
    let (store, _) = store().await;
    let store = store.with_outbox_full_sweep_every(Duration::ZERO);
    // 500 events that `dead` reads and never acknowledges.
    let abandoned = async || {
        let written = write_events(&store, 250).await;
        let leased = store.read("dead", 1_000, 60_000).await.expect("reads");
        assert_eq!(leased.len(), 500);
        written
    };
    // Every entry written is among those taken, each once; none is left.
    let taken_once = async |taken: Vec<kairos_domain::OutboxEntry>, written: Vec<Event>| {
        let ids: Vec<String> = taken.iter().map(|e| e.id.clone()).collect();
        assert_eq!(
            ids.iter().collect::<BTreeSet<_>>().len(),
            500,
            "each entry once"
        );
        assert_eq!(ids_of(taken.into_iter().map(|e| e.event)), ids_of(written));
        store.ack(&ids).await.expect("acknowledged");
        assert_eq!(store.backlog(0).await.expect("measured").0, 0);
    };

    // Reclaim time 1 s: one read takes all 500 over.
    let written = abandoned().await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let taken = store.read("heir", 1_000, 1_000).await.expect("reads");
    assert_eq!(taken.len(), 500);
    taken_once(taken, written).await;

    // Reclaim time 0: a call's worth per read.
    let written = abandoned().await;
    let mut taken = Vec::new();
    let mut reads = Vec::new();
    loop {
        let batch = store.read("heir", 1_000, 0).await.expect("reads");
        if batch.is_empty() {
            break;
        }
        reads.push(batch.len());
        // Acknowledged as the audit worker does once written (with idle
        // 0 ms, an entry still leased would be taken back at once).
        let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
        store.ack(&ids).await.expect("acknowledged");
        taken.extend(batch);
        assert!(reads.len() <= 5, "still taking over after {reads:?}");
    }
    assert_eq!(reads, vec![200, 200, 100]);
    taken_once(taken, written).await;
}
