//! The Lua scripts that make each store operation one atomic round trip.
//!
//! Each script touches the keys of one partition only, or of the webhook
//! queue only (one hash tag, so one Cluster slot). Keys that are derived from a partition's state-key prefix
//! plus a member (in [`CLAIM`]) share that hash tag too, which is why Redis
//! Cluster accepts them although they are not declared in `KEYS`.
//!
//! The scripts do no arithmetic on timestamps: Lua numbers are doubles and
//! print large values in exponent notation, so every score is computed in
//! Rust and passed through as a decimal string.
//!
//! [`redis::Script`] sends `EVALSHA` and falls back to loading the script
//! when the server does not know it (after a restart or on a fresh cluster node).

use redis::Script;

/// The GCRA step of [`kairos_domain::ratelimit::gcra`] as Lua functions:
/// `gcra_step(stored TAT or false, now, interval, burst)` returns
/// `allowed, next TAT, now` and writes nothing ([`COMMIT`] keeps the
/// session's switch-limit TAT in the session's own hash); `gcra(key, now,
/// interval, burst)`, for the standalone limiter (`RedisRateLimiter`, the
/// limits other than the switch limit), reads the TAT
/// stored under `key`, stores the next one (with an expiry at its end) when
/// the request is allowed, and returns `allowed, stored TAT or false`. The
/// caller recomputes the decision from that TAT with the same pure function,
/// so the Rust and Lua sides cannot disagree on what the headers say (a test
/// runs both on the same inputs). Times are µs (the TAT's unit, see
/// [`kairos_domain::ratelimit`]); the key's expiry is whole ms, rounded up.
/// Lua numbers are doubles: epoch microseconds stay exact until 2255.
macro_rules! gcra_lua {
    () => {
        r"
local function gcra_step(stored, now_arg, interval_arg, burst_arg)
  local now = tonumber(now_arg)
  local tat = now
  if stored then tat = tonumber(stored) end
  local new_tat = math.max(tat, now) + tonumber(interval_arg)
  return now >= new_tat - tonumber(burst_arg), new_tat, now
end
local function gcra(key, now_arg, interval_arg, burst_arg)
  local stored = redis.call('GET', key)
  local allowed, new_tat, now = gcra_step(stored, now_arg, interval_arg, burst_arg)
  if allowed then
    redis.call('SET', key, string.format('%.0f', new_tat), 'PX', string.format('%.0f', math.max(1, math.ceil((new_tat - now) / 1000))))
  end
  return allowed, stored or false
end
"
    };
}
pub(crate) use gcra_lua;

