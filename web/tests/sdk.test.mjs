// Unit tests of the browser SDK (crates/http-actix/static/kairos.js): why
// this file exists. The SDK's promises are numeric (the clock offset, the
// remaining time on every screen) and protocol-level (version order, gap
// detection, reconnects, command outcomes); both are checked here without a
// server or a browser: simulated networks with chosen delays and jitter for
// the offset estimator, fixed session views for the display math, and a fake
// WebSocket with a fake clock and timers for the client. The last part
// ("against the real server") starts kairos-server (KAIROS_SERVER_BIN,
// default target/debug/kairos-server; AUTH_MODE=off, free loopback ports)
// and drives presence, joins and leaves through the SDK over real sockets.
// Run: cargo xtask test -p server --test integration -- web (which runs
// every web test), or: cargo build --bin kairos-server && cd web && npm ci &&
// node --test tests/sdk.test.mjs

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  KairosClient,
  KairosError,
  OffsetEstimator,
  computeDisplay,
  formatMs,
  getPresence,
  joinParticipant,
  leaveParticipant,
} from '../../crates/http-actix/static/kairos.js';

import { startServer, waitFor } from './support.mjs';

// ---------------------------------------------------------------------------
// Helpers.

/** A seeded PRNG (mulberry32), so every run simulates the same network. */
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Simulates `count` PING/PONG round trips every `every` ms: the server's
 * clock is the client's plus `trueOffset`, and it answers with whole
 * milliseconds, truncated, as kairos-server does (`exact: true` gives it
 * sub-millisecond timestamps instead, with an estimator told so).
 * `up(i)`/`down(i)` give each leg's delay. Calls `check(estimator, i, kept)`
 * after every sample, `kept` being the legs of the last `window` samples.
 */
function simulate({ trueOffset, up, down, count = 200, every = 4000, window = 8, exact = false, check }) {
  const est = new OffsetEstimator({ window, resolution: exact ? 0 : 1 });
  let clientNow = 1_760_000_000_000.25;
  const history = [];
  for (let i = 0; i < count; i++) {
    const u = up(i);
    const d = down(i);
    const sent = clientNow;
    const serverTrue = sent + u + trueOffset;
    const server = exact ? serverTrue : Math.floor(serverTrue);
    const received = sent + u + d;
    est.addSample({ sent, received, server });
    history.push({ u, d });
    check(est, i, history.slice(-window));
    clientNow += every;
  }
  return est;
}

/** Fake timers driven by a fake clock. */
class FakeTime {
  constructor(start = 1_760_000_000_000) {
    this.now = start;
    this.timers = new Map();
    this.nextId = 1;
    this.clock = () => this.now;
    this.setTimeout = (fn, ms) => {
      const id = this.nextId++;
      this.timers.set(id, { at: this.now + Math.max(0, ms), fn, ms });
      return id;
    };
    this.clearTimeout = (id) => {
      this.timers.delete(id);
    };
  }

  /** Moves the clock by `ms`, firing due timers in order. */
  advance(ms) {
    const end = this.now + ms;
    for (;;) {
      let next = null;
      for (const [id, t] of this.timers) {
        if (t.at <= end && (next === null || t.at < next[1].at)) next = [id, t];
      }
      if (!next) break;
      this.timers.delete(next[0]);
      this.now = Math.max(this.now, next[1].at);
      next[1].fn();
    }
    this.now = end;
  }

  pending() {
    return [...this.timers.values()];
  }
}

/** A WebSocket double: records what the client sends, lets the test play the server. */
function fakeSocketClass() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.onmessage = null;
      this.onclose = null;
      this.onerror = null;
      sockets.push(this);
    }

    send(text) {
      this.sent.push(JSON.parse(text));
    }

    close(code = 1000, reason = '') {
      if (this.readyState === 3) return;
      this.readyState = 3;
      this.closedByClient = { code, reason };
    }

    // -- the server's side --
    open() {
      this.readyState = 1;
    }

    deliver(message) {
      this.onmessage?.({ data: JSON.stringify(message) });
    }

    serverClose(code, reason = '') {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }

    take(type) {
      const out = this.sent.filter((m) => !type || m.type === type);
      this.sent = this.sent.filter((m) => type && m.type !== type);
      return out;
    }
  }
  return { FakeWebSocket, sockets };
}

const SID = '123e4567-e89b-12d3-a456-426614174000';

function chessView(version, overrides = {}) {
  return {
    session_id: SID,
    sync_mode: 'per_participant',
    status: 'running',
    version,
    server_time_ms: 1_000_000,
    // As the server sends it: max_time_ms and group_id are left out when
    // empty (v2 clients validate them as optional), never null.
    increment_ms: 2000,
    active_participant_id: 'white',
    active_group_id: null,
    groups: [],
    time_remaining_ms: null,
    elapsed_ms: 30_000,
    participants: [
      { participant_id: 'white', participant_index: 0, total_time_ms: 302_000, time_used_ms: 15_000, time_remaining_ms: 287_000, cycle_count: 5, is_active: true, has_expired: false },
      { participant_id: 'black', participant_index: 1, total_time_ms: 300_000, time_used_ms: 20_000, time_remaining_ms: 280_000, cycle_count: 4, is_active: false, has_expired: false },
    ],
    ...overrides,
  };
}

/** A fetch double answering every request with `{ data: view }`; records the requests. */
function fakeFetch(view) {
  const requests = [];
  const fetch = async (url, init) => {
    requests.push({ url, ...init });
    return { ok: true, status: 200, text: async () => JSON.stringify({ data: view }) };
  };
  return { fetch, requests };
}

/** Lets pending promise callbacks (an async getToken, fetch) run. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

/** A client on a fake socket whose server clock is the fake clock plus `serverOffset`. */
function connectedClient({ serverOffset = 0, ...options } = {}) {
  const time = new FakeTime();
  const { FakeWebSocket, sockets } = fakeSocketClass();
  const client = new KairosClient({
    sessionId: SID,
    baseUrl: 'http://kairos.test',
    WebSocket: FakeWebSocket,
    clock: time.clock,
    setTimeout: time.setTimeout,
    clearTimeout: time.clearTimeout,
    random: () => 0.5,
    ...options,
  });
  const ws = () => sockets[sockets.length - 1];
  const handshake = (state = chessView(3)) => {
    ws().open();
    ws().deliver({ type: 'CONNECTED', sessionId: SID, timestamp: time.now + serverOffset });
    ws().deliver({ type: 'STATE_SYNC', sessionId: SID, timestamp: time.now + serverOffset, state });
  };
  /** Drops what the client sent so far (the first probe of the connect burst). */
  const flush = () => ws().take();
  return { client, time, sockets, ws, handshake, flush };
}

// ---------------------------------------------------------------------------
// The offset estimator.

