//! [`RedisStore`]: the [`SessionStore`] on Redis. Each state change is one
//! Lua script call on one partition (state, deadline index and outbox in one
//! atomic round trip); a deadline claim visits every partition in one script
//! call (in Cluster mode, one call per partition, concurrently).

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use kairos_domain::ratelimit::{RateDecision, US_PER_MS, gcra};
use kairos_domain::{
    Claimed, Commit, EncodedMessage, Event, Outbox, OutboxEntry, Session, SessionId, SessionPage,
    SessionStore, StoreError, machine,
};
use redis::{FromRedisValue, Script};

use crate::codec::{StateCodec, encode_event};
use crate::config::RedisConfig;
use crate::conn::RedisConnection;
use crate::keys::{Keys, PARTITIONS, PartitionKeys, partition_of, sweep};
use crate::outbox::{Feed, RedisOutbox, Written};
use crate::ratelimit::parse_tat;
use crate::scripts::Scripts;
use crate::webhooks::RedisWebhookStore;

/// The Redis [`SessionStore`], and its audit [`Outbox`] (by delegation to a
/// [`RedisOutbox`] over the `audit` feed). Cheap to share behind an `Arc`;
/// all methods take `&self`.
pub struct RedisStore {
    pub(crate) conn: RedisConnection,
    pub(crate) keys: Keys,
    pub(crate) scripts: Arc<Scripts>,
    ttl_ms: i64,
    outbox_enabled: bool,
    /// Whether commits also feed the webhook streams (`{pNN}:hooks`).
    webhook_feed: bool,
    codec: StateCodec,
    /// The audit outbox this store is (see its `Outbox` impl below).
    pub(crate) audit: RedisOutbox,
    /// Where the next deadline claim starts its sweep, so that no partition
    /// is always served last.
    claim_rotation: AtomicUsize,
    /// The webhook streams' partitions this process wrote to, shared with
    /// [`Self::webhook_outbox`] and [`Self::webhook_store`].
    hooks_written: Arc<Written>,
    /// The key prefix, for the webhook keys.
    key_prefix: String,
    /// With the webhook feed on and one server: the endpoints' hash, whose
    /// existence gates the feed (no endpoint, no feed entry to write, read
    /// and acknowledge). `None`: the feed is written whenever it is on (in
    /// Cluster the hash is in another slot than the session's keys).
    hooks_gate: Option<String>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("conn", &self.conn)
            .field("ttl_ms", &self.ttl_ms)
            .field("outbox_enabled", &self.outbox_enabled)
            .field("webhook_feed", &self.webhook_feed)
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}

/// Stop adding states to one claim reply past this many bytes (see
/// `CLAIM_ALL` in [`crate::scripts`]): bounds the reply when sessions are
/// very large (1,000 participants), at no cost for ordinary ones.
const CLAIM_REPLY_BYTES: usize = 4 << 20;

/// Script calls one standalone claim makes at most (see `claim_due`).
const MAX_CLAIM_CALLS: usize = 4;

/// `SCAN ... COUNT` of one step of a session walk (`list`).
const LIST_SCAN_COUNT: usize = 100;
/// `SCAN`s one `LIST` script call makes at most: bounds how long the script
/// holds the server (about this many times `LIST_SCAN_COUNT` keys visited).
const LIST_SCANS_PER_CALL: usize = 8;
/// Script calls one page of a walk makes at most; a page that ends on this
/// bound may hold fewer sessions than asked (even none), and its cursor
/// goes on from there.
const LIST_CALLS_PER_PAGE: usize = 32;

impl RedisStore {
    /// Connects (see [`RedisConnection::connect`]) and builds the store.
    pub async fn connect(config: &RedisConfig) -> Result<Self, StoreError> {
        let conn = RedisConnection::connect(config).await?;
        Self::with_connection(conn, config).await
    }

