// SyncKairos browser SDK: why this file exists.
//
// A SyncKairos server keeps authoritative clock state and pushes it over a
// WebSocket; a screen must show the same numbers as every other screen
// without counting down on its own (docs/protocol.md, "The time model":
// calculate, don't count). This dependency-free ES module does the client half of that:
// it keeps the latest session view in version order, measures the offset
// between this machine's clock and the server's from PING/PONG round trips,
// computes every clock for display from (last view, corrected now), sends
// the clock commands over the socket, reconnects with backoff, and exposes a
// plain subscribe/getSnapshot store usable from React, Vue or vanilla JS.
// Time controls of real events (stages, simple and Bronstein delay, lag
// compensation, time warnings, added time) are shown and sent the same way.
// Served by kairos-server at /sdk/kairos.js, typed by /sdk/kairos.d.ts;
// documented in docs/sdk.md.

export const SDK_VERSION = '0.2.0';

/** An error from the server (`ERROR` message or close code) or from the SDK. */
export class KairosError extends Error {
  constructor(code, message, details) {
    super(message);
    this.name = 'KairosError';
    this.code = code;
    if (details !== undefined) this.details = details;
  }
}

// ---------------------------------------------------------------------------
// Clock offset estimation.

/**
 * Estimates `server clock - client clock` from round trips.
 *
 * A sample is (sent, received) on the client's clock and the server's
 * timestamp taken in between. Its offset is `server - received + rtt/2`:
 * exact when both legs take equally long, off by half their difference
 * otherwise. Whatever the legs, the true offset lies in the sample's
 * interval `[server - received, server + resolution - sent]` (`resolution`:
 * the server's timestamps are whole milliseconds, truncated), which is as
 * wide as the round trip: samples with the smallest round trips pin the
 * offset down best. The estimate is the middle of the range that every
 * sample of the last `window` allows (the intersection of their intervals),
 * which those samples bound, and large round trips (queues, a slow leg)
 * cannot drag off; `bound` is its half-width, a guaranteed error bound, and
 * `uncertainty` half the best round trip (the looser, simpler figure).
 * A sample whose interval cannot be reconciled with the older ones means a
 * clock jumped or drifted (the machine slept, the wall clock was set,
 * another instance answers): the oldest samples are dropped until the rest
 * agree.
 */
export class OffsetEstimator {
  constructor({ window = 8, resolution = 1 } = {}) {
    this.window = Math.max(1, window);
    this.resolution = Math.max(0, resolution);
    this._samples = [];
    this._provisional = null;
    this._estimate = null;
    this.resets = 0;
  }

  /**
   * Adds a round trip; returns the sample or null when it is unusable
   * (negative round trip, non-finite numbers).
   */
  addSample({ sent, received, server }) {
    if (![sent, received, server].every(Number.isFinite)) return null;
    const rtt = received - sent;
    if (rtt < 0) return null;
    const lo = server - received;
    const hi = server + this.resolution - sent;
    const sample = { sent, received, server, rtt, lo, hi, offset: (lo + hi) / 2 };
    this._samples.push(sample);
    if (this._samples.length > this.window) this._samples.shift();
    let dropped = false;
    while (this._samples.length > 1 && !this._intersection()) {
      this._samples.shift();
      dropped = true;
    }
    if (dropped) this.resets += 1;
    this._recompute();
    return sample;
  }

  /** The intersection of the kept samples' intervals, or null if empty. */
  _intersection() {
    let lo = -Infinity;
    let hi = Infinity;
    for (const s of this._samples) {
      lo = Math.max(lo, s.lo);
      hi = Math.min(hi, s.hi);
    }
    // A hair of tolerance for floating-point rounding only.
    return hi + 1e-6 >= lo ? { lo, hi: Math.max(lo, hi) } : null;
  }

  /** A rough offset to use before any round trip was measured (e.g. `timestamp - received`). */
  setProvisional(offset) {
    if (Number.isFinite(offset)) this._provisional = offset;
  }

  /** Forgets every sample (the estimate stays until a new sample arrives). */
  reset() {
    this._samples = [];
  }

  _recompute() {
    const range = this._intersection();
    const best = Math.min(...this._samples.map((s) => s.rtt));
    this._estimate = {
      offset: (range.lo + range.hi) / 2,
      bound: (range.hi - range.lo) / 2,
      uncertainty: best / 2,
      rtt: best,
    };
  }

  /** Server minus client clock in ms, or null before anything is known. */
  get offset() {
    if (this._estimate) return this._estimate.offset;
    return this._provisional;
  }

  /** Half the best round trip among the kept samples, in ms; null before the first sample. */
  get uncertainty() {
    return this._estimate ? this._estimate.uncertainty : null;
  }

  /** Half the width of the range every kept sample allows: the offset is within this of the truth. */
  get bound() {
    return this._estimate ? this._estimate.bound : null;
  }

  /** The best round trip among the kept samples, or null. */
  get rtt() {
    return this._estimate ? this._estimate.rtt : null;
  }

  /** The most recent sample's round trip, or null. */
  get lastRtt() {
    const last = this._samples[this._samples.length - 1];
    return last ? last.rtt : null;
  }

  /** How many samples are kept. */
  get sampleCount() {
    return this._samples.length;
  }
}