describe('OffsetEstimator', () => {
  it('is exact with equal legs, whatever the offset', () => {
    for (const trueOffset of [0, 123_456.5, -300_000, 5]) {
      const est = simulate({
        trueOffset,
        exact: true,
        up: () => 25,
        down: () => 25,
        count: 10,
        check: (e) => assert.ok(Math.abs(e.offset - trueOffset) < 1e-3, `${e.offset}`),
      });
      assert.equal(est.uncertainty, 25);
      assert.equal(est.rtt, 50);
    }
  });

  it('is within half a millisecond with whole-millisecond server timestamps', () => {
    for (const trueOffset of [0, 123_456.5, -300_000.9, 5.3]) {
      simulate({
        trueOffset,
        up: () => 0.4,
        down: () => 0.4,
        count: 10,
        check: (e) => {
          assert.ok(Math.abs(e.offset - trueOffset) <= 0.5 + 1e-6, `${e.offset - trueOffset}`);
          assert.ok(Math.abs(e.offset - trueOffset) <= e.bound + 1e-6);
        },
      });
    }
  });

  it('stays within half the round-trip asymmetry with unequal legs', (t) => {
    let worst = 0;
    for (const [u, d] of [[5, 45], [40, 2], [100, 10], [1, 1], [0, 30], [7.5, 0.25]]) {
      for (const exact of [true, false]) {
        simulate({
          trueOffset: 7_777.7,
          exact,
          up: () => u,
          down: () => d,
          count: 20,
          check: (e) => {
            const err = Math.abs(e.offset - 7_777.7);
            // Truncated timestamps add up to half a millisecond.
            const bound = Math.abs(u - d) / 2 + (exact ? 0 : 0.5);
            worst = Math.max(worst, err - bound);
            // (1e-3: floating-point rounding at 1.76e12 ms.)
            assert.ok(err <= bound + 1e-3, `legs ${u}/${d}: error ${err} > ${bound}`);
            assert.ok(err <= e.bound + 1e-3, 'the guaranteed bound holds');
          },
        });
      }
    }
    t.diagnostic(`constant asymmetric legs: error minus half the asymmetry at most ${worst.toFixed(3)} ms`);
  });

  it('stays within half the asymmetry of the samples it keeps, with jitter on top', (t) => {
    const r = rng(7);
    let worst = 0;
    simulate({
      trueOffset: -42_000,
      up: () => 30 + r() * 20,
      down: () => 5 + r() * 20,
      count: 500,
      check: (e, i, kept) => {
        const bound = Math.max(...kept.map(({ u, d }) => Math.abs(u - d) / 2)) + 0.5;
        const err = Math.abs(e.offset + 42_000);
        worst = Math.max(worst, err);
        assert.ok(err <= bound + 1e-6, `sample ${i}: error ${err} > ${bound}`);
        assert.ok(err <= e.bound + 1e-6, 'the guaranteed bound holds');
      },
    });
    t.diagnostic(`asymmetric legs (30-50 ms up, 5-25 ms down): worst error ${worst.toFixed(2)} ms (half the mean asymmetry: 12.5 ms)`);
  });

  /** Runs 8 seeds x 500 probes with legs of 10 ms plus 0..`perLeg` ms each; returns sorted errors. */
  function symmetricErrors(perLeg) {
    const errors = [];
    for (let seed = 1; seed <= 8; seed++) {
      const r = rng(seed);
      const trueOffset = 300_000 + seed / 3;
      simulate({
        trueOffset,
        up: () => 10 + r() * perLeg,
        down: () => 10 + r() * perLeg,
        count: 500,
        check: (e, i) => {
          assert.ok(Math.abs(e.offset - trueOffset) <= e.bound + 1e-6, 'the guaranteed bound holds');
          if (i >= 4) errors.push(Math.abs(e.offset - trueOffset)); // after the connect burst of 5
        },
      });
    }
    return errors.sort((a, b) => a - b);
  }

  const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];

  it('keeps the error within 5 ms with symmetric round-trip jitter up to 20 ms', (t) => {
    // Round trips of 20..40 ms: each leg 10 ms plus 0..10 ms of jitter.
    const errors = symmetricErrors(10);
    const worst = errors.at(-1);
    t.diagnostic(`round-trip jitter 0-20 ms: median ${pct(errors, 0.5).toFixed(2)} ms, p99 ${pct(errors, 0.99).toFixed(2)} ms, worst ${worst.toFixed(2)} ms over ${errors.length} estimates`);
    assert.ok(worst <= 5, `worst error ${worst} ms`);
  });

  it('keeps the error within 5 ms in 99% of estimates with 20 ms of jitter on each leg', (t) => {
    // Round trips of 20..60 ms. A window where every probe happened to be
    // slow one way can still be off by more: the hard bound is half the
    // per-leg jitter (10 ms).
    const errors = symmetricErrors(20);
    const worst = errors.at(-1);
    t.diagnostic(`per-leg jitter 0-20 ms: median ${pct(errors, 0.5).toFixed(2)} ms, p99 ${pct(errors, 0.99).toFixed(2)} ms, worst ${worst.toFixed(2)} ms over ${errors.length} estimates`);
    assert.ok(pct(errors, 0.99) <= 5, `p99 ${pct(errors, 0.99)} ms`);
    assert.ok(worst <= 10, `worst error ${worst} ms`);
  });

  it('ignores spikes on either leg', () => {
    const r = rng(99);
    simulate({
      trueOffset: 1000,
      up: (i) => 10 + r() * 4 + (i % 3 === 0 ? 250 : 0),
      down: (i) => 10 + r() * 4 + (i % 5 === 0 ? 400 : 0),
      count: 100,
      check: (e, i) => {
        if (i < 8) return;
        assert.ok(Math.abs(e.offset - 1000) <= 2.5, `sample ${i}: ${e.offset}`);
      },
    });
  });

  it('drops old samples when the client clock jumps', () => {
    const est = new OffsetEstimator({ resolution: 0 });
    for (let i = 0; i < 8; i++) est.addSample({ sent: i * 1000, received: i * 1000 + 10, server: i * 1000 + 5 + 500 });
    assert.equal(est.offset, 500);
    // The client clock was set back 5 minutes: the offset grows by as much.
    est.addSample({ sent: 8000, received: 8020, server: 8000 + 10 + 500 + 300_000 });
    assert.equal(est.resets, 1);
    assert.equal(est.sampleCount, 1);
    assert.equal(est.offset, 300_500);
  });

  it('follows a drifting clock by dropping the samples that no longer agree', () => {
    // The client clock runs 1000 ppm slow: 4 ms per 4 s probe, against 2 ms round trips.
    const est = new OffsetEstimator({ resolution: 0 });
    for (let i = 0; i < 50; i++) {
      const trueOffset = 100 + i * 4;
      const sent = i * 4000;
      est.addSample({ sent, received: sent + 2, server: sent + 1 + trueOffset });
      assert.ok(Math.abs(est.offset - trueOffset) <= 1 + 1e-9, `probe ${i}: ${est.offset} vs ${trueOffset}`);
    }
  });

  it('refuses impossible samples and starts from a provisional offset', () => {
    const est = new OffsetEstimator({ resolution: 0 });
    assert.equal(est.offset, null);
    est.setProvisional(1234);
    assert.equal(est.offset, 1234);
    assert.equal(est.uncertainty, null);
    assert.equal(est.addSample({ sent: 10, received: 5, server: 7 }), null);
    assert.equal(est.addSample({ sent: NaN, received: 5, server: 7 }), null);
    est.addSample({ sent: 0, received: 10, server: 2005 });
    assert.equal(est.offset, 2000);
    est.reset();
    assert.equal(est.offset, 2000, 'the estimate outlives a reset until new samples come');
  });
});

// ---------------------------------------------------------------------------
// Display math.

