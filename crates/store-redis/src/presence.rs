//! [`RedisPresence`]: who is connected to which session, shared by every
//! instance (contract section 9). One Lua script per operation, so a join
//! racing a leave or a sweep on another instance sees all or nothing of
//! it. Every key carries the `{presence}` hash tag (the layout is in
//! [`crate::keys`]): the sweep of lapsed connections visits any session's
//! keys from one script, which a Cluster allows only inside one slot.
//! Presence writes are rare next to switches (a connect, a close, one
//! renewal per instance every 10 s), so the one slot is not hot.

use async_trait::async_trait;
use kairos_domain::presence::summarize;
use kairos_domain::{
    Absence, ParticipantId, PendingLeave, PresenceConnection, PresenceRegistry, PresenceSnapshot,
    SessionId, StoreError,
};
use redis::Script;
use serde::Deserialize;
use std::sync::Arc;

use crate::conn::RedisConnection;

/// Connections renewed per script call. Redis runs one script at a time
/// and every instance's commits wait behind it: a renewal costs Redis 3 to
/// 6 µs a connection (`SLOWLOG` on the bench machine: 2.8 to 6.1 ms for
/// calls of 1,000), so a call of 100 holds it for about half a millisecond.
const RENEW_PER_CALL: usize = 100;

/// Removes one connection as of `at` (shared by `leave` and the sweep):
/// its entry, its lease and one from the counts of its user and its
/// participant; when a count reaches zero, a pending leave (due at `at` +
/// delay) or an absence (checked at once) is recorded. Returns 1 when it
/// was its user's last connection. `P` is the key prefix up to and with
/// the `{presence}:` tag; the globals are named by the caller's KEYS.
const DEPART: &str = r"
local function depart(P, sid, conn, at, delay, leases, leaves, leave, absent, since)
  local ckey = P .. 'c:' .. sid
  redis.call('ZREM', leases, sid .. '|' .. conn)
  local raw = redis.call('HGET', ckey, conn)
  if not raw then
    return 0
  end
  redis.call('HDEL', ckey, conn)
  local e = cjson.decode(raw)
  local at_s = string.format('%d', at)
  local left = 0
  local ukey = P .. 'u:' .. sid
  if redis.call('HINCRBY', ukey, e.s, -1) <= 0 then
    redis.call('HDEL', ukey, e.s)
    local lk = sid .. '|' .. e.s
    redis.call('ZADD', leaves, at + delay, lk)
    redis.call('HSET', leave, lk,
      cjson.encode({p = e.p, l = at_s, d = string.format('%d', at + delay)}))
    left = 1
  end
  if e.p ~= '' then
    local pkey = P .. 'p:' .. sid
    if redis.call('HINCRBY', pkey, e.p, -1) <= 0 then
      redis.call('HDEL', pkey, e.p)
      local ak = sid .. '|' .. e.p
      redis.call('ZADD', absent, at, ak)
      redis.call('HSET', since, ak, at_s)
    end
  end
  return left
end
";

/// KEYS: c, u, p (the session's), leases, leaves, leave, absent, since.
/// ARGV: sid, conn, sub, pid ('' for none), now, lease, entry JSON.
/// Returns 1 when `presence_joined` is due.
const JOIN: &str = r"
local count = tonumber(redis.call('HGET', KEYS[2], ARGV[3]) or '0')
redis.call('ZADD', KEYS[4], tonumber(ARGV[5]) + tonumber(ARGV[6]), ARGV[1] .. '|' .. ARGV[2])
if redis.call('HSET', KEYS[1], ARGV[2], ARGV[7]) == 0 then
  -- The same connection again (a retried call): announced the first time.
  return 0
end
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
if ARGV[4] ~= '' then
  redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
end
local lk = ARGV[1] .. '|' .. ARGV[3]
local pending = redis.call('ZREM', KEYS[5], lk)
redis.call('HDEL', KEYS[6], lk)
if ARGV[4] ~= '' then
  local ak = ARGV[1] .. '|' .. ARGV[4]
  redis.call('ZREM', KEYS[7], ak)
  redis.call('HDEL', KEYS[8], ak)
end
if count <= 0 and pending == 0 then
  return 1
end
return 0
";