/// The last of a write's event streams to append to, `KEYS[first..last]`
/// being the streams: with the gate flag `1`, the last key is the webhook
/// endpoints' hash, not a stream, and the stream before it (the webhook
/// feed) is written only while an endpoint exists (one server only: the
/// hash is in another slot).
macro_rules! streams_lua {
    () => {
        r"
local function last_stream(gated)
  if gated ~= '1' then
    return #KEYS
  end
  if redis.call('EXISTS', KEYS[#KEYS]) == 1 then
    return #KEYS - 1
  end
  return #KEYS - 2
end
"
    };
}

/// Creates a session unless its key exists.
///
/// KEYS: state, deadlines, then the streams the events go to (none, the
/// outbox, the webhook feed, or both), then with the gate the webhook
/// endpoints' hash. ARGV: version, encoded state, ttl ms, deadline score or
/// `""`, member (session uuid), the webhook feed's gate (`1`: write the feed
/// only while an endpoint exists; `""`: always), then one encoded event per
/// argument. Returns 1 when created, 0 when the key exists.
const CREATE: &str = concat!(
    streams_lua!(),
    r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 's', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if ARGV[4] == '' then
  redis.call('ZREM', KEYS[2], ARGV[5])
else
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
end
for k = 3, last_stream(ARGV[6]) do
  for i = 7, #ARGV do
    redis.call('XADD', KEYS[k], '*', 'e', ARGV[i])
  end
end
return 1
"
);

/// Compare-and-set commit, with the session's rate check folded in.
///
/// The switch limit's GCRA TAT is the state hash's field `r` (µs), read by
/// the same `HMGET` as the version and written by the same `HSET` as the
/// state: the check costs the script no command of its own, and the TAT
/// goes with the session (its TTL, its deletion).
///
/// KEYS: state, deadlines, then the streams the events go to and the
/// gate's key (as in [`CREATE`]). ARGV: expected version, new version, encoded state, ttl ms,
/// deadline score or `""`, member, rate check's now in µs or `""` (no
/// check), its interval µs, its burst µs, the webhook feed's gate (as in
/// [`CREATE`]), the number `n` of bus messages to publish, `n` pairs of
/// channel and message, then one encoded event per argument.
///
/// The messages are published (`PUBLISH`, in order) only when the commit
/// applies, in the same atomic step, so that no instance can commit a
/// version and die before telling the others. One server only: on Cluster a
/// session's channel is in another slot than its keys, and the bus
/// publishes instead.
///
/// Returns `{outcome, detail}`: `{1, TAT before}` when applied (the TAT
/// counted when a check was asked, `false` when none or a new key), `{0,
/// stored state}` on a version mismatch (so the caller decides again
/// without a load; the rate is not counted), `{-1, false}` when the session
/// is gone, `{2, TAT}` when the rate check refused. Nothing is written
/// unless 1.
const COMMIT: &str = concat!(
    gcra_lua!(),
    streams_lua!(),
    r"
local cur = redis.call('HMGET', KEYS[1], 'v', 's', 'r')
if not cur[1] then
  return {-1, false}
end
if cur[1] ~= ARGV[1] then
  return {0, cur[2]}
end
local tat = cur[3] or false
if ARGV[7] ~= '' then
  local allowed, new_tat = gcra_step(tat, ARGV[7], ARGV[8], ARGV[9])
  if not allowed then
    return {2, tat}
  end
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 's', ARGV[3], 'r', string.format('%.0f', new_tat))
else
  tat = false
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 's', ARGV[3])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if ARGV[5] == '' then
  redis.call('ZREM', KEYS[2], ARGV[6])
else
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[6])
end
local last_message = 11 + 2 * tonumber(ARGV[11])
for k = 3, last_stream(ARGV[10]) do
  for i = last_message + 1, #ARGV do
    redis.call('XADD', KEYS[k], '*', 'e', ARGV[i])
  end
end
for i = 12, last_message, 2 do
  redis.call('PUBLISH', ARGV[i], ARGV[i + 1])
end
return {1, tat}
"
);

/// Removes a session and its deadline entry.
///
/// KEYS: state, deadlines. ARGV: member. Returns how many state keys were removed (0 or 1).
const DELETE: &str = r"
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return n
";