describe('computeDisplay', () => {
  it('counts the active clock down from server_time_ms and leaves the others alone', () => {
    const v = chessView(3);
    for (const dt of [0, 1, 999, 15_000, 286_999]) {
      const d = computeDisplay(v, v.server_time_ms + dt);
      assert.equal(d.byId.white.time_remaining_ms, 287_000 - dt);
      assert.equal(d.byId.white.time_used_ms, 15_000 + dt);
      assert.equal(d.byId.black.time_remaining_ms, 280_000);
      assert.equal(d.elapsed_ms, 30_000 + dt);
      assert.equal(d.byId.white.running, true);
      assert.equal(d.byId.black.running, false);
    }
  });

  it('is a pure function of (view, instant): no drift however often it is called', () => {
    const v = chessView(3);
    const at = v.server_time_ms + 12_345.5;
    const first = computeDisplay(v, at);
    for (let i = 0; i < 1000; i++) computeDisplay(v, v.server_time_ms + i);
    assert.deepEqual(computeDisplay(v, at), first);
    assert.equal(first.byId.white.time_remaining_ms, 287_000 - 12_345.5);
  });

  it('clamps at 0 and stops everything at the deadline', () => {
    const v = chessView(3);
    const d = computeDisplay(v, v.server_time_ms + 400_000);
    assert.equal(d.byId.white.time_remaining_ms, 0);
    assert.equal(d.byId.white.time_used_ms, 15_000 + 287_000);
    assert.equal(d.elapsed_ms, 30_000 + 287_000);
    assert.equal(d.byId.white.running, false);
    assert.equal(d.ticking, false);
  });

  it('shows the view as is before server_time_ms and when not running', () => {
    const v = chessView(3);
    assert.equal(computeDisplay(v, v.server_time_ms - 5000).byId.white.time_remaining_ms, 287_000);
    for (const status of ['paused', 'pending', 'completed', 'expired', 'cancelled']) {
      const d = computeDisplay({ ...v, status }, v.server_time_ms + 60_000);
      assert.equal(d.byId.white.time_remaining_ms, 287_000, status);
      assert.equal(d.elapsed_ms, 30_000, status);
      assert.equal(d.byId.white.running, false);
    }
  });

  it('per_cycle: only the active turn runs', () => {
    const v = chessView(2, {
      sync_mode: 'per_cycle',
      time_per_cycle_ms: 30_000,
      participants: [
        { participant_id: 'a', is_active: false, time_remaining_ms: 30_000, time_used_ms: 0 },
        { participant_id: 'b', is_active: true, time_remaining_ms: 21_000, time_used_ms: 9_000 },
      ],
      active_participant_id: 'b',
    });
    const d = computeDisplay(v, v.server_time_ms + 1_000);
    assert.equal(d.byId.a.time_remaining_ms, 30_000);
    assert.equal(d.byId.b.time_remaining_ms, 20_000);
    assert.equal(computeDisplay(v, v.server_time_ms + 25_000).byId.b.time_remaining_ms, 0);
  });

  it('global: the session countdown and everyone on it run; speakers rotate without touching it', () => {
    const v = chessView(2, {
      sync_mode: 'global',
      time_remaining_ms: 50_000,
      elapsed_ms: 10_000,
      participants: [
        { participant_id: 'a', is_active: true, time_remaining_ms: 50_000, time_used_ms: 10_000 },
        { participant_id: 'b', is_active: false, time_remaining_ms: 50_000, time_used_ms: 0 },
      ],
    });
    const d = computeDisplay(v, v.server_time_ms + 2_000);
    assert.equal(d.time_remaining_ms, 48_000);
    assert.equal(d.byId.a.time_remaining_ms, 48_000);
    assert.equal(d.byId.b.time_remaining_ms, 48_000);
    assert.equal(d.byId.a.time_used_ms, 12_000);
    assert.equal(d.byId.b.time_used_ms, 0);
    assert.equal(d.elapsed_ms, 12_000);
    assert.equal(computeDisplay(v, v.server_time_ms + 99_000).time_remaining_ms, 0);
  });

  it('count_up: elapsed grows, the time left to the limit shrinks, both stop at the limit', () => {
    const v = chessView(2, {
      sync_mode: 'count_up',
      max_time_ms: 60_000,
      elapsed_ms: 10_000,
      participants: [{ participant_id: 'runner', is_active: true, time_remaining_ms: 50_000, time_used_ms: 10_000 }],
    });
    let d = computeDisplay(v, v.server_time_ms + 5_000);
    assert.equal(d.elapsed_ms, 15_000);
    assert.equal(d.byId.runner.time_remaining_ms, 45_000);
    d = computeDisplay(v, v.server_time_ms + 500_000);
    assert.equal(d.elapsed_ms, 60_000);
    assert.equal(d.byId.runner.time_remaining_ms, 0);
    // Without a limit: no remaining time, and the stopwatch never stops.
    const { max_time_ms: _limit, ...withoutLimit } = v;
    const open = { ...withoutLimit, participants: [{ ...v.participants[0], time_remaining_ms: 0 }] };
    d = computeDisplay(open, v.server_time_ms + 10_000_000);
    assert.equal(d.elapsed_ms, 10_010_000);
    assert.equal(d.byId.runner.time_remaining_ms, 0);
    assert.equal(d.max_time_ms, null);
    // An older server's null reads the same as the field left out.
    const nullLimit = computeDisplay({ ...open, max_time_ms: null }, v.server_time_ms + 10_000_000);
    assert.deepEqual(nullLimit, d);
  });

  it('reads views whose optional fields are left out like views that send them null', () => {
    const omitted = chessView(4);
    delete omitted.increment_ms;
    assert.equal('max_time_ms' in omitted, false);
    assert.equal('group_id' in omitted.participants[0], false);
    const nulls = {
      ...omitted,
      increment_ms: 0,
      max_time_ms: null,
      participants: omitted.participants.map((p) => ({ ...p, group_id: null })),
    };
    for (const dt of [0, 5_000, 500_000]) {
      const a = computeDisplay(omitted, omitted.server_time_ms + dt);
      const b = computeDisplay(nulls, nulls.server_time_ms + dt);
      assert.equal(a.max_time_ms, null);
      assert.equal(a.ticking, b.ticking);
      assert.deepEqual(
        a.participants.map((p) => [p.time_remaining_ms, p.time_used_ms, p.running]),
        b.participants.map((p) => [p.time_remaining_ms, p.time_used_ms, p.running]),
      );
    }
    // per_group: a participant without a group never runs with the active group.
    const grouped = chessView(2, {
      sync_mode: 'per_group',
      active_group_id: 'red',
      groups: [{ group_id: 'red', is_active: true, time_remaining_ms: 100_000, time_used_ms: 0 }],
      participants: [
        { participant_id: 'r1', group_id: 'red', is_active: true, time_remaining_ms: 100_000, time_used_ms: 0 },
        { participant_id: 'x', is_active: false, time_remaining_ms: 50_000, time_used_ms: 0 },
      ],
    });
    const d = computeDisplay(grouped, grouped.server_time_ms + 1_000);
    assert.equal(d.byId.r1.time_remaining_ms, 99_000);
    assert.equal(d.byId.x.time_remaining_ms, 50_000);
    assert.equal(d.byId.x.running, false);
  });

  it('per_group: the active group and all its members run', () => {
    const v = chessView(2, {
      sync_mode: 'per_group',
      active_group_id: 'red',
      groups: [
        { group_id: 'red', is_active: true, time_remaining_ms: 100_000, time_used_ms: 0 },
        { group_id: 'blue', is_active: false, time_remaining_ms: 90_000, time_used_ms: 10_000 },
      ],
      participants: [
        { participant_id: 'r1', group_id: 'red', is_active: true, time_remaining_ms: 100_000, time_used_ms: 0 },
        { participant_id: 'r2', group_id: 'red', is_active: false, time_remaining_ms: 100_000, time_used_ms: 0 },
        { participant_id: 'b1', group_id: 'blue', is_active: false, time_remaining_ms: 90_000, time_used_ms: 10_000 },
      ],
    });
    const d = computeDisplay(v, v.server_time_ms + 3_000);
    assert.equal(d.groups[0].time_remaining_ms, 97_000);
    assert.equal(d.groups[1].time_remaining_ms, 90_000);
    assert.equal(d.byId.r1.time_remaining_ms, 97_000);
    assert.equal(d.byId.r2.time_remaining_ms, 97_000);
    assert.equal(d.byId.b1.time_remaining_ms, 90_000);
    assert.equal(d.byId.r1.time_used_ms, 3_000);
    assert.equal(d.byId.r2.time_used_ms, 0);
  });

  it('formats like a clock, rounding down', () => {
    assert.equal(formatMs(300_000), '5:00');
    assert.equal(formatMs(299_999), '4:59');
    assert.equal(formatMs(9_999), '0:09.9');
    assert.equal(formatMs(0), '0:00.0');
    assert.equal(formatMs(-5), '0:00.0');
    assert.equal(formatMs(3_723_000), '1:02:03');
    assert.equal(formatMs(61_250, { tenthsBelowMs: Infinity }), '1:01.2');
  });
});