    /// Builds the store on an existing connection, preloading its scripts.
    /// Uses `config`'s TTL, outbox flag and key prefix (not its URL or mode).
    pub async fn with_connection(
        conn: RedisConnection,
        config: &RedisConfig,
    ) -> Result<Self, StoreError> {
        config
            .validate()
            .map_err(|e| StoreError::Other(e.to_string()))?;
        let keys = Keys::new(&config.key_prefix);
        let scripts = Arc::new(Scripts::new());
        let store = Self {
            audit: RedisOutbox::new(
                conn.clone(),
                keys.clone(),
                scripts.clone(),
                Feed::Audit,
                config.outbox_enabled,
                Arc::default(),
            ),
            conn,
            keys,
            scripts,
            ttl_ms: i64::try_from(config.session_ttl.as_millis())
                .unwrap_or(i64::MAX)
                .max(1),
            outbox_enabled: config.outbox_enabled,
            webhook_feed: false,
            codec: StateCodec::DEFAULT,
            claim_rotation: AtomicUsize::new(0),
            hooks_written: Arc::default(),
            key_prefix: config.key_prefix.clone(),
            hooks_gate: None,
        };
        store.preload_scripts().await?;
        Ok(store)
    }

    /// With `on`, every `create` and `commit` also appends its events to the
    /// partition's webhook stream (`{pNN}:hooks`, group `webhooks`) in the
    /// same atomic step as the audit outbox, for [`Self::webhook_outbox`]'s
    /// reader. Off by default: nothing would drain the streams. With one
    /// server (standalone, Sentinel) the same step checks that a webhook
    /// endpoint exists and writes nothing to the feed otherwise: an
    /// endpoint gets the events committed after it was created, and a
    /// deployment without endpoints pays nothing for the feed.
    #[must_use]
    pub fn with_webhook_feed(mut self, on: bool) -> Self {
        self.webhook_feed = on;
        self.hooks_gate = (on && !self.conn.is_cluster())
            .then(|| crate::keys::WebhookKeys::new(&self.key_prefix).endpoints);
        self
    }

    /// How often the outbox readers (audit and webhook feeds) visit every
    /// partition: between these full sweeps they read only the partitions
    /// this process wrote to, so entries written by another process (one
    /// that died before reading them) and leases to take over wait for the
    /// next full sweep. 15 s by default; zero makes every read a full sweep
    /// (tests of several consumers on one store).
    #[must_use]
    pub fn with_outbox_full_sweep_every(self, every: std::time::Duration) -> Self {
        self.audit.set_full_sweep_every(every);
        self.hooks_written.set_full_sweep_every(every);
        self
    }

    /// Whether commits feed the webhook streams.
    pub fn webhook_feed(&self) -> bool {
        self.webhook_feed
    }

    /// The webhook feed as an [`kairos_domain::Outbox`] (the audit outbox is
    /// the store itself). Reads nothing when the feed is off.
    pub fn webhook_outbox(&self) -> RedisOutbox {
        RedisOutbox::new(
            self.conn.clone(),
            self.keys.clone(),
            self.scripts.clone(),
            Feed::Webhooks,
            self.webhook_feed,
            self.hooks_written.clone(),
        )
    }

    /// The [`kairos_domain::WebhookStore`] of this deployment (endpoints,
    /// delivery queue and log, under the same key prefix), whose
    /// `push_event` feeds this store's webhook streams (a no-op when the
    /// feed is off).
    pub fn webhook_store(&self) -> RedisWebhookStore {
        RedisWebhookStore::new(
            self.conn.clone(),
            &self.key_prefix,
            self.keys.clone(),
            self.scripts.clone(),
            self.webhook_feed,
            self.hooks_written.clone(),
        )
    }

    /// A create or commit may have appended to partition `p`'s event
    /// streams: their readers look there next.
    fn mark_written(&self, p: usize) {
        self.audit.mark_written(p);
        if self.webhook_feed {
            self.hooks_written.mark(p);
        }
    }

    /// The connection, to share with [`crate::RedisClock`].
    pub fn connection(&self) -> RedisConnection {
        self.conn.clone()
    }