// ---------------------------------------------------------------------------
// Display math: the clocks at any server instant, from the last view.

function num(v) {
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

function clamp0(v) {
  return v > 0 ? v : 0;
}

/**
 * How long the running clock can still run after `state.server_time_ms`
 * before it hits zero (or the stopwatch its limit); Infinity when nothing
 * can run out. Past that instant the server applies the timeout as of the
 * deadline, so nothing moves any further until the next view arrives.
 */
function runningBudget(state, hold = 0) {
  const mode = state.sync_mode;
  const participants = state.participants || [];
  if (mode === 'per_participant' || mode === 'per_cycle') {
    const active = participants.find((p) => p.is_active);
    return active ? hold + clamp0(num(active.time_remaining_ms) ?? 0) : Infinity;
  }
  if (mode === 'per_group') {
    const group = (state.groups || []).find((g) => g.is_active);
    return group ? hold + clamp0(num(group.time_remaining_ms) ?? 0) : Infinity;
  }
  if (mode === 'global') {
    const left = num(state.time_remaining_ms);
    return left === null ? Infinity : clamp0(left);
  }
  if (mode === 'count_up') {
    const max = num(state.max_time_ms);
    return max === null ? Infinity : clamp0(max - (num(state.elapsed_ms) ?? 0));
  }
  return Infinity;
}

/**
 * The delay mode (`none`, `simple`, `bronstein`) that applies to a clock at
 * `stageIndex`: that stage's when the session has `stages`, else the
 * session-level `delay_mode`.
 */
export function delayModeOf(state, stageIndex) {
  if (!state) return 'none';
  const stages = Array.isArray(state.stages) ? state.stages : [];
  if (stages.length > 0) {
    const i = Math.min(Math.max(0, num(stageIndex) ?? 0), stages.length - 1);
    return (stages[i] && stages[i].delay_mode) || 'none';
  }
  return state.delay_mode || 'none';
}

/** The running clock's entry (participant or group) and its delay, as of the view. */
function activeDelay(state) {
  const mode = state.sync_mode;
  let clock = null;
  if (mode === 'per_participant' || mode === 'per_cycle') {
    clock = (state.participants || []).find((p) => p.is_active) || null;
  } else if (mode === 'per_group') {
    clock = (state.groups || []).find((g) => g.is_active) || null;
  }
  const left = clock ? num(clock.delay_remaining_ms) : null;
  if (left === null) return { mode: 'none', left: null };
  return { mode: delayModeOf(state, clock.stage_index), left: clamp0(left) };
}

/**
 * Every clock of `state` (a session view) as of `serverNow` (server ms).
 *
 * Only the running clock moves, by `serverNow - state.server_time_ms`, and
 * only while `status` is `running`: the active participant (per_participant,
 * per_cycle), the active group and its members (per_group), the session
 * countdown and everyone on it (global), the stopwatch (count_up: `elapsed_ms`
 * grows, the time left to `max_time_ms` shrinks). Nothing goes below 0 or
 * past the deadline; an instant before `server_time_ms` shows the view as is.
 * Delay (docs/protocol.md, time controls): the running clock's
 * `delay_remaining_ms` D runs down by the same elapsed time. In `simple`
 * mode the main clock holds at its value until D is used up, then runs (the
 * deadline is D + R after `server_time_ms`); in `bronstein` mode it runs as
 * usual and D is what the move can still get back. `delay_remaining_ms` is
 * null for clocks without a delay; `delay_mode` says which mode applies,
 * and `in_delay` whether a simple delay holds the clock at that instant.
 * Each clock also carries `stage_index` (0 when absent), `moves_to_next_stage`
 * and `lag_quota_ms` (null when absent), so views of older servers read as
 * stage 0 without delay.
 * A pure function: the same inputs give the same numbers on every screen.
 */
export function computeDisplay(state, serverNow) {
  if (!state) return null;
  const running = state.status === 'running';
  const at = num(state.server_time_ms) ?? serverNow;
  const raw = running && Number.isFinite(serverNow) ? clamp0(serverNow - at) : 0;
  const delay = activeDelay(state);
  // Simple delay: the main clock does not run for the first `hold` ms.
  const hold = delay.mode === 'simple' ? delay.left : 0;
  const budget = runningBudget(state, hold);
  const elapsed = Math.min(raw, budget);
  // What the main clock has run (elapsed minus the simple delay's hold).
  const dt = clamp0(elapsed - hold);
  const delayLeft = delay.left === null ? null : clamp0(delay.left - elapsed);
  // Whether the running clock still moves at this instant (not yet at its deadline).
  const ticking = running && raw < budget;
  const mode = state.sync_mode;
  const activeGroup = state.active_group_id ?? null;

  const participants = (state.participants || []).map((p) => {
    let ticks;
    switch (mode) {
      case 'per_participant':
      case 'per_cycle':
        ticks = !!p.is_active;
        break;
      case 'per_group':
        ticks = activeGroup !== null && p.group_id === activeGroup;
        break;
      case 'global':
        ticks = true;
        break;
      case 'count_up':
        ticks = num(state.max_time_ms) !== null;
        break;
      default:
        ticks = !!p.is_active;
    }
    const remaining = num(p.time_remaining_ms) ?? 0;
    const used = num(p.time_used_ms) ?? 0;
    const ownDelay = num(p.delay_remaining_ms);
    const delayHere = ownDelay !== null && ticks && delayLeft !== null && mode !== 'per_group';
    return {
      ...p,
      time_remaining_ms: clamp0(ticks ? remaining - dt : remaining),
      time_used_ms: p.is_active ? used + dt : used,
      running: ticking && ticks,
      stage_index: num(p.stage_index) ?? 0,
      moves_to_next_stage: num(p.moves_to_next_stage),
      delay_remaining_ms: delayHere ? delayLeft : ownDelay,
      delay_mode: delayModeOf(state, p.stage_index),
      in_delay: delayHere && hold > 0 && ticking && delayLeft > 0,
      lag_quota_ms: num(p.lag_quota_ms),
    };
  });

  const groups = (state.groups || []).map((g) => {
    const remaining = num(g.time_remaining_ms) ?? 0;
    const used = num(g.time_used_ms) ?? 0;
    const ownDelay = num(g.delay_remaining_ms);
    const delayHere = ownDelay !== null && !!g.is_active && delayLeft !== null && mode === 'per_group';
    return {
      ...g,
      time_remaining_ms: clamp0(g.is_active ? remaining - dt : remaining),
      time_used_ms: g.is_active ? used + dt : used,
      running: ticking && !!g.is_active,
      stage_index: num(g.stage_index) ?? 0,
      moves_to_next_stage: num(g.moves_to_next_stage),
      delay_remaining_ms: delayHere ? delayLeft : ownDelay,
      delay_mode: delayModeOf(state, g.stage_index),
      in_delay: delayHere && hold > 0 && ticking && delayLeft > 0,
    };
  });

  const globalLeft = num(state.time_remaining_ms);
  const byId = {};
  for (const p of participants) byId[p.participant_id] = p;
  return {
    server_now: serverNow,
    session_id: state.session_id,
    version: state.version,
    status: state.status,
    sync_mode: mode,
    running,
    ticking,
    active_participant_id: state.active_participant_id ?? null,
    active_group_id: activeGroup,
    participants,
    byId,
    groups,
    time_remaining_ms: globalLeft === null ? null : clamp0(globalLeft - dt),
    elapsed_ms: (num(state.elapsed_ms) ?? 0) + dt,
    max_time_ms: num(state.max_time_ms),
    delay_mode: delay.mode,
    delay_remaining_ms: delayLeft,
    lag_compensation: !!(state.lag_compensation && state.lag_compensation.enabled),
  };
}

/** `ms` as `H:MM:SS`, `M:SS` or, under `tenthsBelowMs` (default 10 s), `M:SS.t`. */
export function formatMs(ms, { tenthsBelowMs = 10_000 } = {}) {
  const v = Math.max(0, Math.floor(ms ?? 0));
  // Round down: a clock that shows 0:00 has run out, never one that has 0.4 s left.
  const tenths = Math.floor(v / 100) % 10;
  const totalS = Math.floor(v / 1000);
  const h = Math.floor(totalS / 3600);
  const m = Math.floor((totalS % 3600) / 60);
  const s = totalS % 60;
  const ss = String(s).padStart(2, '0');
  const base = h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
  return v < tenthsBelowMs ? `${base}.${tenths}` : base;
}

// ---------------------------------------------------------------------------
// The client.

/**
 * This machine's clock in ms since the epoch, made monotonic: the wall clock
 * read once, advanced by `performance.now()`, so a wall-clock step after
 * load does not move displayed clocks (the offset absorbs the base).
 */
export function monotonicClock() {
  const perf = globalThis.performance;
  if (!perf || typeof perf.now !== 'function') return () => Date.now();
  const wall0 = Date.now();
  const perf0 = perf.now();
  return () => wall0 + (perf.now() - perf0);
}

const DEFAULTS = {
  pingIntervalMs: 4000,
  burstPings: 5,
  burstSpacingMs: 120,
  offsetWindow: 8,
  commandTimeoutMs: 10_000,
  backoff: { initialMs: 500, maxMs: 15_000, factor: 2, jitter: 0.5 },
};

/** The largest `lag_ms` a switch may carry (docs/protocol.md, lag compensation). */
const MAX_LAG_MS = 10_000;

// The EVENT types `on()` also offers by their own name (`warning` is time_warning's).
const NAMED_EVENTS = new Set([
  'time_added',
  'participant_joined',
  'participant_left',
  'presence_joined',
  'presence_left',
]);

/** Close codes after which reconnecting cannot help. */
const FATAL_CLOSES = {
  4404: 'SESSION_NOT_FOUND',
  1008: 'POLICY_VIOLATION',
};

/**
 * The reason of the 1008 close the server sends once the socket's token has
 * expired: the one policy close after which a fresh token (`getToken`) helps.
 */
const TOKEN_EXPIRED = 'token expired';

function defaultBaseUrl() {
  const loc = globalThis.location;
  return loc && loc.origin && loc.origin !== 'null' ? loc.origin : 'http://127.0.0.1:8080';
}

/**
 * One session's live state over one WebSocket.
 *
 * ```js
 * const client = new KairosClient({ sessionId });
 * const stop = client.subscribe(() => render(client.getSnapshot()));
 * requestAnimationFrame(function frame() { draw(client.display()); requestAnimationFrame(frame); });
 * await client.switch({ expectedVersion: client.getSnapshot().version });
 * ```
 *
 * With `getToken` (a function returning a JWT or a promise of one), every
 * connect asks for the token, and a socket the server closes because its
 * token expired (1008 `token expired`) is reopened with a fresh one.
 */
export class KairosClient {
  constructor(options = {}) {
    if (!options.sessionId) throw new KairosError('VALIDATION_ERROR', 'sessionId is required');
    this.sessionId = String(options.sessionId);
    this.baseUrl = String(options.baseUrl ?? defaultBaseUrl()).replace(/\/+$/, '');
    // With getToken, every connect asks it for the token (the static one is
    // ignored); without it, `token` (or setToken's) is used as is.
    this._getToken = typeof options.getToken === 'function' ? options.getToken : null;
    this.token = this._getToken ? null : (options.token ?? null);
    // A socket URL given by the caller is used as is: tokens never rewrite it.
    this._fixedWsUrl = options.wsUrl != null;
    this.wsUrl = options.wsUrl ?? KairosClient.socketUrl(this.baseUrl, this.sessionId, this.token);
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this._fetch = options.fetch ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : null);
    this._clock = options.clock ?? monotonicClock();
    this._setTimeout = options.setTimeout ?? globalThis.setTimeout.bind(globalThis);
    this._clearTimeout = options.clearTimeout ?? globalThis.clearTimeout.bind(globalThis);
    this._random = options.random ?? Math.random;
    this.pingIntervalMs = options.pingIntervalMs ?? DEFAULTS.pingIntervalMs;
    this.burstPings = options.burstPings ?? DEFAULTS.burstPings;
    this.burstSpacingMs = options.burstSpacingMs ?? DEFAULTS.burstSpacingMs;
    this.commandTimeoutMs = options.commandTimeoutMs ?? DEFAULTS.commandTimeoutMs;
    this.backoff = { ...DEFAULTS.backoff, ...(options.backoff || {}) };
    this.estimator = new OffsetEstimator({ window: options.offsetWindow ?? DEFAULTS.offsetWindow });

    this._listeners = new Set();
    this._eventListeners = new Map(); // 'warning' | 'time_added' | 'event' -> Set of listeners
    if (typeof options.onWarning === 'function') this.on('warning', options.onWarning);
    this._ws = null;
    this._stopped = true;
    this._attempt = 0;
    this._reconnectTimer = null;
    this._pendingToken = null; // the connect waiting for getToken, if any
    this._tokenExpired = false; // reconnecting because the server said `token expired`
    this._pingTimer = null;
    this._burstLeft = 0;
    this._pings = new Map(); // client_time_ms -> { kind: 'probe' | 'barrier', command? }
    this._commands = new Map(); // request_id -> pending command
    this._nextRequest = 1;
    this._resyncRequested = false;
    this._snapshot = Object.freeze({
      connection: 'idle',
      state: null,
      version: 0,
      offset: null,
      uncertainty: null,
      rtt: null,
      samples: 0,
      error: null,
      lastEvent: null,
      reconnectAttempt: 0,
      deleted: false,
    });

    // Bound so they can be passed around (useSyncExternalStore, callbacks).
    this.subscribe = this.subscribe.bind(this);
    this.getSnapshot = this.getSnapshot.bind(this);
    this.now = this.now.bind(this);

    if (options.autoConnect !== false) this.connect();
  }

  /** The WebSocket URL of a session on `baseUrl` (http -> ws, https -> wss). */
  static socketUrl(baseUrl, sessionId, token) {
    const base = String(baseUrl).replace(/\/+$/, '').replace(/^http/i, 'ws');
    let url = `${base}/ws?sessionId=${encodeURIComponent(sessionId)}`;
    if (token) url += `&token=${encodeURIComponent(token)}`;
    return url;
  }

  // -- store API -------------------------------------------------------------

  /** Calls `listener()` after every change of the snapshot; returns the unsubscribe function. */
  subscribe(listener) {
    this._listeners.add(listener);
    return () => {
      this._listeners.delete(listener);
    };
  }

  /** The current snapshot: a frozen object, the same one until something changes. */
  getSnapshot() {
    return this._snapshot;
  }

  _update(patch) {
    const next = { ...this._snapshot, ...patch };
    const changed = Object.keys(patch).some((k) => !Object.is(this._snapshot[k], next[k]));
    if (!changed) return;
    this._snapshot = Object.freeze(next);
    for (const listener of [...this._listeners]) {
      try {
        listener(this._snapshot);
      } catch (err) {
        // A listener's bug must not break the socket handling.
        setTimeout(() => {
          throw err;
        });
      }
    }
  }

  // -- time --------------------------------------------------------------------

  /** Server time now (ms since the epoch): this machine's clock plus the measured offset. */
  now() {
    return this._clock() + (this.estimator.offset ?? 0);
  }

  /** Server minus client clock in ms (null before the first message). */
  get offset() {
    return this.estimator.offset;
  }

  /** Half the best round trip: how far `offset` can be off, in ms (null before the first PONG). */
  get uncertainty() {
    return this.estimator.uncertainty;
  }

  /** A guaranteed bound on the offset's error in ms (null before the first PONG); at most `uncertainty` plus half a ms. */
  get bound() {
    return this.estimator.bound;
  }

  /** The best recent round trip in ms (null before the first PONG). */
  get rtt() {
    return this.estimator.rtt;
  }

  /** Every clock of the session at `serverNow` (default: now), or null before the first state. */
  display(serverNow = this.now()) {
    return computeDisplay(this._snapshot.state, serverNow);
  }

  // -- connection --------------------------------------------------------------

  /** Opens the socket (done by the constructor unless `autoConnect: false`). */
  connect() {
    if (!this._stopped && (this._ws || this._pendingToken)) return;
    this._stopped = false;
    this._open();
  }

  /**
   * Replaces the token for the next connect and for REST calls; the open
   * socket keeps the one it connected with. With `getToken`, the next
   * connect's `getToken()` result replaces it in turn.
   */
  setToken(token) {
    this.token = token ?? null;
    if (!this._fixedWsUrl) this.wsUrl = KairosClient.socketUrl(this.baseUrl, this.sessionId, this.token);
  }

  /** Closes the socket for good: no reconnect; pending commands are rejected. */
  close() {
    this._stopped = true;
    this._pendingToken = null;
    this._tokenExpired = false;
    this._clearTimers();
    this._rejectAll(new KairosError('CLOSED', 'the client was closed'));
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      try {
        ws.close(1000, 'client closed');
      } catch {
        // Already closed.
      }
    }
    this._update({ connection: 'closed' });
  }

  _open() {
    this._clearTimers();
    if (!this._WebSocket) {
      this._fail(new KairosError('UNSUPPORTED', 'no WebSocket implementation available'));
      return;
    }
    this._update({ connection: this._attempt > 0 ? 'reconnecting' : 'connecting' });
    if (!this._getToken) {
      this._openSocket();
      return;
    }
    // Ask for a token first. A close() or another connect() meanwhile
    // replaces `_pendingToken`, which makes this answer moot.
    const pending = {};
    this._pendingToken = pending;
    let result;
    try {
      result = this._getToken();
    } catch (err) {
      this._onToken(pending, err ?? new Error('getToken threw'), null);
      return;
    }
    if (result && typeof result.then === 'function') {
      result.then(
        (token) => this._onToken(pending, null, token),
        (err) => this._onToken(pending, err ?? new Error('getToken rejected'), null),
      );
    } else {
      // A plain string: connect at once, as with a static token.
      this._onToken(pending, null, result);
    }
  }

  /** getToken's answer for the connect `pending`: connects with the token, or fails for good. */
  _onToken(pending, error, token) {
    if (this._pendingToken !== pending) return;
    this._pendingToken = null;
    if (this._stopped) return;
    if (!error && (typeof token !== 'string' || token === '')) error = new Error('getToken returned no token');
    if (error) {
      const why = String(error && error.message ? error.message : error);
      const expired = this._tokenExpired;
      this._fail(
        new KairosError(
          'TOKEN_UNAVAILABLE',
          expired ? `${TOKEN_EXPIRED}, and getToken failed: ${why}` : `getToken failed: ${why}`,
          expired ? { close_code: 1008, reason: TOKEN_EXPIRED, cause: error } : { cause: error },
        ),
      );
      return;
    }
    this.token = token;
    if (!this._fixedWsUrl) this.wsUrl = KairosClient.socketUrl(this.baseUrl, this.sessionId, token);
    this._openSocket();
  }

  _openSocket() {
    let ws;
    try {
      ws = new this._WebSocket(this.wsUrl);
    } catch (err) {
      this._fail(new KairosError('CONNECT_FAILED', String(err && err.message ? err.message : err)));
      return;
    }
    this._ws = ws;
    this._resyncRequested = false;
    this._pings.clear();
    ws.onmessage = (ev) => {
      if (this._ws === ws) this._onMessage(ev.data);
    };
    ws.onclose = (ev) => {
      if (this._ws === ws) this._onClose(ev.code, ev.reason);
    };
    ws.onerror = () => {
      // Always followed by `close`, which decides what to do.
    };
  }

  _fail(error) {
    this._stopped = true;
    this._pendingToken = null;
    this._tokenExpired = false;
    this._clearTimers();
    this._rejectAll(error);
    this._update({ connection: 'error', error });
  }

  _onClose(code, reason) {
    this._ws = null;
    this._clearTimers();
    this._rejectAll(
      new KairosError('DISCONNECTED', 'the connection closed before the command was confirmed', { code }),
    );
    if (this._stopped) return;
    if (this._snapshot.deleted) {
      this._stopped = true;
      this._update({ connection: 'closed' });
      return;
    }
    if (code === 1008 && reason === TOKEN_EXPIRED && this._getToken) {
      // The socket outlived its token: come back with a fresh one from
      // getToken (asked for when the delay is over), from the first step.
      this._tokenExpired = true;
      this._attempt = 0;
      this._scheduleReconnect();
      return;
    }
    const fatal = FATAL_CLOSES[code];
    if (fatal) {
      // Without getToken a `token expired` close ends here too: reconnecting
      // with the same token would only be refused. `reason` tells them apart.
      this._fail(
        new KairosError(fatal, reason || `the server closed the connection (${code})`, {
          close_code: code,
          reason: reason || '',
        }),
      );
      return;
    }
    // Anything else (1001 going away, 1006 network, 1011, 1013, ...):
    // reconnect, to whichever instance the same URL reaches.
    this._scheduleReconnect();
  }

  _scheduleReconnect() {
    const { initialMs, maxMs, factor, jitter } = this.backoff;
    const ceiling = Math.min(maxMs, initialMs * factor ** this._attempt);
    // "Equal jitter": at least (1 - jitter) of the ceiling, so clients that
    // lost the same instance spread out without reconnecting instantly.
    const delay = ceiling * (1 - jitter) + ceiling * jitter * this._random();
    this._attempt += 1;
    this._update({ connection: 'reconnecting', reconnectAttempt: this._attempt });
    this._reconnectTimer = this._setTimeout(() => {
      this._reconnectTimer = null;
      if (!this._stopped) this._open();
    }, delay);
    return delay;
  }

  _clearTimers() {
    if (this._reconnectTimer !== null) this._clearTimeout(this._reconnectTimer);
    if (this._pingTimer !== null) this._clearTimeout(this._pingTimer);
    this._reconnectTimer = null;
    this._pingTimer = null;
  }

  _send(message) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    try {
      ws.send(JSON.stringify(message));
      return true;
    } catch {
      return false;
    }
  }

  // -- pings -------------------------------------------------------------------

  _startPings() {
    this._burstLeft = this.burstPings;
    this._pingTick();
  }

  _pingTick() {
    this._pingTimer = null;
    if (!this._ws) return;
    this._ping('probe');
    let wait = this.pingIntervalMs;
    if (this._burstLeft > 0) {
      this._burstLeft -= 1;
      if (this._burstLeft > 0) wait = this.burstSpacingMs;
    }
    this._pingTimer = this._setTimeout(() => this._pingTick(), wait);
  }

  /** Sends a PING whose `client_time_ms` (unique among those in flight) identifies its PONG. */
  _ping(kind, command) {
    let t = this._clock();
    while (this._pings.has(t)) t += 0.001;
    // Forget probes that never came back, so the map stays small.
    if (this._pings.size > 64) this._pings.clear();
    this._pings.set(t, { kind, command });
    if (!this._send({ type: 'PING', client_time_ms: t })) this._pings.delete(t);
  }

  _onPong(msg, received) {
    const sent = msg.client_time_ms;
    const ping = this._pings.get(sent);
    if (!ping) return;
    this._pings.delete(sent);
    if (ping.kind === 'barrier') {
      // The server handles one client message at a time: this PONG means it
      // is done with the command sent just before the PING. Had it failed,
      // its ERROR would have come first.
      const cmd = this._commands.get(ping.command);
      if (cmd) {
        cmd.confirmed = true;
        this._settleCommands();
      }
      return;
    }
    const sample = this.estimator.addSample({ sent, received, server: msg.timestamp });
    if (sample) this._publishOffset();
  }

  _publishOffset() {
    this._update({
      offset: this.estimator.offset,
      uncertainty: this.estimator.uncertainty,
      rtt: this.estimator.rtt,
      samples: this.estimator.sampleCount,
    });
  }

  // -- messages ------------------------------------------------------------------

  _onMessage(data) {
    const received = this._clock();
    let msg;
    try {
      msg = JSON.parse(typeof data === 'string' ? data : String(data));
    } catch {
      return;
    }
    if (!msg || typeof msg !== 'object') return;
    switch (msg.type) {
      case 'CONNECTED':
        if (this.estimator.offset === null && Number.isFinite(msg.timestamp)) {
          // Until the first PONG: good to within one network leg.
          this.estimator.setProvisional(msg.timestamp - received);
          this._publishOffset();
        }
        // A new connection may reach another instance: measure afresh.
        this.estimator.reset();
        this._tokenExpired = false;
        this._update({ connection: 'open', error: null });
        this._startPings();
        break;
      case 'STATE_SYNC':
        this._resyncRequested = false;
        this._attempt = 0;
        this._update({ reconnectAttempt: 0 });
        this._applyState(msg.state);
        break;
      case 'STATE_UPDATE':
        this._onUpdate(msg.state);
        break;
      case 'PONG':
        this._onPong(msg, received);
        break;
      case 'EVENT':
        this._onEvent(msg.event ?? null);
        break;
      case 'ERROR':
        this._onError(msg);
        break;
      case 'SESSION_DELETED':
        this._rejectAll(new KairosError('SESSION_DELETED', 'the session was deleted'));
        this._update({
          deleted: true,
          error: new KairosError('SESSION_DELETED', 'the session was deleted'),
        });
        break;
      default:
        break;
    }
  }

  _onUpdate(state) {
    if (!state || !Number.isFinite(state.version)) return;
    const current = this._snapshot.version;
    if (state.version <= current) return;
    if (current > 0 && state.version > current + 1 && !this._resyncRequested) {
      // A version went missing: the view is complete, so show it, and ask
      // for a fresh snapshot to be sure nothing else was lost.
      this._resyncRequested = this._send({ type: 'RECONNECT' });
    }
    this._applyState(state);
  }

  _applyState(state) {
    if (!state || !Number.isFinite(state.version)) return;
    if (state.version <= this._snapshot.version) return;
    this._update({ state, version: state.version });
    this._settleCommands();
  }

  _onError(msg) {
    const error = new KairosError(msg.code || 'ERROR', msg.message || 'the server refused a message', msg.details);
    const rid = msg.request_id;
    if (rid !== undefined && rid !== null && this._commands.has(rid)) {
      const cmd = this._commands.get(rid);
      this._finishCommand(cmd);
      cmd.reject(error);
      return;
    }
    this._update({ error });
  }

  // -- commands ------------------------------------------------------------------

  /**
   * Ends the active participant's turn; resolves with the view that shows it.
   * When the session has `lag_compensation.enabled`, the switch carries
   * `lag_ms`: `lagMs` if given, else half the latest measured round trip
   * (rounded, clamped to 0..=10000); nothing before the first PONG.
   */
  switch({ nextParticipantId, expectedVersion, lagMs } = {}) {
    return this._command('SWITCH', {
      next_participant_id: nextParticipantId,
      expected_version: expectedVersion,
      lag_ms: this.lagMs(lagMs),
    });
  }

  /**
   * The `lag_ms` a switch sends now: undefined when the session has no lag
   * compensation (or nothing was measured), else `explicit` or half the
   * latest round trip, rounded and clamped to 0..=10000.
   */
  lagMs(explicit) {
    const state = this._snapshot.state;
    if (!state || !state.lag_compensation || state.lag_compensation.enabled !== true) return undefined;
    const rtt = this.estimator.lastRtt ?? this.estimator.rtt;
    const raw = Number.isFinite(explicit) ? explicit : rtt === null ? null : rtt / 2;
    if (raw === null) return undefined;
    return Math.min(MAX_LAG_MS, Math.max(0, Math.round(raw)));
  }

  /**
   * The arbiter's added time (`ADD_TIME`, owner or admin): `ms` (1..=3600000)
   * more on the bank of a participant or, with `{ groupId }`, a group.
   * `target` is a participant id, or `{ participantId }` / `{ groupId }`.
   */
  addTime(target, ms, reason, { expectedVersion } = {}) {
    const t = typeof target === 'string' ? { participantId: target } : target || {};
    return this._command('ADD_TIME', {
      participant_id: t.participantId,
      group_id: t.groupId,
      ms,
      reason,
      expected_version: expectedVersion,
    });
  }

  /**
   * Calls `listener(event)` for every server `EVENT` of kind `name`:
   * `warning` (the `time_warning` events: `participant_id` or `group_id`,
   * `time_remaining_ms` = the threshold, `at_ms`), `time_added`,
   * `participant_joined`, `participant_left`, `presence_joined`,
   * `presence_left` (the events of that `event_type`), or `event` (all of
   * them). Returns the unsubscribe function.
   */
  on(name, listener) {
    let set = this._eventListeners.get(name);
    if (!set) {
      set = new Set();
      this._eventListeners.set(name, set);
    }
    set.add(listener);
    return () => {
      set.delete(listener);
    };
  }

  _emit(name, event) {
    const set = this._eventListeners.get(name);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(event);
      } catch (err) {
        setTimeout(() => {
          throw err;
        });
      }
    }
  }

  _onEvent(event) {
    this._update({ lastEvent: event });
    if (!event || typeof event !== 'object') return;
    this._emit('event', event);
    if (event.event_type === 'time_warning') this._emit('warning', event);
    else if (NAMED_EVENTS.has(event.event_type)) this._emit(event.event_type, event);
  }

  /** Pauses the session. */
  pause({ expectedVersion } = {}) {
    return this._command('PAUSE', { expected_version: expectedVersion });
  }

  /** Resumes a paused session. */
  resume({ expectedVersion } = {}) {
    return this._command('RESUME', { expected_version: expectedVersion });
  }

  /** Starts a pending session (over REST: the socket has no START). */
  start({ expectedVersion } = {}) {
    return this._rest('start', expectedVersion);
  }

  /** Completes the session (over REST). */
  complete({ expectedVersion } = {}) {
    return this._rest('complete', expectedVersion);
  }

  /**
   * **(ext)** `GET /v1/sessions/{id}/presence`: who is connected to the
   * session's sockets over every instance, `{connections, users: [{sub,
   * participant_id, connections, since_ms}]}`.
   */
  async presence() {
    return request(this._fetch, this.baseUrl, await this._restToken(), 'GET', `${this._sessionPath()}/presence`);
  }

  /**
   * **(ext)** `POST /v1/sessions/{id}/participants` (owner or admin): one
   * participant object of the config (`participant_id`, and
   * `participant_index`, `total_time_ms`, `group_id` as the mode needs)
   * joins the live session; resolves with the view. An id already in the
   * session rejects with `PARTICIPANT_EXISTS`.
   */
  async join(participant, { expectedVersion } = {}) {
    const body = { ...(participant || {}) };
    if (expectedVersion !== undefined) body.expected_version = expectedVersion;
    return this._restView('POST', `${this._sessionPath()}/participants`, body);
  }

  /**
   * **(ext)** `DELETE /v1/sessions/{id}/participants/{participantId}` (owner
   * or admin): the participant leaves; if its turn was on, the next eligible
   * one plays from that instant. Resolves with the view.
   */
  async leave(participantId, { expectedVersion } = {}) {
    const body = expectedVersion === undefined ? undefined : { expected_version: expectedVersion };
    const path = `${this._sessionPath()}/participants/${encodeURIComponent(participantId)}`;
    return this._restView('DELETE', path, body);
  }

  async _rest(name, expectedVersion) {
    const body = expectedVersion === undefined ? {} : { expected_version: expectedVersion };
    return this._restView('POST', `${this._sessionPath()}/${name}`, body);
  }

  _sessionPath() {
    return `/v1/sessions/${encodeURIComponent(this.sessionId)}`;
  }

  /** The token of the latest connect (or setToken); with getToken and none yet, a fresh one. */
  async _restToken() {
    return this.token ?? (this._getToken ? await this._getToken() : null);
  }

  async _restView(method, path, body) {
    const view = await request(this._fetch, this.baseUrl, await this._restToken(), method, path, body);
    // The socket brings the same view; applying it now saves a round trip.
    this._applyState(view);
    return view;
  }

  _command(type, fields) {
    if (!this._ws || this._ws.readyState !== 1 || this._snapshot.connection !== 'open') {
      return Promise.reject(new KairosError('NOT_CONNECTED', 'the connection is not open'));
    }
    const requestId = `k${this._nextRequest++}`;
    const message = { type, request_id: requestId };
    for (const [k, v] of Object.entries(fields)) {
      if (v !== undefined && v !== null) message[k] = v;
    }
    return new Promise((resolve, reject) => {
      const cmd = {
        requestId,
        type,
        // The command's outcome is a version above this one.
        after: fields.expected_version ?? this._snapshot.version,
        confirmed: false,
        resolve,
        reject,
        timer: null,
      };
      cmd.timer = this._setTimeout(() => {
        if (this._commands.get(requestId) === cmd) {
          this._finishCommand(cmd);
          reject(new KairosError('TIMEOUT', `${type} was not confirmed within ${this.commandTimeoutMs} ms`));
        }
      }, this.commandTimeoutMs);
      this._commands.set(requestId, cmd);
      if (!this._send(message)) {
        this._finishCommand(cmd);
        reject(new KairosError('NOT_CONNECTED', 'the connection is not open'));
        return;
      }
      this._ping('barrier', requestId);
    });
  }

  /** Resolves every confirmed command whose resulting version has arrived. */
  _settleCommands() {
    const state = this._snapshot.state;
    for (const cmd of [...this._commands.values()]) {
      if (cmd.confirmed && state && state.version > cmd.after) {
        this._finishCommand(cmd);
        cmd.resolve(state);
      }
    }
  }

  _finishCommand(cmd) {
    this._commands.delete(cmd.requestId);
    if (cmd.timer !== null) this._clearTimeout(cmd.timer);
  }

  _rejectAll(error) {
    for (const cmd of [...this._commands.values()]) {
      this._finishCommand(cmd);
      cmd.reject(error);
    }
  }
}