/// Claims up to a quota of due deadlines in one partition (Redis Cluster,
/// where a script may only touch one slot; elsewhere [`CLAIM_ALL`]).
///
/// KEYS: deadlines. ARGV: now ms, quota, lease end ms, state-key prefix.
/// Takes the members due at or before now; drops those whose state key is
/// gone (TTL expiry or deletion) and moves the others' score to the lease
/// end, which hides them until then. A commit overwrites that score with the
/// true deadline or removes the entry; if nobody commits (the claimer died),
/// the entry is due again when the lease ends. Returns `{scanned, claimed}`,
/// where `scanned` counts the due members looked at (claimed or dropped), so
/// the caller can tell whether more may be due, and `claimed` is a flat list
/// `member, encoded state, ...` (the state read in the same atomic step,
/// so that firing the timeout needs no separate load).
const CLAIM: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local claimed = {}
for _, member in ipairs(due) do
  local state = redis.call('HGET', ARGV[4] .. member, 's')
  if state then
    redis.call('ZADD', KEYS[1], ARGV[3], member)
    claimed[#claimed + 1] = member
    claimed[#claimed + 1] = state
  else
    redis.call('ZREM', KEYS[1], member)
  end
end
return {#due, claimed}
";

/// [`CLAIM`] over many partitions in one call (standalone and Sentinel,
/// where one script may touch every partition): one round trip per poll
/// instead of one per partition, which is what an idle instance's poll
/// costs.
///
/// KEYS: the deadline indexes, in the order to visit them. ARGV: now ms,
/// budget (members claimed at most), lease end ms, byte budget (stop after
/// the states returned add up to this, so that a batch of very large
/// sessions stays a bounded reply), then one state-key prefix per key.
/// Returns `{more, claimed}`: `more` is 1 when a budget ran out or a
/// partition may hold further due members, `claimed` as in [`CLAIM`].
const CLAIM_ALL: &str = r"
local budget = tonumber(ARGV[2])
local max_bytes = tonumber(ARGV[4])
local claimed = {}
local taken = 0
local bytes = 0
local more = 0
for i = 1, #KEYS do
  local left = budget - taken
  if left <= 0 or bytes >= max_bytes then
    more = 1
    break
  end
  local due = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', ARGV[1], 'LIMIT', 0, left)
  for _, member in ipairs(due) do
    local state = redis.call('HGET', ARGV[4 + i] .. member, 's')
    if state then
      redis.call('ZADD', KEYS[i], ARGV[3], member)
      claimed[#claimed + 1] = member
      claimed[#claimed + 1] = state
      taken = taken + 1
      bytes = bytes + #state
    else
      redis.call('ZREM', KEYS[i], member)
    end
  end
  if #due == left then
    more = 1
  end
end
return {more, claimed}
";

/// Reads outbox partitions for a consumer, in the order given, until
/// `count` entries are taken: in each, first (when `reclaim` is `1`)
/// entries other consumers left unacknowledged for `min idle` ms, then new
/// ones. Standalone and Sentinel pass every partition to visit in one call;
/// Cluster calls it per partition (one key: one slot).
///
/// KEYS: outbox streams. ARGV: group, consumer, min idle ms, count,
/// reclaim (`1` or `0`).
/// Creates a consumer group (from the stream's start, so no entry written
/// before it existed is skipped) when it is missing: on first use, or after a
/// Redis restart without persistence. Returns a flat list
/// `key index, id, payload, ...` (key index from 1; payload `''` for an
/// entry without an `e` field, which only a foreign writer could have added).
const READ: &str = r"
local group, consumer, idle = ARGV[1], ARGV[2], ARGV[3]
local want = tonumber(ARGV[4])
local reclaim = ARGV[5] == '1'
local function with_group(key, ...)
  local r = redis.pcall(...)
  if type(r) == 'table' and r.err and string.find(r.err, 'NOGROUP', 1, true) then
    local created = redis.pcall('XGROUP', 'CREATE', key, group, '0', 'MKSTREAM')
    if type(created) == 'table' and created.err and not string.find(created.err, 'BUSYGROUP', 1, true) then
      return created
    end
    r = redis.pcall(...)
  end
  return r
end
local out = {}
local taken = 0
local function take(k, entry)
  if entry then
    taken = taken + 1
    local fields = entry[2]
    local payload = ''
    for i = 1, #fields, 2 do
      if fields[i] == 'e' then
        payload = fields[i + 1]
      end
    end
    out[#out + 1] = tostring(k)
    out[#out + 1] = entry[1]
    out[#out + 1] = payload
  end
end
for k = 1, #KEYS do
  if taken >= want then
    break
  end
  local key = KEYS[k]
  if reclaim then
    local claimed = with_group(key, 'XAUTOCLAIM', key, group, consumer, idle, '0-0', 'COUNT', want - taken)
    if type(claimed) == 'table' and claimed.err then
      return claimed
    end
    for _, entry in ipairs(claimed[2]) do
      take(k, entry)
    end
  end
  if want > taken then
    local fresh = with_group(key, 'XREADGROUP', 'GROUP', group, consumer, 'COUNT', want - taken, 'STREAMS', key, '>')
    if type(fresh) == 'table' and fresh.err then
      return fresh
    end
    if fresh then
      for _, entry in ipairs(fresh[1][2]) do
        take(k, entry)
      end
    end
  end
end
return out
";

/// Acknowledges and deletes outbox entries, so acknowledged events neither
/// come back nor count in the backlog.
///
/// KEYS: outbox streams. ARGV: group, then for each key in turn the number
/// of its ids and the ids. Returns how many entries were deleted.
const ACK: &str = r"
local deleted = 0
local at = 2
for k = 1, #KEYS do
  local n = tonumber(ARGV[at])
  at = at + 1
  if n > 0 then
    local ids = {}
    for i = at, at + n - 1 do
      ids[#ids + 1] = ARGV[i]
    end
    at = at + n
    redis.call('XACK', KEYS[k], ARGV[1], unpack(ids))
    deleted = deleted + redis.call('XDEL', KEYS[k], unpack(ids))
  end
end
return deleted
";

/// Outbox backlogs: `{length, oldest id or '', ...}`, one pair per key.
///
/// KEYS: outbox streams.
const BACKLOG: &str = r"
local out = {}
for k = 1, #KEYS do
  local n = redis.call('XLEN', KEYS[k])
  local oldest = ''
  if n > 0 then
    oldest = redis.call('XRANGE', KEYS[k], '-', '+', 'COUNT', 1)[1][1]
  end
  out[#out + 1] = n
  out[#out + 1] = oldest
end
return out
";

/// Queues webhook deliveries, each unless already queued (idempotent per
/// (webhook id, event id)) and only for an endpoint that exists and is not
/// disabled.
///
/// KEYS: endpoints, off, due, age. ARGV: job key prefix, job set prefix,
/// then six per delivery: webhook id, event id, body, attempt, due ms, first
/// enqueued ms. Returns how many were queued.
const WH_ENQUEUE: &str = r"
local n = 0
for i = 3, #ARGV, 6 do
  local wid, eid = ARGV[i], ARGV[i + 1]
  local member = wid .. ':' .. eid
  local job = ARGV[1] .. member
  if redis.call('HEXISTS', KEYS[1], wid) == 1
    and redis.call('SISMEMBER', KEYS[2], wid) == 0
    and redis.call('EXISTS', job) == 0 then
    redis.call('HSET', job, 'body', ARGV[i + 2], 'attempt', ARGV[i + 3], 'due', ARGV[i + 4], 'first', ARGV[i + 5])
    redis.call('ZADD', KEYS[3], ARGV[i + 4], member)
    redis.call('ZADD', KEYS[4], ARGV[i + 5], member)
    redis.call('SADD', ARGV[2] .. wid, eid)
    n = n + 1
  end
end
return n
";

/// Claims due webhook deliveries, like [`CLAIM`] claims deadlines: each
/// member due at or before now gets the lease end as its score, which hides
/// it until then; if nobody finishes or reschedules it (the claimer died),
/// it is due again when the lease ends. Jobs of an endpoint that is gone or
/// disabled are dropped instead of returned.
///
/// KEYS: endpoints, off, due, age. ARGV: now ms, limit, lease end ms, job
/// key prefix, job set prefix. Returns `{scanned, claimed}`, `claimed` a
/// flat list `member, body, attempt, due, first, ...`.
const WH_CLAIM: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for _, member in ipairs(due) do
  local wid, eid = string.match(member, '^([^:]+):(.+)$')
  local job = ARGV[4] .. member
  local f = redis.call('HMGET', job, 'body', 'attempt', 'due', 'first')
  if wid and f[1] and f[2] and f[3] and f[4]
    and redis.call('HEXISTS', KEYS[1], wid) == 1
    and redis.call('SISMEMBER', KEYS[2], wid) == 0 then
    redis.call('ZADD', KEYS[3], ARGV[3], member)
    out[#out + 1] = member
    out[#out + 1] = f[1]
    out[#out + 1] = f[2]
    out[#out + 1] = f[3]
    out[#out + 1] = f[4]
  else
    redis.call('DEL', job)
    redis.call('ZREM', KEYS[3], member)
    redis.call('ZREM', KEYS[4], member)
    if wid then
      redis.call('SREM', ARGV[5] .. wid, eid)
    end
  end
end
return {#due, out}
";

/// Removes one delivery from the queue (no-op when it is not queued).
///
/// KEYS: due, age. ARGV: job key prefix, job set prefix, webhook id, event id.
const WH_FINISH: &str = r"
local member = ARGV[3] .. ':' .. ARGV[4]
redis.call('DEL', ARGV[1] .. member)
redis.call('ZREM', KEYS[1], member)
redis.call('ZREM', KEYS[2], member)
redis.call('SREM', ARGV[2] .. ARGV[3], ARGV[4])
return 1
";

/// Sets a queued delivery's next attempt and due time, ending its lease.
/// Returns 0 (and writes nothing) when it is not queued.
///
/// KEYS: due. ARGV: job key prefix, webhook id, event id, attempt, due ms.
const WH_RESCHEDULE: &str = r"
local member = ARGV[2] .. ':' .. ARGV[3]
local job = ARGV[1] .. member
if redis.call('EXISTS', job) == 0 then
  return 0
end
redis.call('HSET', job, 'attempt', ARGV[4], 'due', ARGV[5])
redis.call('ZADD', KEYS[1], ARGV[5], member)
return 1
";

/// Drops up to a batch of one endpoint's queued deliveries. The caller
/// repeats while some remain, so no call runs long however many there are.
///
/// KEYS: due, age. ARGV: job key prefix, the endpoint's job set key,
/// webhook id, batch size. Returns how many remain.
const WH_DROP_JOBS: &str = r"
local eids = redis.call('SPOP', ARGV[2], ARGV[4])
for _, eid in ipairs(eids) do
  local member = ARGV[3] .. ':' .. eid
  redis.call('DEL', ARGV[1] .. member)
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZREM', KEYS[2], member)
end
return redis.call('SCARD', ARGV[2])
";

/// Removes an endpoint and its delivery log (its jobs go with
/// [`WH_DROP_JOBS`]; new ones can no longer be queued).
///
/// KEYS: endpoints, off. ARGV: webhook id, log key. Returns 1 when it existed.
const WH_DELETE: &str = r"
local n = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('DEL', ARGV[2])
return n
";

/// Marks an endpoint disabled: its record (computed by the caller) replaces
/// the stored one, and its id joins the set of disabled endpoints, only if
/// it still exists (a concurrent delete wins).
///
/// KEYS: endpoints, off. ARGV: webhook id, the endpoint's new JSON.
/// Returns 1 when it existed.
const WH_DISABLE: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
";

/// Appends to a delivery log, keeping the newest records only.
///
/// KEYS: log. ARGV: the record's JSON, how many to keep.
const WH_RECORD: &str = r"
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
return 1
";

/// The queue's size and the oldest first-enqueued instant: `{count, score or ''}`.
///
/// KEYS: due, age.
const WH_STATS: &str = r"
local n = redis.call('ZCARD', KEYS[1])
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #oldest == 0 then
  return {n, ''}
end
return {n, oldest[2]}
";

/// One step of a walk over a partition's sessions (`SessionStore::list`):
/// `SCAN` from a cursor with a `MATCH` on the partition's state keys, the
/// state of each key found, until enough states were found, the scan is
/// complete, or the call's scan budget is spent. `SCAN` walks the keyspace
/// of the node that holds `KEYS[1]` (the call is routed there, so this works
/// on a Cluster too); the state keys it reads share `KEYS[1]`'s hash tag.
///
/// KEYS: the partition's deadline index (for routing only). ARGV: scan
/// cursor, match pattern, `COUNT` per scan, states wanted, scans at most.
/// Returns `{next cursor, {state, ...}}`; cursor `0` ends the partition.
const LIST: &str = r"
local cursor = ARGV[1]
local out = {}
local scans = 0
repeat
  local page = redis.call('SCAN', cursor, 'MATCH', ARGV[2], 'COUNT', ARGV[3])
  cursor = page[1]
  for _, key in ipairs(page[2]) do
    local state = redis.call('HGET', key, 's')
    if state then
      out[#out + 1] = state
    end
  end
  scans = scans + 1
until cursor == '0' or #out >= tonumber(ARGV[4]) or scans >= tonumber(ARGV[5])
return {cursor, out}
";

/// The scripts, hashed once.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) create: Script,
    pub(crate) commit: Script,
    pub(crate) delete: Script,
    pub(crate) claim: Script,
    pub(crate) claim_all: Script,
    pub(crate) read: Script,
    pub(crate) ack: Script,
    pub(crate) backlog: Script,
    pub(crate) wh_enqueue: Script,
    pub(crate) wh_claim: Script,
    pub(crate) wh_finish: Script,
    pub(crate) wh_reschedule: Script,
    pub(crate) wh_drop_jobs: Script,
    pub(crate) wh_delete: Script,
    pub(crate) wh_disable: Script,
    pub(crate) wh_record: Script,
    pub(crate) wh_stats: Script,
    pub(crate) list: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            create: Script::new(CREATE),
            commit: Script::new(COMMIT),
            delete: Script::new(DELETE),
            claim: Script::new(CLAIM),
            claim_all: Script::new(CLAIM_ALL),
            read: Script::new(READ),
            ack: Script::new(ACK),
            backlog: Script::new(BACKLOG),
            wh_enqueue: Script::new(WH_ENQUEUE),
            wh_claim: Script::new(WH_CLAIM),
            wh_finish: Script::new(WH_FINISH),
            wh_reschedule: Script::new(WH_RESCHEDULE),
            wh_drop_jobs: Script::new(WH_DROP_JOBS),
            wh_delete: Script::new(WH_DELETE),
            wh_disable: Script::new(WH_DISABLE),
            wh_record: Script::new(WH_RECORD),
            wh_stats: Script::new(WH_STATS),
            list: Script::new(LIST),
        }
    }

    /// The scripts of the session store and its outboxes, to preload at
    /// connect time. The webhook scripts load on first use (they are off
    /// the switch path).
    pub(crate) fn all(&self) -> [&Script; 9] {
        [
            &self.create,
            &self.commit,
            &self.delete,
            &self.claim,
            &self.claim_all,
            &self.read,
            &self.ack,
            &self.backlog,
            &self.list,
        ]
    }
}