    /// The streams a write of a session in partition `keys` appends its
    /// events to: the audit outbox and the webhook feed, each when on.
    /// With the gate, the endpoints' hash follows them (see `CREATE`).
    fn event_streams<'k>(&'k self, keys: &'k PartitionKeys) -> Vec<&'k str> {
        let mut streams = Vec::with_capacity(3);
        if self.outbox_enabled {
            streams.push(keys.outbox.as_str());
        }
        if self.webhook_feed {
            streams.push(keys.hooks.as_str());
            if let Some(gate) = &self.hooks_gate {
                streams.push(gate.as_str());
            }
        }
        streams
    }

    /// Loads the scripts so the first commits do not pay for it. Only an
    /// optimisation: every call falls back to loading on `NOSCRIPT`.
    async fn preload_scripts(&self) -> Result<(), StoreError> {
        for script in self.scripts.all() {
            self.conn
                .run("SCRIPT LOAD", |mut conn| async move {
                    script.prepare_invoke().load_async(&mut conn).await
                })
                .await?;
        }
        Ok(())
    }

    /// Runs `script` with `keys` and `args` in one round trip.
    pub(crate) async fn eval<T: FromRedisValue>(
        &self,
        what: &'static str,
        script: &Script,
        keys: &[&str],
        args: &[Vec<u8>],
    ) -> Result<T, StoreError> {
        self.conn.eval(what, script, keys, args).await
    }