// ---------------------------------------------------------------------------
// The client, on a fake WebSocket.

describe('KairosClient', () => {
  it('connects to /ws?sessionId= on the base URL', () => {
    const { ws } = connectedClient({ token: 'a b' });
    assert.equal(ws().url, `ws://kairos.test/ws?sessionId=${SID}&token=a%20b`);
    assert.equal(KairosClient.socketUrl('https://x.example/', SID), `wss://x.example/ws?sessionId=${SID}`);
  });

  it('applies states in version order and ignores old ones', () => {
    const { client, ws, handshake } = connectedClient();
    handshake(chessView(3));
    assert.equal(client.getSnapshot().connection, 'open');
    assert.equal(client.getSnapshot().version, 3);
    ws().deliver({ type: 'STATE_UPDATE', state: chessView(2, { status: 'paused' }) });
    ws().deliver({ type: 'STATE_UPDATE', state: chessView(3, { status: 'paused' }) });
    assert.equal(client.getSnapshot().state.status, 'running', 'versions <= current are ignored');
    ws().deliver({ type: 'STATE_UPDATE', state: chessView(4, { status: 'paused' }) });
    assert.equal(client.getSnapshot().version, 4);
    assert.equal(client.getSnapshot().state.status, 'paused');
    assert.equal(ws().take('RECONNECT').length, 0, 'no gap, no RECONNECT');
  });

  it('sends RECONNECT once on a version gap, and again after the resync', () => {
    const { client, ws, handshake } = connectedClient();
    handshake(chessView(3));
    ws().deliver({ type: 'STATE_UPDATE', state: chessView(6) });
    assert.equal(client.getSnapshot().version, 6, 'the newer full view is shown at once');
    ws().deliver({ type: 'STATE_UPDATE', state: chessView(8) });
    assert.equal(ws().take('RECONNECT').length, 1);
    ws().deliver({ type: 'STATE_SYNC', state: chessView(8) });
    ws().deliver({ type: 'STATE_UPDATE', state: chessView(10) });
    assert.equal(ws().take('RECONNECT').length, 1);
    assert.equal(client.getSnapshot().version, 10);
  });

  it('measures the offset with a burst of pings, then periodic ones', () => {
    const serverOffset = 300_000; // the client's clock is 5 minutes slow
    const { client, time, ws, handshake } = connectedClient({ serverOffset });
    handshake();
    // Before any PONG the offset is the rough CONNECTED estimate.
    assert.equal(client.offset, serverOffset);
    let lastSent = 0;
    const answer = (leg) => {
      for (const ping of ws().take('PING')) {
        lastSent = ping.client_time_ms;
        time.advance(leg);
        const server = time.now + serverOffset;
        time.advance(leg);
        ws().deliver({ type: 'PONG', timestamp: server, client_time_ms: ping.client_time_ms });
      }
    };
    answer(10);
    for (let i = 0; i < 4; i++) {
      time.advance(120);
      answer(10 + i);
    }
    assert.equal(client.getSnapshot().samples, 5);
    // Whole-millisecond server timestamps: the true server time is up to 1 ms later.
    assert.equal(client.offset, serverOffset + 0.5);
    assert.equal(client.bound, 10.5);
    assert.equal(client.uncertainty, 10);
    assert.equal(client.rtt, 20);
    // Then one every pingIntervalMs.
    time.advance(lastSent + 4000 - time.now - 1);
    assert.equal(ws().take('PING').length, 0);
    time.advance(1);
    assert.equal(ws().take('PING').length, 1);
    // now() is in server time, and display() uses it.
    assert.equal(client.now(), time.now + serverOffset + 0.5);
    const view = chessView(4, { server_time_ms: time.now + serverOffset + 0.5 - 1500 });
    ws().deliver({ type: 'STATE_UPDATE', state: view });
    assert.equal(client.display().byId.white.time_remaining_ms, 287_000 - 1500);
    time.advance(250);
    assert.equal(client.display().byId.white.time_remaining_ms, 287_000 - 1750);
  });

  it('resolves a command on its STATE_UPDATE once the server is done with it', async () => {
    const { client, ws, handshake, flush } = connectedClient();
    handshake(chessView(3));
    flush();
    const done = client.switch({ nextParticipantId: 'black', expectedVersion: 3 });
    const [cmd, barrier] = ws().take();
    assert.deepEqual(
      { ...cmd, request_id: typeof cmd.request_id },
      { type: 'SWITCH', request_id: 'string', next_participant_id: 'black', expected_version: 3 },
    );
    assert.equal(barrier.type, 'PING', 'a PING right behind the command marks when the server is done with it');
    let settled = false;
    done.then(() => {
      settled = true;
    });
    ws().deliver({ type: 'STATE_UPDATE', state: chessView(4, { active_participant_id: 'black' }) });
    await Promise.resolve();
    assert.equal(settled, false, 'not before the server is done with it');
    ws().deliver({ type: 'PONG', timestamp: 1, client_time_ms: barrier.client_time_ms });
    const state = await done;
    assert.equal(state.version, 4);
    assert.equal(client.getSnapshot().samples, 0, 'the barrier is not an offset sample');
  });

  it('resolves when the update comes after the barrier too', async () => {
    const { client, ws, handshake, flush } = connectedClient();
    handshake(chessView(3));
    flush();
    const done = client.pause();
    const [cmd, barrier] = ws().take();
    assert.equal(cmd.type, 'PAUSE');
    assert.equal('expected_version' in cmd, false);
    ws().deliver({ type: 'PONG', timestamp: 1, client_time_ms: barrier.client_time_ms });
    ws().deliver({ type: 'STATE_UPDATE', state: chessView(4, { status: 'paused' }) });
    assert.equal((await done).status, 'paused');
  });

  it('rejects a command with the server ERROR that echoes its request_id', async () => {
    const { client, ws, handshake, flush } = connectedClient();
    handshake(chessView(3));
    flush();
    const done = client.resume({ expectedVersion: 2 });
    const [cmd] = ws().take();
    ws().deliver({
      type: 'ERROR',
      code: 'CONFLICT',
      message: 'expected version 2, the session is at version 3',
      details: { expected_version: 2, actual_version: 3 },
      request_id: cmd.request_id,
    });
    await assert.rejects(done, (err) => {
      assert.ok(err instanceof KairosError);
      assert.equal(err.code, 'CONFLICT');
      assert.deepEqual(err.details, { expected_version: 2, actual_version: 3 });
      return true;
    });
  });

  it('rejects commands when not connected, on disconnect, and on timeout', async () => {
    const { client, time, ws, handshake } = connectedClient({ commandTimeoutMs: 1000 });
    await assert.rejects(client.switch(), { code: 'NOT_CONNECTED' });
    handshake();
    const lost = client.switch();
    ws().serverClose(1001, 'going away');
    await assert.rejects(lost, { code: 'DISCONNECTED' });
    time.advance(10_000);
    handshake();
    const slow = client.pause();
    time.advance(1000);
    await assert.rejects(slow, { code: 'TIMEOUT' });
  });

  it('reconnects after any close with growing, jittered delays, to the same URL', () => {
    const random = [0, 1, 0.5, 0.25, 0.75, 0, 0, 0, 0, 0];
    let r = 0;
    const { client, time, sockets, ws, handshake } = connectedClient({
      random: () => random[r++ % random.length],
      backoff: { initialMs: 100, maxMs: 1000, factor: 2, jitter: 0.5 },
    });
    handshake();
    const delays = [];
    for (const code of [1001, 1006, 1011, 1013, 1000, 1006]) {
      const before = sockets.length;
      ws().serverClose(code);
      assert.equal(client.getSnapshot().connection, 'reconnecting', `after ${code}`);
      const [timer] = time.pending().filter((t) => t.ms >= 50);
      delays.push(timer.ms);
      time.advance(timer.ms);
      assert.equal(sockets.length, before + 1, `a new socket after ${code}`);
      assert.equal(ws().url, sockets[0].url);
    }
    // ceiling = min(1000, 100 * 2^n); delay = ceiling/2 + ceiling/2 * random.
    assert.deepEqual(delays, [50, 200, 300, 500, 875, 500]);
    // A successful resync resets the backoff.
    handshake();
    assert.equal(client.getSnapshot().reconnectAttempt, 0);
    ws().serverClose(1001);
    const [timer] = time.pending().filter((t) => t.ms >= 50);
    assert.ok(timer.ms >= 50 && timer.ms <= 100, `${timer.ms}`);
  });

  for (const [code, expected] of [[4404, 'SESSION_NOT_FOUND'], [1008, 'POLICY_VIOLATION']]) {
    it(`does not reconnect after close ${code} and surfaces ${expected}`, () => {
      const { client, time, sockets, ws, handshake } = connectedClient();
      const seen = [];
      client.subscribe((s) => seen.push(s.connection));
      handshake();
      ws().serverClose(code, 'nope');
      time.advance(60_000);
      assert.equal(sockets.length, 1);
      const snap = client.getSnapshot();
      assert.equal(snap.connection, 'error');
      assert.equal(snap.error.code, expected);
      assert.equal(seen.at(-1), 'error');
    });
  }

  it('with getToken, reopens a socket closed for "token expired" with a fresh token after the first backoff step', async () => {
    const tokens = ['first', 'fresh one'];
    let calls = 0;
    const rest = fakeFetch(chessView(9));
    const { client, time, sockets, ws, handshake } = connectedClient({
      token: 'static', // getToken wins
      getToken: async () => tokens[calls++],
      fetch: rest.fetch,
    });
    assert.equal(calls, 1, 'asked once for the first connect');
    assert.equal(sockets.length, 0, 'the socket waits for the token');
    await settle();
    assert.equal(ws().url, `ws://kairos.test/ws?sessionId=${SID}&token=first`);
    handshake();
    ws().serverClose(1008, 'token expired');
    assert.equal(client.getSnapshot().connection, 'reconnecting');
    assert.equal(client.getSnapshot().reconnectAttempt, 1);
    assert.equal(calls, 1, 'the token is asked for when the delay is over');
    // The first step: ceiling 500 ms, delay 250 + 250 * random (0.5) = 375 ms.
    time.advance(374);
    assert.equal(calls, 1);
    time.advance(1);
    assert.equal(calls, 2);
    await settle();
    assert.equal(sockets.length, 2);
    assert.equal(ws().url, `ws://kairos.test/ws?sessionId=${SID}&token=fresh%20one`);
    assert.equal(client.wsUrl, ws().url);
    handshake(chessView(4));
    assert.equal(client.getSnapshot().connection, 'open');
    assert.equal(client.getSnapshot().error, null);
    // REST calls use the fresh token too, without asking again.
    await client.start({ expectedVersion: 4 });
    assert.equal(rest.requests.length, 1);
    assert.equal(rest.requests[0].url, `http://kairos.test/v1/sessions/${SID}/start`);
    assert.equal(rest.requests[0].headers.authorization, 'Bearer fresh one');
    assert.equal(calls, 2);
  });

  it('without getToken, does not reconnect after "token expired" and says so; setToken + connect() recovers', () => {
    const { client, time, sockets, ws, handshake } = connectedClient({ token: 'old' });
    handshake();
    ws().serverClose(1008, 'token expired');
    time.advance(60_000);
    assert.equal(sockets.length, 1);
    const { connection, error } = client.getSnapshot();
    assert.equal(connection, 'error');
    assert.equal(error.code, 'POLICY_VIOLATION');
    assert.equal(error.message, 'token expired');
    assert.deepEqual(error.details, { close_code: 1008, reason: 'token expired' });
    client.setToken('new/token');
    client.connect();
    assert.equal(sockets.length, 2);
    assert.equal(ws().url, `ws://kairos.test/ws?sessionId=${SID}&token=new%2Ftoken`);
    handshake();
    assert.equal(client.getSnapshot().connection, 'open');
    assert.equal(client.getSnapshot().error, null);
  });

  it('does not reconnect after another 1008 reason, even with getToken', () => {
    let calls = 0;
    const { client, time, sockets, ws, handshake } = connectedClient({
      getToken: () => `t${++calls}`,
    });
    assert.equal(ws().url, `ws://kairos.test/ws?sessionId=${SID}&token=t1`, 'a plain string connects at once');
    handshake();
    ws().serverClose(1008, 'origin not allowed');
    time.advance(60_000);
    assert.equal(sockets.length, 1);
    assert.equal(calls, 1);
    const { connection, error } = client.getSnapshot();
    assert.equal(connection, 'error');
    assert.equal(error.code, 'POLICY_VIOLATION');
    assert.equal(error.message, 'origin not allowed');
    assert.deepEqual(error.details, { close_code: 1008, reason: 'origin not allowed' });
  });

  it('stops with TOKEN_UNAVAILABLE when getToken rejects or throws', async () => {
    let calls = 0;
    const { client, time, sockets, ws, handshake } = connectedClient({
      getToken: () => {
        calls += 1;
        return calls === 1 ? Promise.resolve('first') : Promise.reject(new Error('signed out'));
      },
    });
    await settle();
    handshake();
    ws().serverClose(1008, 'token expired');
    time.advance(375);
    assert.equal(calls, 2);
    await settle();
    let snap = client.getSnapshot();
    assert.equal(snap.connection, 'error');
    assert.equal(snap.error.code, 'TOKEN_UNAVAILABLE');
    assert.equal(snap.error.message, 'token expired, and getToken failed: signed out');
    assert.equal(snap.error.details.close_code, 1008);
    assert.equal(snap.error.details.cause.message, 'signed out');
    time.advance(60_000);
    await settle();
    assert.equal(sockets.length, 1, 'no further attempts');
    assert.equal(calls, 2);
    assert.equal(time.pending().length, 0, 'no timer left');

    // A getToken that throws before the first connect: no socket at all.
    const other = connectedClient({
      getToken: () => {
        throw new Error('no session');
      },
    });
    other.time.advance(60_000);
    assert.equal(other.sockets.length, 0);
    snap = other.client.getSnapshot();
    assert.equal(snap.connection, 'error');
    assert.equal(snap.error.code, 'TOKEN_UNAVAILABLE');
    assert.equal(snap.error.message, 'getToken failed: no session');
  });

  it('setToken changes the token of the next connect and of REST calls', async () => {
    const rest = fakeFetch(chessView(4));
    const { client, time, sockets, ws, handshake } = connectedClient({ token: 'old', fetch: rest.fetch });
    handshake(chessView(3));
    client.setToken('new token');
    assert.equal(sockets.length, 1, 'the open socket is kept');
    const view = await client.complete({ expectedVersion: 3 });
    assert.equal(view.version, 4);
    assert.deepEqual(rest.requests.map((r) => [r.method, r.url, r.headers.authorization, r.body]), [
      ['POST', `http://kairos.test/v1/sessions/${SID}/complete`, 'Bearer new token', '{"expected_version":3}'],
    ]);
    ws().serverClose(1006);
    time.advance(375);
    assert.equal(sockets.length, 2);
    assert.equal(ws().url, `ws://kairos.test/ws?sessionId=${SID}&token=new%20token`);
  });

  it('leaves an explicit wsUrl alone: getToken then only serves REST', async () => {
    const rest = fakeFetch(chessView(4));
    const { client, ws, handshake } = connectedClient({
      wsUrl: 'wss://elsewhere.test/socket?sessionId=x',
      getToken: () => 'tok',
      fetch: rest.fetch,
    });
    assert.equal(ws().url, 'wss://elsewhere.test/socket?sessionId=x');
    handshake();
    await client.start();
    assert.equal(rest.requests[0].headers.authorization, 'Bearer tok');
    client.setToken('other');
    assert.equal(client.wsUrl, 'wss://elsewhere.test/socket?sessionId=x');
  });

  it('close() while getToken is pending opens nothing; a later connect() uses only its own answer', async () => {
    const release = [];
    const { client, time, sockets, ws } = connectedClient({
      getToken: () => new Promise((resolve) => {
        release.push(resolve);
      }),
    });
    assert.equal(client.getSnapshot().connection, 'connecting');
    client.close();
    release[0]('late');
    await settle();
    time.advance(60_000);
    assert.equal(sockets.length, 0);
    assert.equal(client.getSnapshot().connection, 'closed');
    client.connect();
    client.connect(); // already connecting: no second getToken
    assert.equal(release.length, 2);
    client.close();
    client.connect();
    assert.equal(release.length, 3);
    release[1]('stale');
    await settle();
    assert.equal(sockets.length, 0, 'the answer to a connect that was closed is dropped');
    release[2]('current');
    await settle();
    assert.equal(sockets.length, 1);
    assert.equal(ws().url, `ws://kairos.test/ws?sessionId=${SID}&token=current`);
  });

  it('stops after SESSION_DELETED', () => {
    const { client, time, sockets, ws, handshake } = connectedClient();
    handshake();
    ws().deliver({ type: 'SESSION_DELETED', sessionId: SID, timestamp: 1 });
    ws().serverClose(1000);
    time.advance(60_000);
    assert.equal(sockets.length, 1);
    assert.equal(client.getSnapshot().deleted, true);
    assert.equal(client.getSnapshot().connection, 'closed');
  });

  it('is a store: same snapshot until a change, listeners until unsubscribed', () => {
    const { client, ws, handshake } = connectedClient();
    let calls = 0;
    const unsubscribe = client.subscribe(() => {
      calls += 1;
    });
    handshake(chessView(3));
    const a = client.getSnapshot();
    assert.equal(client.getSnapshot(), a);
    assert.ok(Object.isFrozen(a));
    const before = calls;
    ws().deliver({ type: 'STATE_UPDATE', state: chessView(3) });
    assert.equal(calls, before, 'an ignored message changes nothing');
    ws().deliver({ type: 'STATE_UPDATE', state: chessView(4) });
    assert.notEqual(client.getSnapshot(), a);
    assert.equal(calls, before + 1);
    unsubscribe();
    ws().deliver({ type: 'STATE_UPDATE', state: chessView(5) });
    assert.equal(calls, before + 1);
    // Detached methods work (useSyncExternalStore passes them around).
    const { subscribe, getSnapshot } = client;
    assert.equal(getSnapshot().version, 5);
    subscribe(() => {})();
  });

  it('connect() after close() starts afresh, and the old socket is forgotten', () => {
    const { client, time, sockets, handshake } = connectedClient();
    handshake();
    client.close();
    client.connect();
    assert.equal(sockets.length, 2);
    assert.equal(client.getSnapshot().connection, 'connecting');
    // The first socket's late close event changes nothing.
    sockets[0].onclose?.({ code: 1006, reason: '' });
    time.advance(60_000);
    assert.equal(sockets.length, 2);
    handshake(chessView(9));
    assert.equal(client.getSnapshot().connection, 'open');
    assert.equal(client.getSnapshot().version, 9);
  });

  it('close() stops for good', () => {
    const { client, time, sockets, handshake } = connectedClient();
    handshake();
    client.close();
    assert.equal(sockets[0].closedByClient.code, 1000);
    time.advance(60_000);
    assert.equal(sockets.length, 1);
    assert.equal(client.getSnapshot().connection, 'closed');
  });
});