/// KEYS: leases, leaves, leave, absent, since. ARGV: P, sid, conn, now, delay.
const LEAVE: &str = r"
return depart(ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]),
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
";

/// KEYS: leases. ARGV: now, lease, members... Extends only entries whose
/// lease has not ended: a lapsed one is its sweep's.
const RENEW: &str = r"
local now = tonumber(ARGV[1])
local kept = 0
for i = 3, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) > now then
    redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[i])
    kept = kept + 1
  end
end
return kept
";

/// KEYS: c (the session's), leases. ARGV: sid, now. Returns
/// [conn, entry JSON, ...] of the entries whose lease has not ended.
const SNAPSHOT: &str = r"
local all = redis.call('HGETALL', KEYS[1])
local now = tonumber(ARGV[2])
local out = {}
for i = 1, #all, 2 do
  local score = redis.call('ZSCORE', KEYS[2], ARGV[1] .. '|' .. all[i])
  if score and tonumber(score) > now then
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  end
end
return out
";

/// KEYS: leases, leaves, leave, absent, since. ARGV: P, now, limit,
/// lease, delay. Sweeps up to `limit` lapsed connections as of their
/// lease's end, then claims up to `limit` due leaves. Returns [member,
/// info JSON, ...].
const CLAIM_LEAVES: &str = r"
local now = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #lapsed, 2 do
  local sep = string.find(lapsed[i], '|', 1, true)
  if sep then
    depart(ARGV[1], string.sub(lapsed[i], 1, sep - 1), string.sub(lapsed[i], sep + 1),
      tonumber(lapsed[i + 1]), tonumber(ARGV[5]), KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
  else
    redis.call('ZREM', KEYS[1], lapsed[i])
  end
end
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
local out = {}
for _, m in ipairs(due) do
  local info = redis.call('HGET', KEYS[3], m)
  if info then
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), m)
    out[#out + 1] = m
    out[#out + 1] = info
  else
    redis.call('ZREM', KEYS[2], m)
  end
end
return out
";

/// KEYS: leaves, leave. ARGV: member, left_at. Drops the leave only if it
/// is still the one claimed (a newer one has another `left_at`).
const FINISH_LEAVE: &str = r"
local info = redis.call('HGET', KEYS[2], ARGV[1])
if info and cjson.decode(info).l == ARGV[2] then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
return 0
";

/// KEYS: absent, since. ARGV: now, limit, lease. Returns [member,
/// absent_since, ...].
const CLAIM_ABSENCES: &str = r"
local now = tonumber(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, m in ipairs(due) do
  local since = redis.call('HGET', KEYS[2], m)
  if since then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), m)
    out[#out + 1] = m
    out[#out + 1] = since
  else
    redis.call('ZREM', KEYS[1], m)
  end
end
return out
";

/// KEYS: absent, since. ARGV: member, absent_since, next ('' drops it).
const RESCHEDULE_ABSENCE: &str = r"
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then
  return 0
end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[1], 'XX', tonumber(ARGV[3]), ARGV[1])
end
return 1
";

/// A connection's entry as stored: sub, participant ('' for none), since.
#[derive(Deserialize)]
struct StoredEntry {
    s: String,
    p: String,
    t: String,
}

/// A pending leave's details as stored: participant, left at, due at.
#[derive(Deserialize)]
struct StoredLeave {
    p: String,
    l: String,
    d: String,
}

/// The scripts, compiled (hashed) once.
#[derive(Debug)]
struct Scripts {
    join: Script,
    leave: Script,
    renew: Script,
    snapshot: Script,
    claim_leaves: Script,
    finish_leave: Script,
    claim_absences: Script,
    reschedule_absence: Script,
}

/// A [`PresenceRegistry`] shared by all instances through Redis.
#[derive(Debug, Clone)]
pub struct RedisPresence {
    conn: RedisConnection,
    /// `<prefix>{presence}:`.
    tag: String,
    scripts: Arc<Scripts>,
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Other(format!("corrupt presence data: {what}"))
}

fn parse_ms(s: &str) -> Result<i64, StoreError> {
    s.parse().map_err(|_| corrupt("an instant"))
}

fn parse_pid(s: &str) -> Result<Option<ParticipantId>, StoreError> {
    if s.is_empty() {
        return Ok(None);
    }
    ParticipantId::parse(s)
        .map(Some)
        .map_err(|_| corrupt("a participant id"))
}

/// Splits `<sid>|<rest>`.
fn split_member(member: &str) -> Result<(SessionId, &str), StoreError> {
    let (sid, rest) = member.split_once('|').ok_or_else(|| corrupt("a member"))?;
    let sid = sid.parse().map_err(|_| corrupt("a session id"))?;
    Ok((sid, rest))
}

impl RedisPresence {
    /// A registry on `conn`, keys under `prefix` (e.g. `kairos:`).
    pub fn new(conn: RedisConnection, prefix: &str) -> Self {
        let with_depart = |body: &str| Script::new(&format!("{DEPART}\n{body}"));
        Self {
            conn,
            tag: format!("{prefix}{{presence}}:"),
            scripts: Arc::new(Scripts {
                join: Script::new(JOIN),
                leave: with_depart(LEAVE),
                renew: Script::new(RENEW),
                snapshot: Script::new(SNAPSHOT),
                claim_leaves: with_depart(CLAIM_LEAVES),
                finish_leave: Script::new(FINISH_LEAVE),
                claim_absences: Script::new(CLAIM_ABSENCES),
                reschedule_absence: Script::new(RESCHEDULE_ABSENCE),
            }),
        }
    }

    fn session_key(&self, kind: &str, id: SessionId) -> String {
        format!("{}{kind}:{id}", self.tag)
    }

    fn global(&self, name: &str) -> String {
        format!("{}{name}", self.tag)
    }

    /// Runs `script` with `keys` and `args` under the command timeout.
    async fn invoke<T: redis::FromRedisValue + Send + 'static>(
        &self,
        what: &'static str,
        script: impl Fn(&Scripts) -> &Script + Send + Sync,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<T, StoreError> {
        let scripts = self.scripts.clone();
        self.conn
            .run(what, |mut conn| {
                let mut call = script(&scripts).prepare_invoke();
                for k in &keys {
                    call.key(k);
                }
                for a in &args {
                    call.arg(a);
                }
                async move { call.invoke_async(&mut conn).await }
            })
            .await
    }
}

#[async_trait]
impl PresenceRegistry for RedisPresence {
    #[tracing::instrument(skip(self, connection), fields(session_id = %connection.session_id), level = "debug")]
    async fn join(
        &self,
        connection: &PresenceConnection,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let id = connection.session_id;
        let pid = connection
            .participant_id
            .as_ref()
            .map_or("", ParticipantId::as_str);
        let entry = serde_json::json!({
            "s": connection.sub, "p": pid, "t": connection.since_ms.to_string(),
        })
        .to_string();
        let keys = vec![
            self.session_key("c", id),
            self.session_key("u", id),
            self.session_key("p", id),
            self.global("leases"),
            self.global("leaves"),
            self.global("leave"),
            self.global("absent"),
            self.global("since"),
        ];
        let args = vec![
            id.to_string(),
            connection.connection_id.clone(),
            connection.sub.clone(),
            pid.to_owned(),
            now_ms.to_string(),
            lease_ms.max(1).to_string(),
            entry,
        ];
        let first: i64 = self
            .invoke("join presence", |s| &s.join, keys, args)
            .await?;
        Ok(first == 1)
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn leave(
        &self,
        session_id: SessionId,
        connection_id: &str,
        now_ms: i64,
        leave_delay_ms: i64,
    ) -> Result<bool, StoreError> {
        let keys = ["leases", "leaves", "leave", "absent", "since"]
            .map(|k| self.global(k))
            .to_vec();
        let args = vec![
            self.tag.clone(),
            session_id.to_string(),
            connection_id.to_owned(),
            now_ms.to_string(),
            leave_delay_ms.max(0).to_string(),
        ];
        let last: i64 = self
            .invoke("leave presence", |s| &s.leave, keys, args)
            .await?;
        Ok(last == 1)
    }

    #[tracing::instrument(skip_all, fields(connections = connections.len()), level = "debug")]
    async fn renew(
        &self,
        connections: &[(SessionId, String)],
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<(), StoreError> {
        // Bounded batches, one after the other: one script call stays
        // short however many sockets the instance holds.
        for chunk in connections.chunks(RENEW_PER_CALL) {
            let mut args = vec![now_ms.to_string(), lease_ms.max(1).to_string()];
            args.extend(chunk.iter().map(|(id, c)| format!("{id}|{c}")));
            let _: i64 = self
                .invoke(
                    "renew presence",
                    |s| &s.renew,
                    vec![self.global("leases")],
                    args,
                )
                .await?;
        }
        Ok(())
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn snapshot(
        &self,
        session_id: SessionId,
        now_ms: i64,
    ) -> Result<PresenceSnapshot, StoreError> {
        let keys = vec![self.session_key("c", session_id), self.global("leases")];
        let args = vec![session_id.to_string(), now_ms.to_string()];
        let pairs: Vec<String> = self
            .invoke("read presence", |s| &s.snapshot, keys, args)
            .await?;
        let mut live = Vec::with_capacity(pairs.len() / 2);
        for pair in pairs.chunks_exact(2) {
            let e: StoredEntry = serde_json::from_str(&pair[1]).map_err(|_| corrupt("an entry"))?;
            live.push(PresenceConnection {
                session_id,
                connection_id: pair[0].clone(),
                sub: e.s,
                participant_id: parse_pid(&e.p)?,
                since_ms: parse_ms(&e.t)?,
            });
        }
        Ok(summarize(live))
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn claim_due_leaves(
        &self,
        now_ms: i64,
        limit: usize,
        lease_ms: i64,
        leave_delay_ms: i64,
    ) -> Result<Vec<PendingLeave>, StoreError> {
        let keys = ["leases", "leaves", "leave", "absent", "since"]
            .map(|k| self.global(k))
            .to_vec();
        let args = vec![
            self.tag.clone(),
            now_ms.to_string(),
            limit.max(1).to_string(),
            lease_ms.max(1).to_string(),
            leave_delay_ms.max(0).to_string(),
        ];
        let pairs: Vec<String> = self
            .invoke("claim presence leaves", |s| &s.claim_leaves, keys, args)
            .await?;
        let mut out = Vec::with_capacity(pairs.len() / 2);
        for pair in pairs.chunks_exact(2) {
            let (session_id, sub) = split_member(&pair[0])?;
            let info: StoredLeave =
                serde_json::from_str(&pair[1]).map_err(|_| corrupt("a leave"))?;
            out.push(PendingLeave {
                session_id,
                sub: sub.to_owned(),
                participant_id: parse_pid(&info.p)?,
                left_at_ms: parse_ms(&info.l)?,
                due_ms: parse_ms(&info.d)?,
            });
        }
        Ok(out)
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn finish_leave(&self, leave: &PendingLeave) -> Result<(), StoreError> {
        let keys = vec![self.global("leaves"), self.global("leave")];
        let args = vec![
            format!("{}|{}", leave.session_id, leave.sub),
            leave.left_at_ms.to_string(),
        ];
        let _: i64 = self
            .invoke("finish a presence leave", |s| &s.finish_leave, keys, args)
            .await?;
        Ok(())
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn claim_due_absences(
        &self,
        now_ms: i64,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<Absence>, StoreError> {
        let keys = vec![self.global("absent"), self.global("since")];
        let args = vec![
            now_ms.to_string(),
            limit.max(1).to_string(),
            lease_ms.max(1).to_string(),
        ];
        let pairs: Vec<String> = self
            .invoke("claim absences", |s| &s.claim_absences, keys, args)
            .await?;
        let mut out = Vec::with_capacity(pairs.len() / 2);
        for pair in pairs.chunks_exact(2) {
            let (session_id, pid) = split_member(&pair[0])?;
            out.push(Absence {
                session_id,
                participant_id: parse_pid(pid)?.ok_or_else(|| corrupt("an absence"))?,
                absent_since_ms: parse_ms(&pair[1])?,
            });
        }
        Ok(out)
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn reschedule_absence(
        &self,
        absence: &Absence,
        next_check_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let keys = vec![self.global("absent"), self.global("since")];
        let args = vec![
            format!("{}|{}", absence.session_id, absence.participant_id),
            absence.absent_since_ms.to_string(),
            next_check_ms.map_or_else(String::new, |n| n.to_string()),
        ];
        let _: i64 = self
            .invoke(
                "reschedule an absence",
                |s| &s.reschedule_absence,
                keys,
                args,
            )
            .await?;
        Ok(())
    }
}