// ---------------------------------------------------------------------------
// REST helpers.

async function request(fetchFn, baseUrl, token, method, path, body) {
  if (!fetchFn) throw new KairosError('UNSUPPORTED', 'no fetch implementation available');
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetchFn(`${String(baseUrl).replace(/\/+$/, '')}${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!res.ok) {
    const e = (json && json.error) || {};
    throw new KairosError(e.code || `HTTP_${res.status}`, e.message || `${method} ${path}: ${res.status}`, e.details);
  }
  return json ? json.data : null;
}

/** `POST /v1/sessions`: creates a session; resolves with its view. */
export function createSession(config, { baseUrl = defaultBaseUrl(), token, fetch: fetchFn } = {}) {
  const f = fetchFn ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : null);
  return request(f, baseUrl, token, 'POST', '/v1/sessions', config);
}

/** **(ext)** `GET /v1/sessions/{id}/presence`: resolves with `{connections, users}`. */
export function getPresence(sessionId, { baseUrl = defaultBaseUrl(), token, fetch: fetchFn } = {}) {
  const f = fetchFn ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : null);
  return request(f, baseUrl, token, 'GET', `/v1/sessions/${encodeURIComponent(sessionId)}/presence`);
}

/** **(ext)** `POST /v1/sessions/{id}/participants`: `participant` joins; resolves with the view. */
export function joinParticipant(sessionId, participant, { baseUrl = defaultBaseUrl(), token, fetch: fetchFn } = {}) {
  const f = fetchFn ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : null);
  return request(f, baseUrl, token, 'POST', `/v1/sessions/${encodeURIComponent(sessionId)}/participants`, participant);
}

/** **(ext)** `DELETE /v1/sessions/{id}/participants/{participantId}`: resolves with the view. */
export function leaveParticipant(sessionId, participantId, { baseUrl = defaultBaseUrl(), token, fetch: fetchFn } = {}) {
  const f = fetchFn ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : null);
  const path = `/v1/sessions/${encodeURIComponent(sessionId)}/participants/${encodeURIComponent(participantId)}`;
  return request(f, baseUrl, token, 'DELETE', path);
}

/** `GET /v1/sessions/{id}`: resolves with the session's view. */
export function getSession(sessionId, { baseUrl = defaultBaseUrl(), token, fetch: fetchFn } = {}) {
  const f = fetchFn ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : null);
  return request(f, baseUrl, token, 'GET', `/v1/sessions/${encodeURIComponent(sessionId)}`);
}