// ---------------------------------------------------------------------------
// Time controls of real events (docs/protocol.md): stages, delay, warnings,
// added time, lag compensation.

/** A view with a delay on white's turn (R = 10 s, d = 5 s at server_time_ms), as the server sends it. */
function delayView(mode, overrides = {}) {
  const base = chessView(7, { increment_ms: 0, delay_ms: 5000, delay_mode: mode, stages: [] });
  base.participants = base.participants.map((p) => ({
    ...p,
    time_remaining_ms: p.is_active ? 10_000 : 20_000,
    stage_index: 0,
    moves_to_next_stage: null,
    delay_remaining_ms: p.is_active ? 5000 : null,
    lag_quota_ms: null,
  }));
  return { ...base, ...overrides };
}

describe('computeDisplay with time controls', () => {
  const t0 = 1_000_000;

  it('simple delay: a separate delay countdown, the main clock held at R until it is used up', () => {
    const v = delayView('simple');
    const at = (dt) => computeDisplay(v, t0 + dt).byId.white;
    assert.deepEqual(
      [0, 3000, 5000, 8000, 15_000, 20_000].map((dt) => [at(dt).delay_remaining_ms, at(dt).time_remaining_ms]),
      [
        [5000, 10_000],
        [2000, 10_000],
        [0, 10_000],
        [0, 7000],
        [0, 0],
        [0, 0],
      ],
    );
    assert.equal(at(3000).in_delay, true);
    assert.equal(at(8000).in_delay, false);
    assert.equal(at(3000).delay_mode, 'simple');
    assert.equal(at(8000).time_used_ms, 15_000 + 3000, 'used grows only once the delay is over');
    // Running until the deadline (turn start + d + R), stopped after it.
    assert.equal(computeDisplay(v, t0 + 14_999).ticking, true);
    assert.equal(computeDisplay(v, t0 + 15_000).ticking, false);
    const d = computeDisplay(v, t0 + 3000);
    assert.equal(d.delay_mode, 'simple');
    assert.equal(d.delay_remaining_ms, 2000);
    // The waiting clock keeps its null delay and its time.
    assert.equal(d.byId.black.delay_remaining_ms, null);
    assert.equal(d.byId.black.time_remaining_ms, 20_000);
  });

  it('simple delay: a view taken mid-delay continues from its delay_remaining_ms', () => {
    const v = delayView('simple');
    v.participants[0].delay_remaining_ms = 2385;
    const d = computeDisplay(v, t0 + 3000).byId.white;
    assert.equal(d.delay_remaining_ms, 0);
    assert.equal(d.time_remaining_ms, 10_000 - 615);
  });

  it('bronstein: the clock runs as usual; the delay is what the move can still get back', () => {
    const v = delayView('bronstein');
    const at = (dt) => computeDisplay(v, t0 + dt).byId.white;
    assert.deepEqual(
      [0, 3000, 8000, 10_000, 12_000].map((dt) => [at(dt).delay_remaining_ms, at(dt).time_remaining_ms]),
      [
        [5000, 10_000],
        [2000, 7000],
        [0, 2000],
        [0, 0],
        [0, 0],
      ],
    );
    assert.equal(at(3000).in_delay, false, 'bronstein never holds the clock');
    assert.equal(computeDisplay(v, t0 + 10_000).ticking, false, 'the deadline is turn start + R');
  });

  it('holds a paused delay as it is', () => {
    const v = delayView('simple', { status: 'paused' });
    const d = computeDisplay(v, t0 + 3000).byId.white;
    assert.equal(d.delay_remaining_ms, 5000);
    assert.equal(d.time_remaining_ms, 10_000);
    assert.equal(d.in_delay, false);
  });

  it('stages: exposes stage_index, moves_to_next_stage and the delay mode of the clock\'s stage', () => {
    const v = chessView(9, {
      increment_ms: 0,
      stages: [
        { moves: 40, add_ms: 0, increment_ms: 30_000, delay_ms: 0, delay_mode: 'none' },
        { moves: null, add_ms: 1_800_000, increment_ms: 30_000, delay_ms: 5000, delay_mode: 'simple' },
      ],
      lag_compensation: { enabled: true },
    });
    v.participants[0] = { ...v.participants[0], stage_index: 0, moves_to_next_stage: 35, delay_remaining_ms: null, lag_quota_ms: 3000 };
    v.participants[1] = { ...v.participants[1], stage_index: 1, moves_to_next_stage: null, delay_remaining_ms: null, lag_quota_ms: 2500 };
    const d = computeDisplay(v, t0 + 1000);
    assert.deepEqual(
      d.participants.map((p) => [p.stage_index, p.moves_to_next_stage, p.delay_mode, p.lag_quota_ms]),
      [
        [0, 35, 'none', 3000],
        [1, null, 'simple', 2500],
      ],
    );
    assert.equal(d.byId.white.time_remaining_ms, 287_000 - 1000);
    assert.equal(d.lag_compensation, true);
    assert.equal(d.delay_remaining_ms, null);
    // Views of the previous release (no such fields) read as stage 0, no delay.
    const old = computeDisplay(chessView(3), t0).byId.white;
    assert.deepEqual([old.stage_index, old.moves_to_next_stage, old.delay_remaining_ms, old.delay_mode, old.lag_quota_ms], [0, null, null, 'none', null]);
  });

  it('per_group: the active group\'s simple delay holds the group and its members', () => {
    const v = {
      session_id: SID,
      sync_mode: 'per_group',
      status: 'running',
      version: 4,
      server_time_ms: t0,
      active_participant_id: 'a1',
      active_group_id: 'A',
      delay_ms: 2000,
      delay_mode: 'simple',
      stages: [],
      groups: [
        { group_id: 'A', group_index: 0, total_time_ms: 60_000, time_used_ms: 0, time_remaining_ms: 60_000, is_active: true, has_expired: false, stage_index: 0, moves_to_next_stage: null, delay_remaining_ms: 2000 },
        { group_id: 'B', group_index: 1, total_time_ms: 60_000, time_used_ms: 0, time_remaining_ms: 60_000, is_active: false, has_expired: false, stage_index: 0, moves_to_next_stage: null, delay_remaining_ms: null },
      ],
      participants: [
        { participant_id: 'a1', participant_index: 0, group_id: 'A', total_time_ms: 60_000, time_used_ms: 0, time_remaining_ms: 60_000, cycle_count: 0, is_active: true, has_expired: false },
        { participant_id: 'b1', participant_index: 1, group_id: 'B', total_time_ms: 60_000, time_used_ms: 0, time_remaining_ms: 60_000, cycle_count: 0, is_active: false, has_expired: false },
      ],
    };
    const d = computeDisplay(v, t0 + 5000);
    assert.deepEqual(
      d.groups.map((g) => [g.delay_remaining_ms, g.time_remaining_ms]),
      [
        [0, 57_000],
        [null, 60_000],
      ],
    );
    assert.equal(d.byId.a1.time_remaining_ms, 57_000);
    assert.equal(d.delay_remaining_ms, 0);
    assert.equal(computeDisplay(v, t0 + 1500).groups[0].in_delay, true);
  });
});

