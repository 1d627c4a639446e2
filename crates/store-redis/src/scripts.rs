//! The Lua scripts that make each store operation one atomic round trip.
//!
//! Each script touches the keys of one partition only (one hash tag, so one
//! Cluster slot). Keys that are derived from a partition's state-key prefix
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

/// Creates a session unless its key exists.
///
/// KEYS: state, deadlines, outbox. ARGV: version, encoded state, ttl ms,
/// deadline score or `""`, member (session uuid), then one encoded event per
/// argument. Returns 1 when created, 0 when the key exists.
const CREATE: &str = r"
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
for i = 6, #ARGV do
  redis.call('XADD', KEYS[3], '*', 'e', ARGV[i])
end
return 1
";

/// Compare-and-set commit.
///
/// KEYS: state, deadlines, outbox. ARGV: expected version, new version,
/// encoded state, ttl ms, deadline score or `""`, member, then one encoded
/// event per argument. Returns 1 when applied, 0 on a version mismatch, -1
/// when the session is gone; nothing is written unless 1.
const COMMIT: &str = r"
local v = redis.call('HGET', KEYS[1], 'v')
if not v then
  return -1
end
if v ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 's', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if ARGV[5] == '' then
  redis.call('ZREM', KEYS[2], ARGV[6])
else
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[6])
end
for i = 7, #ARGV do
  redis.call('XADD', KEYS[3], '*', 'e', ARGV[i])
end
return 1
";

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

/// Reads one partition's outbox for a consumer: first entries other
/// consumers left unacknowledged for too long, then new ones.
///
/// KEYS: outbox stream. ARGV: group, consumer, min idle ms, count.
/// Creates the consumer group (from the stream's start, so no entry written
/// before it existed is skipped) when it is missing: on first use, or after a
/// Redis restart without persistence. Returns a flat list `id, payload, ...`
/// (payload `''` for an entry without an `e` field, which only a foreign
/// writer could have added).
const READ: &str = r"
local function autoclaim()
  return redis.pcall('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], '0-0', 'COUNT', ARGV[4])
end
local claimed = autoclaim()
if type(claimed) == 'table' and claimed.err then
  if string.find(claimed.err, 'NOGROUP', 1, true) then
    local created = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
    if type(created) == 'table' and created.err and not string.find(created.err, 'BUSYGROUP', 1, true) then
      return created
    end
    claimed = autoclaim()
    if type(claimed) == 'table' and claimed.err then
      return claimed
    end
  else
    return claimed
  end
end
local out = {}
local taken = 0
local function take(entry)
  if entry then
    taken = taken + 1
    local fields = entry[2]
    local payload = ''
    for i = 1, #fields, 2 do
      if fields[i] == 'e' then
        payload = fields[i + 1]
      end
    end
    out[#out + 1] = entry[1]
    out[#out + 1] = payload
  end
end
for _, entry in ipairs(claimed[2]) do
  take(entry)
end
local want = tonumber(ARGV[4]) - taken
if want > 0 then
  local fresh = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', want, 'STREAMS', KEYS[1], '>')
  if fresh then
    for _, entry in ipairs(fresh[1][2]) do
      take(entry)
    end
  end
end
return out
";

/// Acknowledges and deletes outbox entries, so acknowledged events neither
/// come back nor count in the backlog.
///
/// KEYS: outbox stream. ARGV: group, then entry ids.
const ACK: &str = r"
local ids = {}
for i = 2, #ARGV do
  ids[#ids + 1] = ARGV[i]
end
if #ids == 0 then
  return 0
end
redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
return redis.call('XDEL', KEYS[1], unpack(ids))
";

/// One partition's outbox backlog: `{length, oldest id or ''}`.
///
/// KEYS: outbox stream.
const BACKLOG: &str = r"
local n = redis.call('XLEN', KEYS[1])
if n == 0 then
  return {0, ''}
end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
return {n, first[1][1]}
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
            list: Script::new(LIST),
        }
    }

    /// All of them, to preload at connect time.
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