    /// The arguments of a state write, shared by `create` and `commit`:
    /// `versions` (the script's first arguments), encoded state, TTL,
    /// deadline (or empty), member, then `extra` (the commit's rate check),
    /// the webhook feed's gate flag, then for a commit (`publish` given) the
    /// number of bus messages and each one's channel and bytes (borrowed,
    /// not copied), then the events.
    fn write_args<'a>(
        &self,
        versions: &[u64],
        state: &Session,
        deadline: Option<i64>,
        extra: Vec<Vec<u8>>,
        publish: Option<&'a [EncodedMessage]>,
        events: &[Event],
    ) -> Result<Vec<Cow<'a, [u8]>>, StoreError> {
        let owned = |bytes: Vec<u8>| -> Cow<'a, [u8]> { Cow::Owned(bytes) };
        let messages = publish.unwrap_or_default();
        let mut args = Vec::with_capacity(
            versions.len() + 6 + extra.len() + 2 * messages.len() + events.len(),
        );
        args.extend(versions.iter().map(|v| owned(v.to_string().into_bytes())));
        args.push(owned(self.codec.encode(state)?));
        args.push(owned(self.ttl_ms.to_string().into_bytes()));
        args.push(owned(
            deadline
                .map(|d| d.to_string())
                .unwrap_or_default()
                .into_bytes(),
        ));
        args.push(owned(state.id.to_string().into_bytes()));
        args.extend(extra.into_iter().map(owned));
        // The webhook feed's gate flag (see `CREATE`).
        args.push(Cow::Borrowed(if self.hooks_gate.is_some() {
            b"1".as_slice()
        } else {
            b"".as_slice()
        }));
        if publish.is_some() {
            args.push(owned(messages.len().to_string().into_bytes()));
            for message in messages {
                args.push(Cow::Borrowed(message.channel.as_bytes()));
                args.push(Cow::Borrowed(&message.payload));
            }
        }
        // With both feeds off nothing drains the streams: write no events at all.
        if self.outbox_enabled || self.webhook_feed {
            for event in events {
                args.push(owned(encode_event(event)?));
            }
        }
        Ok(args)
    }

    /// Claims up to `quota` due deadlines of partition `p` (Cluster mode).
    async fn claim_partition(
        &self,
        p: usize,
        quota: usize,
        now_ms: i64,
        lease_until: i64,
    ) -> Result<(Vec<Claimed>, bool), StoreError> {
        let keys = self.keys.partition(p);
        let (scanned, flat): (usize, Vec<Vec<u8>>) = self
            .eval(
                "claim_due",
                &self.scripts.claim,
                &[&keys.deadlines],
                &[
                    now_ms.to_string().into_bytes(),
                    quota.to_string().into_bytes(),
                    lease_until.to_string().into_bytes(),
                    keys.state_prefix.clone().into_bytes(),
                ],
            )
            .await?;
        Ok((Self::claimed(flat), scanned >= quota))
    }

    /// Claims up to `limit` due deadlines over every partition in one script
    /// call (standalone and Sentinel), starting at partition `start`.
    /// Returns the claims and whether more may be due.
    async fn claim_all(
        &self,
        start: usize,
        limit: usize,
        now_ms: i64,
        lease_until: i64,
    ) -> Result<(Vec<Claimed>, bool), StoreError> {
        let order: Vec<&PartitionKeys> = (0..PARTITIONS)
            .map(|i| self.keys.partition((start + i) % PARTITIONS))
            .collect();
        let deadline_keys: Vec<&str> = order.iter().map(|k| k.deadlines.as_str()).collect();
        let mut args = Vec::with_capacity(4 + PARTITIONS);
        args.push(now_ms.to_string().into_bytes());
        args.push(limit.to_string().into_bytes());
        args.push(lease_until.to_string().into_bytes());
        args.push(CLAIM_REPLY_BYTES.to_string().into_bytes());
        args.extend(order.iter().map(|k| k.state_prefix.clone().into_bytes()));
        let (more, flat): (i64, Vec<Vec<u8>>) = self
            .eval("claim_due", &self.scripts.claim_all, &deadline_keys, &args)
            .await?;
        Ok((Self::claimed(flat), more == 1))
    }

    /// The cursor of a walk: `<partition>-<SCAN cursor>`.
    fn parse_list_cursor(cursor: Option<&str>) -> Result<(usize, String), StoreError> {
        let Some(c) = cursor else {
            return Ok((0, "0".to_owned()));
        };
        let (p, scan) = c.split_once('-').ok_or(StoreError::InvalidCursor)?;
        match (p.parse::<usize>(), scan.parse::<u64>()) {
            (Ok(p), Ok(scan)) if p < PARTITIONS => Ok((p, scan.to_string())),
            _ => Err(StoreError::InvalidCursor),
        }
    }

    /// The `MATCH` pattern of a partition's state keys: its prefix with the
    /// glob characters escaped, then `*`.
    fn state_pattern(prefix: &str) -> String {
        let mut out = String::with_capacity(prefix.len() + 1);
        for c in prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('*');
        out
    }

    /// The claims of a `member, state, ...` reply. A member that is not a
    /// session id is reported rather than silently dropped (only this crate
    /// writes the index; the lease keeps it from flooding the log); a state
    /// that does not decode is left for the caller to load, which reports it.
    fn claimed(flat: Vec<Vec<u8>>) -> Vec<Claimed> {
        let mut out = Vec::with_capacity(flat.len() / 2);
        let mut items = flat.into_iter();
        while let (Some(member), Some(state)) = (items.next(), items.next()) {
            let Some(id) = std::str::from_utf8(&member)
                .ok()
                .and_then(|m| m.parse::<SessionId>().ok())
            else {
                tracing::warn!(
                    member = %String::from_utf8_lossy(&member),
                    "ignoring a non-uuid member in the deadline index"
                );
                continue;
            };
            out.push(Claimed {
                id,
                state: StateCodec::decode(&state).ok(),
            });
        }
        out
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    #[tracing::instrument(skip(self), fields(session_id = %id))]
    async fn load(&self, id: SessionId) -> Result<Option<Session>, StoreError> {
        let key = self.keys.state(&id);
        let bytes: Option<Vec<u8>> = self
            .conn
            .run("load", |mut conn| {
                let key = &key;
                async move {
                    redis::cmd("HGET")
                        .arg(key)
                        .arg("s")
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        bytes.map(|b| StateCodec::decode(&b)).transpose()
    }

    /// With one server (standalone, Sentinel) the commit script publishes
    /// the commit's bus messages itself; on Cluster a session's channel is
    /// in another slot than its keys, so the bus publishes them.
    fn publishes_commits(&self) -> bool {
        !self.conn.is_cluster()
    }

    #[tracing::instrument(skip(self, state, events), fields(session_id = %state.id, version = state.version))]
    async fn create(&self, state: &Session, events: &[Event]) -> Result<(), StoreError> {
        let p = partition_of(&state.id);
        let keys = self.keys.partition(p);
        let state_key = self.keys.state(&state.id);
        let args = self.write_args(
            &[state.version],
            state,
            machine::next_deadline(state),
            Vec::new(),
            None,
            events,
        )?;
        let mut script_keys = vec![state_key.as_str(), keys.deadlines.as_str()];
        script_keys.extend(self.event_streams(keys));
        let created = self
            .conn
            .eval_with::<i64, _>("create", &self.scripts.create, &script_keys, &args)
            .await;
        // Marked whatever the reply: a call that timed out may have run.
        self.mark_written(p);
        let created = created?;
        if created == 1 {
            Ok(())
        } else {
            Err(StoreError::AlreadyExists)
        }
    }

    #[tracing::instrument(
        skip(self, commit),
        fields(session_id = %commit.state.id, expected_version = commit.expected_version, version = commit.state.version)
    )]
    async fn commit(&self, commit: &Commit) -> Result<Option<RateDecision>, StoreError> {
        let state = &commit.state;
        let p = partition_of(&state.id);
        let keys = self.keys.partition(p);
        let state_key = self.keys.state(&state.id);
        let rate_args = match commit.rate {
            Some(check) => vec![
                check
                    .now_ms
                    .saturating_mul(US_PER_MS)
                    .to_string()
                    .into_bytes(),
                check.limit.interval_us().to_string().into_bytes(),
                check.limit.burst_us().to_string().into_bytes(),
            ],
            None => vec![Vec::new(), Vec::new(), Vec::new()],
        };
        if !commit.publish.is_empty() && !self.publishes_commits() {
            return Err(StoreError::Other(
                "a commit with bus messages to publish on Redis Cluster (its bus publishes)".into(),
            ));
        }
        let args = self.write_args(
            &[commit.expected_version, state.version],
            state,
            commit.deadline,
            rate_args,
            Some(&commit.publish),
            &commit.events,
        )?;
        // KEYS: state (its field `r` the switch limit's TAT), deadlines,
        // then the event streams.
        let mut script_keys = vec![state_key.as_str(), keys.deadlines.as_str()];
        script_keys.extend(self.event_streams(keys));
        let reply = self
            .conn
            .eval_with::<(i64, Option<Vec<u8>>), _>(
                "commit",
                &self.scripts.commit,
                &script_keys,
                &args,
            )
            .await;
        if !commit.events.is_empty() {
            // Whatever the reply: a call that timed out may have run.
            self.mark_written(p);
        }
        let (outcome, detail) = reply?;
        // The decision the headers report, from the TAT the script read
        // (the same pure function the script's arithmetic follows).
        let decision = |detail: Option<Vec<u8>>| -> Result<Option<RateDecision>, StoreError> {
            let Some(check) = commit.rate else {
                return Ok(None);
            };
            let tat = match detail {
                Some(bytes) => Some(parse_tat(&String::from_utf8_lossy(&bytes))?),
                None => None,
            };
            Ok(Some(gcra(tat, check.now_ms, check.limit).0))
        };
        match outcome {
            1 => decision(detail),
            // Another writer got there first: the state stored now, so the
            // caller decides again without a load.
            0 => Err(StoreError::VersionConflict(
                detail
                    .map(|bytes| StateCodec::decode(&bytes).map(Box::new))
                    .transpose()?,
            )),
            2 => match decision(detail)? {
                Some(refused) => Err(StoreError::RateLimited(RateDecision {
                    allowed: false,
                    ..refused
                })),
                None => Err(StoreError::Other(
                    "the commit script refused a rate check it was not given".into(),
                )),
            },
            // -1: the session is gone (deleted or expired).
            _ => Err(StoreError::VersionConflict(None)),
        }
    }

    #[tracing::instrument(skip(self), fields(session_id = %id))]
    async fn delete(&self, id: SessionId) -> Result<bool, StoreError> {
        let keys = self.keys.partition(partition_of(&id));
        let state_key = self.keys.state(&id);
        let removed: i64 = self
            .eval(
                "delete",
                &self.scripts.delete,
                &[&state_key, &keys.deadlines],
                &[id.to_string().into_bytes()],
            )
            .await?;
        Ok(removed > 0)
    }

    #[tracing::instrument(skip(self))]
    async fn claim_due(
        &self,
        now_ms: i64,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let lease_until = now_ms.saturating_add(lease_ms.max(0));
        let start = self.claim_rotation.fetch_add(1, Ordering::Relaxed) % PARTITIONS;
        if !self.conn.is_cluster() {
            // One call visits every partition. A call can stop short of the
            // limit with more still due (the reply's byte budget, or expired
            // entries it dropped); then call again, a bounded number of
            // times, so that fewer than `limit` claims means nothing more was
            // due in the usual case.
            let mut out = Vec::new();
            for _ in 0..MAX_CLAIM_CALLS {
                let (claimed, more) = self
                    .claim_all(start, limit - out.len(), now_ms, lease_until)
                    .await?;
                out.extend(claimed);
                if !more || out.len() >= limit {
                    break;
                }
            }
            return Ok(out);
        }
        sweep(start, limit, |p, quota| {
            self.claim_partition(p, quota, now_ms, lease_until)
        })
        .await
    }

    /// A walk partition by partition, each with `SCAN ... MATCH` over its
    /// state keys, run inside a script routed to the partition's node (so
    /// the same code serves standalone, Sentinel and Cluster). Cost: each
    /// partition's scan visits every key of the node that holds it (`MATCH`
    /// filters after visiting), so a whole walk visits each node's keyspace
    /// once per partition it holds: 64 passes over the keyspace on one
    /// node. Each script call visits at most 800 keys; a page makes at
    /// most 32 calls. A page may hold up to one `SCAN` batch (about 100)
    /// more sessions than `limit`, and fewer (even none) when its calls ran
    /// out before the walk did.
    #[tracing::instrument(skip(self))]
    async fn list(&self, cursor: Option<String>, limit: usize) -> Result<SessionPage, StoreError> {
        let (mut p, mut scan) = Self::parse_list_cursor(cursor.as_deref())?;
        let limit = limit.max(1);
        let mut sessions = Vec::new();
        for _ in 0..LIST_CALLS_PER_PAGE {
            if p >= PARTITIONS || sessions.len() >= limit {
                break;
            }
            let keys = self.keys.partition(p);
            let (next, states): (String, Vec<Vec<u8>>) = self
                .eval(
                    "list",
                    &self.scripts.list,
                    &[&keys.deadlines],
                    &[
                        scan.clone().into_bytes(),
                        Self::state_pattern(&keys.state_prefix).into_bytes(),
                        LIST_SCAN_COUNT.to_string().into_bytes(),
                        (limit - sessions.len()).to_string().into_bytes(),
                        LIST_SCANS_PER_CALL.to_string().into_bytes(),
                    ],
                )
                .await?;
            for state in states {
                match StateCodec::decode(&state) {
                    Ok(s) => sessions.push(s),
                    Err(e) => tracing::warn!(error = %e, "a stored state that does not decode"),
                }
            }
            if next == "0" {
                p += 1;
                scan = "0".to_owned();
            } else {
                scan = next;
            }
        }
        let next_cursor = (p < PARTITIONS).then(|| format!("{p}-{scan}"));
        Ok(SessionPage {
            sessions,
            next_cursor,
        })
    }

    #[tracing::instrument(skip(self))]
    async fn ping(&self) -> Result<(), StoreError> {
        let pong: String = self
            .conn
            .run("ping", |mut conn| async move {
                redis::cmd("PING").query_async(&mut conn).await
            })
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Other(format!("unexpected PING reply {pong:?}")))
        }
    }
}

/// The store is its own audit outbox (the shape the audit worker was wired
/// with before the webhook feed existed).
#[async_trait]
impl Outbox for RedisStore {
    async fn read(
        &self,
        consumer: &str,
        max: usize,
        reclaim_after_ms: i64,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        self.audit.read(consumer, max, reclaim_after_ms).await
    }

    async fn ack(&self, ids: &[String]) -> Result<(), StoreError> {
        self.audit.ack(ids).await
    }

    async fn backlog(&self, now_ms: i64) -> Result<(u64, i64), StoreError> {
        self.audit.backlog(now_ms).await
    }
}