describe('KairosClient time controls', () => {
  /** Answers the pending pings with legs of `leg` ms each. */
  function answerPings(ws, time, leg) {
    for (const ping of ws().take('PING')) {
      time.advance(leg);
      const server = time.now;
      time.advance(leg);
      ws().deliver({ type: 'PONG', timestamp: server, client_time_ms: ping.client_time_ms });
    }
  }

  it('sends lag_ms = half the measured round trip on switch only with lag compensation on', () => {
    const { client, time, ws, handshake } = connectedClient();
    handshake(chessView(3, { lag_compensation: { enabled: true } }));
    assert.equal(client.lagMs(), undefined, 'nothing measured yet: no lag_ms');
    answerPings(ws, time, 37); // round trip 74 ms
    client.switch({ expectedVersion: 3 }).catch(() => {});
    const [cmd] = ws().take('SWITCH');
    assert.equal(cmd.lag_ms, 37);
    assert.equal(client.lagMs(12.6), 13, 'an explicit value is rounded');
    assert.equal(client.lagMs(25_000), 10_000, 'and clamped to 10000');
    assert.equal(client.lagMs(-5), 0);
    client.close();
  });

  it('rounds half round trips and clamps long ones to 10000', () => {
    const { client, time, ws, handshake } = connectedClient();
    handshake(chessView(3, { lag_compensation: { enabled: true } }));
    answerPings(ws, time, 12.75); // round trip 25.5 ms
    assert.equal(client.lagMs(), 13);
    time.advance(200);
    answerPings(ws, time, 15_000); // round trip 30 s
    assert.equal(client.lagMs(), 10_000);
    client.close();
  });

  it('sends no lag_ms when the session has lag compensation off or does not say', () => {
    for (const extra of [{ lag_compensation: { enabled: false } }, {}]) {
      const { client, time, ws, handshake } = connectedClient();
      handshake(chessView(3, extra));
      answerPings(ws, time, 20);
      client.switch({ expectedVersion: 3 }).catch(() => {});
      const [cmd] = ws().take('SWITCH');
      assert.equal('lag_ms' in cmd, false);
      assert.equal(client.lagMs(50), undefined);
      client.close();
    }
  });

  it('addTime sends ADD_TIME for a participant or a group and resolves on its update', async () => {
    const { client, ws, handshake, flush } = connectedClient();
    handshake(chessView(3));
    flush();
    const done = client.addTime('black', 120_000, 'arbiter');
    const [cmd, barrier] = ws().take();
    assert.deepEqual(
      { ...cmd, request_id: typeof cmd.request_id },
      { type: 'ADD_TIME', request_id: 'string', participant_id: 'black', ms: 120_000, reason: 'arbiter' },
    );
    ws().deliver({ type: 'STATE_UPDATE', state: chessView(4) });
    ws().deliver({ type: 'PONG', timestamp: 1, client_time_ms: barrier.client_time_ms });
    assert.equal((await done).version, 4);
    client.addTime({ groupId: 'A' }, 60_000, undefined, { expectedVersion: 4 }).catch(() => {});
    const [g] = ws().take('ADD_TIME');
    assert.deepEqual(
      { ...g, request_id: typeof g.request_id },
      { type: 'ADD_TIME', request_id: 'string', group_id: 'A', ms: 60_000, expected_version: 4 },
    );
    client.close();
  });

  it('raises warning for time_warning EVENTs, and not for other events', () => {
    const seen = [];
    const { client, ws, handshake } = connectedClient({ onWarning: (e) => seen.push(['opt', e.participant_id, e.time_remaining_ms]) });
    const all = [];
    const added = [];
    const stop = client.on('warning', (e) => seen.push(['on', e.participant_id, e.time_remaining_ms]));
    client.on('event', (e) => all.push(e.event_type));
    client.on('time_added', (e) => added.push(e.metadata.ms));
    handshake();
    const warning = { event_type: 'time_warning', participant_id: 'white', time_remaining_ms: 10_000, at_ms: 1_000_500, metadata: { threshold_ms: 10_000 } };
    ws().deliver({ type: 'EVENT', sessionId: SID, timestamp: 1, event: warning });
    ws().deliver({ type: 'EVENT', sessionId: SID, timestamp: 2, event: { event_type: 'time_added', participant_id: 'black', metadata: { ms: 120_000, reason: 'arbiter' } } });
    ws().deliver({ type: 'EVENT', sessionId: SID, timestamp: 3, event: { event_type: 'participant_expired', participant_id: 'white' } });
    assert.deepEqual(seen, [
      ['opt', 'white', 10_000],
      ['on', 'white', 10_000],
    ]);
    assert.deepEqual(all, ['time_warning', 'time_added', 'participant_expired']);
    assert.deepEqual(added, [120_000]);
    assert.equal(client.getSnapshot().lastEvent.event_type, 'participant_expired');
    stop();
    ws().deliver({ type: 'EVENT', sessionId: SID, timestamp: 4, event: { ...warning, time_remaining_ms: 5000 } });
    assert.equal(seen.length, 3, 'the unsubscribed listener is not called again');
    client.close();
  });
});

