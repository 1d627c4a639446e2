// Browser tests of the demo page and the SDK against the real server: why
// this file exists. The unit tests prove the SDK's math; only a real
// browser on a real server shows that what people see agrees: two tabs on
// one link display the same remaining time, a press in one tab shows in the
// other, a tab whose clock is five minutes off still shows the right time,
// and the page looks right (a screenshot is kept as an artifact).
//
// It starts the server binary itself (KAIROS_SERVER_BIN, default
// target/debug/kairos-server) on free loopback ports, drives Debian's
// Chromium (CHROMIUM_PATH, default /usr/bin/chromium) headless through
// playwright-core, and stops the server by pid at the end. Run by
// `cargo xtask test`, or: cd web && npm ci && node --test tests/

import assert from 'node:assert/strict';
import { mkdirSync, copyFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { chromium } from 'playwright-core';

import { ARTIFACTS, ROOT, launchChromium, sleep, startServer, waitFor } from './support.mjs';

/** Two screens must agree to within this (contract: drift tolerance 50 ms). */
const AGREEMENT_MS = 50;
/** How far the shifted page's clock is off. */
const SHIFT_MS = 5 * 60_000;
const TEST_TIMEOUT = 45_000;

let server;
let baseUrl;
let browser;
const pageErrors = [];

async function api(method, urlPath, body) {
  const res = await fetch(baseUrl + urlPath, {
    method,
    headers: body ? { 'content-type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = await res.json().catch(() => null);
  assert.ok(res.ok, `${method} ${urlPath}: ${res.status} ${JSON.stringify(json)}`);
  return json.data;
}

async function chessSession(minutes = 5, incrementS = 2) {
  const view = await api('POST', '/v1/sessions', {
    sync_mode: 'per_participant',
    increment_ms: incrementS * 1000,
    participants: [
      { participant_id: 'p1', total_time_ms: minutes * 60_000 },
      { participant_id: 'p2', total_time_ms: minutes * 60_000 },
    ],
    metadata: { labels: { p1: 'White', p2: 'Black' } },
  });
  return view.session_id;
}

/**
 * A page in a fresh browser context. Every page records the real clock as
 * `__realNow` before anything can shift it, so that the test can line
 * samples of different pages up on one real time line.
 */
async function openPage(sessionId, { shiftMs = 0, viewport = { width: 1280, height: 800 } } = {}) {
  const context = await browser.newContext({ viewport, deviceScaleFactor: 1 });
  await context.addInitScript(({ shift }) => {
    const realNow = Date.now.bind(Date);
    window.__realNow = realNow;
    if (shift) {
      // This machine's clock is `shift` ms ahead; performance.now() is
      // moved too (by another amount) to show that nothing relies on it.
      Date.now = () => realNow() + shift;
      const perfNow = performance.now.bind(performance);
      performance.now = () => perfNow() + 1_234_567;
    }
  }, { shift: shiftMs });
  const page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(`${sessionId}: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') pageErrors.push(`${sessionId} console: ${msg.text()}`);
  });
  await page.goto(`${baseUrl}/${sessionId ? `?session=${sessionId}` : ''}`);
  return page;
}

/** Waits until a page shows its session and has a measured offset from the connect burst. */
async function ready(page, minSamples = 5) {
  await waitFor('the page to show the session with a measured offset', () =>
    page.evaluate((n) => {
      const d = window.kairosDemo;
      if (!d) return false;
      const s = d.sample();
      return s.connection === 'open' && s.samples >= n && Object.keys(s.clocks).length > 0;
    }, minSamples),
  );
}

/** Renders and reads one page's displayed clocks, stamped with the real time. */
function sample(page) {
  return page.evaluate(() => ({ ...window.kairosDemo.sample(), real: window.__realNow() }));
}

/**
 * Samples pages at (nearly) the same instant, and moves each running clock's
 * value to the real instant of the first sample: a running clock loses
 * exactly the real time that passes.
 */
async function alignedSamples(pages, clock) {
  const samples = await Promise.all(pages.map(sample));
  const ref = samples[0].real;
  return samples.map((s) => ({
    ...s,
    aligned: s.clocks[clock] + (s.real - ref),
  }));
}

before(async () => {
  server = await startServer({ AUTH_MODE: 'off' });
  baseUrl = server.baseUrl;
  browser = await launchChromium(chromium);
}, { timeout: 60_000 });

after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop();
});

describe('demo page in Chromium', { timeout: 180_000 }, () => {
  it('creates a chess clock from the form and starts it with the space bar', { timeout: TEST_TIMEOUT }, async () => {
    const page = await openPage(null);
    await page.waitForSelector('#create-form');
    await page.fill('input[name=minutes]', '3');
    await page.fill('input[name=increment]', '1');
    await page.fill('input[name=p1]', 'Ada');
    await page.fill('input[name=p2]', 'Grace');
    await page.click('button[type=submit]');
    await page.waitForURL(/\?session=[0-9a-f-]{36}$/);
    await ready(page, 1);
    let s = await sample(page);
    assert.equal(s.status, 'pending');
    assert.deepEqual(s.texts, { p1: '3:00', p2: '3:00' });
    assert.equal(await page.textContent('[data-clock=p1] .label'), 'Ada');
    const share = await page.inputValue('#share-link');
    assert.equal(share, page.url());
    await page.keyboard.press('Space');
    await waitFor('the clock to run', async () => (await sample(page)).status === 'running');
    await sleep(300);
    s = await sample(page);
    assert.deepEqual(s.active, ['p1']);
    assert.ok(s.clocks.p1 < 180_000 && s.clocks.p1 > 170_000, `p1 shows ${s.clocks.p1}`);
    assert.equal(s.clocks.p2, 180_000);
    await page.context().close();
  });

  it('two pages on one session show the same remaining time, and a press in one shows in the other', { timeout: TEST_TIMEOUT }, async (t) => {
    const id = await chessSession();
    await api('POST', `/v1/sessions/${id}/start`);
    const a = await openPage(id);
    const b = await openPage(id);
    await Promise.all([ready(a), ready(b)]);

    let worst = 0;
    for (let i = 0; i < 20; i++) {
      const [sa, sb] = await alignedSamples([a, b], 'p1');
      assert.equal(sa.texts.p2, '5:00');
      assert.equal(sb.texts.p2, '5:00');
      worst = Math.max(worst, Math.abs(sa.aligned - sb.aligned));
      await sleep(50);
    }
    t.diagnostic(`two pages: worst disagreement on the running clock ${worst.toFixed(1)} ms over 20 samples`);
    assert.ok(worst <= AGREEMENT_MS, `pages disagree by ${worst} ms`);

    // Space in page A ends White's turn; page B sees Black's clock run.
    const before = (await sample(b)).version;
    const pressed = Date.now();
    await a.keyboard.press('Space');
    await waitFor('page B to show the press', async () => {
      const s = await sample(b);
      return s.version === before + 1 && s.active.join() === 'p2';
    }, 5_000, 5);
    const latency = Date.now() - pressed;
    t.diagnostic(`a press in page A showed in page B after ${latency} ms`);
    // The increment: White got 2 s back.
    const sa = await sample(a);
    assert.ok(sa.clocks.p1 > 300_000 - 60_000 && sa.clocks.p1 <= 302_000, `White shows ${sa.clocks.p1}`);

    // A tap on the running clock in page B hands the turn back.
    await b.click('[data-clock=p2]');
    await waitFor('page A to show the tap', async () => (await sample(a)).active.join() === 'p1', 5_000, 5);

    // And after the presses the pages still agree: on White's clock, which
    // runs again (aligned to one instant), and to the millisecond on Black's,
    // which stopped at the committed value (no alignment: it does not run).
    await waitFor('page B to show the tap', async () => (await sample(b)).active.join() === 'p1', 5_000, 5);
    const [x, y] = await alignedSamples([a, b], 'p1');
    assert.ok(Math.abs(x.aligned - y.aligned) <= AGREEMENT_MS, `after presses: ${x.aligned} vs ${y.aligned}`);
    assert.equal(x.clocks.p2, y.clocks.p2, "Black's stopped clock");
    await a.context().close();
    await b.context().close();
  });

  it('a page whose clock is 5 minutes off shows the same time as an honest one', { timeout: TEST_TIMEOUT }, async (t) => {
    const id = await chessSession();
    await api('POST', `/v1/sessions/${id}/start`);
    const honest = await openPage(id);
    const shifted = await openPage(id, { shiftMs: SHIFT_MS });
    await Promise.all([ready(honest), ready(shifted)]);

    const sh = await sample(shifted);
    assert.ok(Math.abs(sh.clientNow - (sh.real + SHIFT_MS)) < 1000, 'the page really believes it is 5 minutes later');
    assert.ok(Math.abs(sh.offset + SHIFT_MS) < AGREEMENT_MS, `offset ${sh.offset}`);

    let worst = 0;
    for (let i = 0; i < 20; i++) {
      const [h, s] = await alignedSamples([honest, shifted], 'p1');
      worst = Math.max(worst, Math.abs(h.aligned - s.aligned));
      await sleep(50);
    }
    t.diagnostic(`shifted page: offset ${sh.offset.toFixed(1)} ms (± ${sh.uncertainty.toFixed(2)}), worst disagreement ${worst.toFixed(1)} ms over 20 samples`);
    assert.ok(worst <= AGREEMENT_MS, `the shifted page disagrees by ${worst} ms`);

    // Without the offset it would have shown 5 minutes less: here, 0:00.
    const [h] = await alignedSamples([honest], 'p1');
    assert.ok(h.clocks.p1 > 250_000, `the honest page shows ${h.clocks.p1}`);
    await honest.context().close();
    await shifted.context().close();
  });

  it('looks right (screenshot in target/browser-artifacts/demo.png)', { timeout: TEST_TIMEOUT }, async () => {
    const id = await chessSession(5, 2);
    await api('POST', `/v1/sessions/${id}/start`);
    await sleep(1500);
    await api('POST', `/v1/sessions/${id}/switch`);
    await sleep(2300);
    const page = await openPage(id, { viewport: { width: 1280, height: 760 } });
    await ready(page);
    // Let the stats fill in and a frame render.
    await sleep(300);
    const s = await sample(page);
    assert.deepEqual(s.active, ['p2']);
    const activeBg = await page.$eval('[data-clock=p2]', (el) => getComputedStyle(el).backgroundImage);
    const idleBg = await page.$eval('[data-clock=p1]', (el) => getComputedStyle(el).backgroundImage);
    assert.notEqual(activeBg, idleBg, 'the running clock is highlighted');
    const digitsPx = await page.$eval('[data-clock=p1] .digits', (el) => parseFloat(getComputedStyle(el).fontSize));
    assert.ok(digitsPx >= 64, `clock digits are ${digitsPx}px`);
    mkdirSync(ARTIFACTS, { recursive: true });
    const file = path.join(ARTIFACTS, 'demo.png');
    await page.screenshot({ path: file });
    if (process.env.KAIROS_UPDATE_DEMO_PNG === '1') copyFileSync(file, path.join(ROOT, 'docs', 'demo.png'));
    await page.context().close();
  });

  it('a link to a session that does not exist says so and stops reconnecting', { timeout: TEST_TIMEOUT }, async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    const sockets = [];
    page.on('websocket', (ws) => sockets.push(ws.url()));
    await page.goto(`${baseUrl}/?session=00000000-0000-4000-8000-000000000000`);
    await page.waitForSelector('body[data-connection=error]', { timeout: 10_000 });
    const message = await page.textContent('#session-error');
    assert.match(message, /does not exist/);
    await sleep(2_000);
    assert.equal(sockets.length, 1, `connected ${sockets.length} times`);
    await context.close();
  });

  it('a staged game: the FIDE preset from the form, then the stage and the moves to the next one', { timeout: TEST_TIMEOUT }, async () => {
    const page = await openPage(null);
    await page.waitForSelector('#create-form');
    const sent = [];
    page.on('websocket', (ws) => ws.on('framesent', (f) => sent.push(String(f.payload))));
    await page.selectOption('select[name=preset]', 'fide');
    assert.equal(await page.isHidden('input[name=increment]'), true, 'a preset hides the custom fields');
    await page.click('button[type=submit]');
    await page.waitForURL(/\?session=[0-9a-f-]{36}$/);
    await ready(page, 1);
    const id = new URL(page.url()).searchParams.get('session');
    const view = await api('GET', `/v1/sessions/${id}`);
    assert.deepEqual(
      view.stages.map((st) => [st.moves, st.add_ms, st.increment_ms]),
      [
        [40, 0, 30_000],
        [null, 1_800_000, 30_000],
      ],
    );
    assert.equal(view.lag_compensation.enabled, true);
    let s = await sample(page);
    assert.deepEqual(s.texts, { p1: '1:30:00', p2: '1:30:00' });
    assert.deepEqual(s.stages.p1, { index: 0, movesToNext: 40 });
    assert.match(s.subs.p1, /stage 1\/2, 40 to go · \+30 s a move/);
    // Start, then a move: it carries the measured lag (the session has lag compensation).
    await page.keyboard.press('Space');
    await waitFor('the game to run', async () => (await sample(page)).status === 'running');
    await page.keyboard.press('Space');
    await waitFor('Black to move', async () => (await sample(page)).active.join() === 'p2');
    s = await sample(page);
    assert.deepEqual(s.stages.p1, { index: 0, movesToNext: 39 });
    const switches = sent.map((t) => JSON.parse(t)).filter((m) => m.type === 'SWITCH');
    assert.equal(switches.length, 1);
    assert.ok(Number.isInteger(switches[0].lag_ms) && switches[0].lag_ms >= 0 && switches[0].lag_ms <= 10_000, `lag_ms ${switches[0].lag_ms}`);
    const moved = await api('GET', `/v1/sessions/${id}`);
    assert.equal(typeof moved.participants[0].lag_quota_ms, 'number');
    await page.context().close();

    // A short staged game over REST: 2 moves, then 1 minute more.
    const short = await api('POST', '/v1/sessions', {
      sync_mode: 'per_participant',
      participants: [
        { participant_id: 'p1', total_time_ms: 300_000 },
        { participant_id: 'p2', total_time_ms: 300_000 },
      ],
      stages: [{ moves: 2, increment_ms: 1000 }, { add_ms: 60_000, increment_ms: 1000 }],
    });
    const sid = short.session_id;
    await api('POST', `/v1/sessions/${sid}/start`);
    await api('POST', `/v1/sessions/${sid}/switch`); // p1's first move
    const staged = await openPage(sid);
    await ready(staged);
    await waitFor('p1 one move from the next stage', async () => (await sample(staged)).stages.p1?.movesToNext === 1);
    s = await sample(staged);
    assert.deepEqual(s.stages.p2, { index: 0, movesToNext: 2 });
    await api('POST', `/v1/sessions/${sid}/switch`); // p2's first
    await api('POST', `/v1/sessions/${sid}/switch`); // p1's second: stage 2, +1 min
    const after = await api('GET', `/v1/sessions/${sid}`);
    await waitFor('p1 in the last stage', async () => (await sample(staged)).stages.p1?.index === 1);
    s = await sample(staged);
    assert.deepEqual(s.stages.p1, { index: 1, movesToNext: null });
    assert.deepEqual(s.stages.p2, { index: 0, movesToNext: 1 });
    assert.match(s.subs.p1, /stage 2\/2/);
    const p1 = after.participants.find((p) => p.participant_id === 'p1');
    assert.equal(s.clocks.p1, p1.time_remaining_ms, 'a waiting clock shows the committed value');
    assert.ok(p1.time_remaining_ms > 300_000 + 60_000 - 10_000, `p1 has ${p1.time_remaining_ms}`);
    await staged.context().close();
  });

  it('a delay game: the delay counts down while the main clock holds, then +2 min', { timeout: TEST_TIMEOUT }, async () => {
    const view = await api('POST', '/v1/sessions', {
      sync_mode: 'per_participant',
      participants: [
        { participant_id: 'p1', total_time_ms: 60_000 },
        { participant_id: 'p2', total_time_ms: 60_000 },
      ],
      delay_ms: 30_000,
      delay_mode: 'simple',
    });
    const id = view.session_id;
    await api('POST', `/v1/sessions/${id}/start`);
    const page = await openPage(id);
    await ready(page);
    await sleep(300);
    let s = await sample(page);
    assert.deepEqual(s.active, ['p1']);
    assert.equal(s.clocks.p1, 60_000, 'the main clock holds at R while the delay runs');
    assert.equal(s.texts.p1, '1:00');
    assert.ok(s.delays.p1 > 0 && s.delays.p1 < 30_000, `delay shows ${s.delays.p1}`);
    assert.match(s.delayTexts.p1, /^delay 0:[0-2]\d$/);
    assert.equal(s.delays.p2, null);
    assert.equal(s.delayTexts.p2, null);
    assert.match(s.subs.p1, /delay 30 s/);
    const first = s.delays.p1;
    await sleep(200);
    s = await sample(page);
    assert.ok(s.delays.p1 < first, 'the delay runs down');
    assert.equal(s.clocks.p1, 60_000);

    // The arbiter's +2 min, for the player to move.
    assert.equal(await page.isVisible('#btn-add-time'), true);
    await page.click('#btn-add-time');
    await waitFor('the added time', async () => (await sample(page)).clocks.p1 === 180_000);
    const after = await api('GET', `/v1/sessions/${id}`);
    assert.equal(after.participants[0].time_remaining_ms, 180_000);
    s = await sample(page);
    assert.equal(s.texts.p1, '3:00');
    assert.ok(s.delays.p1 > 0, 'the delay still runs');
    await page.context().close();
  });

  it('a Bronstein game: the clock runs, the delay shows what the move gets back', { timeout: TEST_TIMEOUT }, async () => {
    const view = await api('POST', '/v1/sessions', {
      sync_mode: 'per_participant',
      participants: [
        { participant_id: 'p1', total_time_ms: 60_000 },
        { participant_id: 'p2', total_time_ms: 60_000 },
      ],
      delay_ms: 30_000,
      delay_mode: 'bronstein',
    });
    await api('POST', `/v1/sessions/${view.session_id}/start`);
    const page = await openPage(view.session_id);
    await ready(page);
    await sleep(300);
    const s = await sample(page);
    assert.ok(s.clocks.p1 < 60_000, `the main clock runs: ${s.clocks.p1}`);
    assert.ok(s.delays.p1 > 0 && s.delays.p1 < 30_000);
    // Both count from the turn's start: what is left of each adds up the same.
    assert.equal(60_000 - s.clocks.p1, 30_000 - s.delays.p1);
    assert.match(s.delayTexts.p1, /^back 0:[0-2]\d$/);
    await page.context().close();
  });

  it('shows the server\'s time warnings', { timeout: TEST_TIMEOUT }, async () => {
    const view = await api('POST', '/v1/sessions', {
      sync_mode: 'per_participant',
      participants: [
        { participant_id: 'p1', total_time_ms: 61_200 },
        { participant_id: 'p2', total_time_ms: 61_200 },
      ],
      warnings_ms: [60_000],
      metadata: { labels: { p1: 'Ada', p2: 'Grace' } },
    });
    const page = await openPage(view.session_id);
    await ready(page, 1);
    await api('POST', `/v1/sessions/${view.session_id}/start`);
    await page.waitForSelector('body[data-last-warning-ms="60000"]', { timeout: 10_000 });
    assert.equal(await page.textContent('#session-warning'), 'Ada: 1:00 left');
    await page.context().close();
  });

  it('raised no errors in any page', () => {
    assert.deepEqual(pageErrors, []);
  });
});