// ---------------------------------------------------------------------------
// Against the real server: presence, joins and leaves through the SDK.


/**
 * A browser-like WebSocket for node: node 22 has one built in; node 20 only
 * behind a flag, so the `ws` that playwright-core (our one dev dependency)
 * bundles stands in (same constructor, `readyState`, `on*` handlers, text
 * frames as strings).
 */
async function nodeWebSocket() {
  if (globalThis.WebSocket) return globalThis.WebSocket;
  const bundle = await import('playwright-core/lib/utilsBundle');
  return (bundle.default ?? bundle).ws;
}

const waitUntil = (what, fn, timeoutMs = 10_000) => waitFor(what, fn, timeoutMs);

describe('KairosClient against the real server', { timeout: 60_000 }, () => {
  let server;
  let baseUrl;
  let WS;
  const clients = [];

  before(async () => {
    WS = await nodeWebSocket();
    server = await startServer({
      AUTH_MODE: 'off',
      // presence_left as soon as the last socket closes.
      PRESENCE_LEAVE_DELAY_MS: '0',
    });
    baseUrl = server.baseUrl;
  });

  after(async () => {
    for (const c of clients) c.close();
    await server?.stop();
  });

  /** A client of `sessionId` whose socket says it is `user` (auth off: `?user=`), open. */
  async function open(sessionId, user, participantId) {
    let wsUrl = `${KairosClient.socketUrl(baseUrl, sessionId)}&user=${user}`;
    if (participantId) wsUrl += `&participant_id=${participantId}`;
    const client = new KairosClient({ sessionId, baseUrl, wsUrl, WebSocket: WS });
    clients.push(client);
    await waitUntil(`${user}'s socket`, () => client.getSnapshot().connection === 'open' && client.getSnapshot().version > 0);
    return client;
  }

  async function chess() {
    const view = await fetch(`${baseUrl}/v1/sessions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        sync_mode: 'per_participant',
        participants: [
          { participant_id: 'white', total_time_ms: 300_000 },
          { participant_id: 'black', total_time_ms: 300_000 },
        ],
      }),
    }).then((r) => r.json());
    return view.data.session_id;
  }

  it('counts presence once a socket is open, and tells the others who came and went', async () => {
    const sid = await chess();
    assert.deepEqual(await getPresence(sid, { baseUrl }), { connections: 0, users: [] });

    const ann = await open(sid, 'ann', 'white');
    const p1 = await waitUntil('ann counted', async () => {
      const p = await ann.presence();
      return p.connections === 1 ? p : null;
    });
    assert.equal(p1.users.length, 1);
    assert.equal(p1.users[0].sub, 'ann');
    assert.equal(p1.users[0].participant_id, 'white');
    assert.equal(p1.users[0].connections, 1);
    assert.ok(Number.isInteger(p1.users[0].since_ms));

    const joined = [];
    const left = [];
    ann.on('presence_joined', (e) => joined.push([e.metadata.sub, e.participant_id, e.version]));
    ann.on('presence_left', (e) => left.push([e.metadata.sub, e.participant_id, e.version]));
    const bob = await open(sid, 'bob', 'black');
    await waitUntil('presence_joined for bob', () => joined.length === 1);
    assert.deepEqual(joined, [['bob', 'black', 0]]);
    const p2 = await getPresence(sid, { baseUrl });
    assert.equal(p2.connections, 2);
    assert.deepEqual(p2.users.map((u) => [u.sub, u.participant_id, u.connections]).sort(), [
      ['ann', 'white', 1],
      ['bob', 'black', 1],
    ]);

    bob.close();
    await waitUntil('presence_left for bob', () => left.length === 1);
    assert.deepEqual(left, [['bob', 'black', 0]]);
    const p3 = await ann.presence();
    assert.equal(p3.connections, 1);
    assert.deepEqual(p3.users.map((u) => u.sub), ['ann']);
    assert.deepEqual(joined, [['bob', 'black', 0]], 'no presence event about ann reached ann');
  });

  it('joins and leaves change the rotation, with their events; an existing id is PARTICIPANT_EXISTS', async () => {
    const sid = await chess();
    const client = await open(sid, 'arbiter');
    const events = [];
    client.on('participant_joined', (e) => events.push(['joined', e.participant_id, e.metadata.index]));
    client.on('participant_left', (e) => events.push(['left', e.participant_id, e.metadata.next_participant_id ?? null]));
    const started = await client.start();
    assert.equal(started.active_participant_id, 'white');

    const afterJoin = await client.join({ participant_id: 'dave', participant_index: 1, total_time_ms: 60_000 });
    assert.deepEqual(afterJoin.participants.map((p) => [p.participant_id, p.participant_index]), [
      ['white', 0],
      ['dave', 1],
      ['black', 2],
    ]);
    assert.equal(afterJoin.active_participant_id, 'white', 'the running turn goes on');
    assert.equal(afterJoin.version, started.version + 1);
    assert.equal(client.getSnapshot().version, afterJoin.version, 'the client applied the view');

    await assert.rejects(client.join({ participant_id: 'dave', total_time_ms: 60_000 }), (err) => {
      assert.ok(err instanceof KairosError);
      assert.equal(err.code, 'PARTICIPANT_EXISTS');
      assert.equal(err.details.participant_id, 'dave');
      return true;
    });
    await assert.rejects(joinParticipant(sid, { participant_id: 'black', total_time_ms: 60_000 }, { baseUrl }), (err) => {
      assert.ok(err instanceof KairosError);
      assert.equal(err.code, 'PARTICIPANT_EXISTS');
      return true;
    });

    // White leaves on its own turn: dave, next in the rotation, plays.
    const afterLeave = await client.leave('white', { expectedVersion: afterJoin.version });
    assert.equal(afterLeave.active_participant_id, 'dave');
    assert.deepEqual(afterLeave.participants.map((p) => [p.participant_id, p.participant_index]), [
      ['dave', 0],
      ['black', 1],
    ]);
    assert.equal(afterLeave.version, afterJoin.version + 1);

    // Without a client: black leaves while waiting; the turn goes on.
    const last = await leaveParticipant(sid, 'black', { baseUrl });
    assert.equal(last.active_participant_id, 'dave');
    assert.deepEqual(last.participants.map((p) => p.participant_id), ['dave']);
    await assert.rejects(client.leave('black'), (err) => err instanceof KairosError && err.code === 'VALIDATION_ERROR');

    await waitUntil('three events', () => events.length === 3);
    assert.deepEqual(events, [
      ['joined', 'dave', 1],
      ['left', 'white', 'dave'],
      ['left', 'black', null],
    ]);
  });
});
