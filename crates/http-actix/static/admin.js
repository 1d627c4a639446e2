// The SyncKairos admin view's script (admin.html): why this file exists.
// It lists every live session from GET /v1/admin/sessions, shows each clock
// ticking with the SDK's time model (computeDisplay at the server's time,
// the offset measured against GET /v1/time, nothing counts down), who is
// connected (GET /v1/sessions/{id}/presence) and the webhook endpoints with
// their last deliveries (GET /v1/webhooks, .../deliveries), and sends the
// operator's pause, resume, cancel and add-time commands over REST. An
// endpoint this server does not have (404, 501) shows as "not available".
// The token lives in sessionStorage only (gone with the tab) and is never
// logged. `window.kairosAdmin.sample()` reads what the page shows, for the
// browser tests.

import { OffsetEstimator, computeDisplay, formatMs, monotonicClock } from '/sdk/kairos.js';

const TOKEN_KEY = 'kairos.admin.token';
/** How often the lists are read again. */
const REFRESH_MS = 2000;
/** How often the clock offset is probed again (GET /v1/time is rate-limited). */
const PROBE_EVERY_MS = 15_000;
/** Sessions asked for per page of the walk. */
const PAGE_LIMIT = 100;
/** Deliveries shown per webhook endpoint. */
const DELIVERIES = 5;
/** Added by the "+1 min" button. */
const ADD_MS = 60_000;

const $ = (id) => document.getElementById(id);
const clock = monotonicClock();
const estimator = new OffsetEstimator({ window: 8 });

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  /** Views by session id, in the order the walk returned them. */
  sessions: new Map(),
  /** How many sessions the walk should cover (grows with "More sessions"). */
  wanted: PAGE_LIMIT,
  more: false,
  /** Presence by session id: an object, or 'unavailable'. */
  presence: new Map(),
  presenceAvailable: null,
  /** Webhook endpoints with their deliveries, or 'unavailable'. */
  webhooks: null,
  auth: 'unknown',
  /** The last command's refusal, shown until the next command. */
  commandNote: null,
  lastProbe: -Infinity,
  error: null,
};

class HttpError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (state.token) headers.authorization = `Bearer ${state.token}`;
  const res = await fetch(path, {
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
    throw new HttpError(res.status, e.code || `HTTP_${res.status}`, e.message || `${method} ${path}: ${res.status}`);
  }
  return json;
}

/** Whether an error means "this server has no such endpoint". */
function missing(err) {
  return err instanceof HttpError && (err.status === 501 || err.status === 405 || (err.status === 404 && err.code !== 'SESSION_NOT_FOUND'));
}

/** One round trip to /v1/time for the offset estimate. */
async function probe() {
  const sent = clock();
  const res = await fetch('/v1/time', { headers: { accept: 'application/json' } });
  const received = clock();
  if (!res.ok) return;
  const body = await res.json();
  estimator.addSample({ sent, received, server: body.timestamp_ms });
}

function serverNow() {
  return clock() + (estimator.offset ?? 0);
}

function notice(text) {
  const el = $('notice');
  el.textContent = text || '';
  el.hidden = !text;
}

function setAuth(auth) {
  state.auth = auth;
  document.body.dataset.auth = auth;
}

/** Walks GET /v1/admin/sessions until it ends or covers `state.wanted`. */
async function loadSessions() {
  const found = new Map();
  let cursor = null;
  let more = false;
  for (let pages = 0; pages < 50; pages++) {
    const query = new URLSearchParams({ limit: String(PAGE_LIMIT) });
    if (cursor) query.set('cursor', cursor);
    const body = await api('GET', `/v1/admin/sessions?${query}`);
    for (const v of body.data.sessions) found.set(v.session_id, v);
    cursor = body.data.next_cursor;
    if (!cursor) break;
    if (found.size >= state.wanted) {
      more = true;
      break;
    }
  }
  state.sessions = found;
  state.more = more;
}

async function loadPresence() {
  if (state.presenceAvailable === false) return;
  const ids = [...state.sessions.keys()];
  await Promise.all(ids.map(async (id) => {
    try {
      const body = await api('GET', `/v1/sessions/${id}/presence`);
      state.presence.set(id, body.data);
      state.presenceAvailable = true;
    } catch (err) {
      if (missing(err)) {
        state.presenceAvailable = false;
      } else {
        state.presence.set(id, { error: err.code });
      }
    }
  }));
}

async function loadWebhooks() {
  if (state.webhooks === 'unavailable') return;
  try {
    const body = await api('GET', '/v1/webhooks');
    const endpoints = Array.isArray(body.data) ? body.data : body.data?.webhooks || [];
    state.webhooks = await Promise.all(endpoints.map(async (w) => {
      try {
        const d = await api('GET', `/v1/webhooks/${encodeURIComponent(w.webhook_id)}/deliveries?limit=${DELIVERIES}`);
        return { ...w, deliveries: Array.isArray(d.data) ? d.data : [] };
      } catch (err) {
        return { ...w, deliveries: null, deliveryError: missing(err) ? 'not available' : err.code };
      }
    }));
  } catch (err) {
    if (missing(err)) {
      state.webhooks = 'unavailable';
    } else {
      throw err;
    }
  }
}

let inFlight = null;
let again = false;

/** Reads everything again; a call during a refresh runs once more after it. */
function refresh() {
  if (inFlight) {
    again = true;
    return inFlight;
  }
  inFlight = reload().finally(() => {
    inFlight = null;
    if (again) {
      again = false;
      refresh();
    }
  });
  return inFlight;
}

async function reload() {
  try {
    if (clock() - state.lastProbe > PROBE_EVERY_MS || estimator.sampleCount < 3) {
      state.lastProbe = clock();
      await probe();
    }
    await loadSessions();
    setAuth('ok');
    notice(state.commandNote);
    await Promise.all([loadPresence(), loadWebhooks()]);
    state.error = null;
  } catch (err) {
    state.error = err.code || String(err);
    if (err.status === 401) {
      setAuth('needed');
      state.sessions = new Map();
      notice(state.token ? 'This token was refused (401): paste a valid admin token.' : 'This server needs an admin token: paste one above.');
    } else if (err.status === 403) {
      setAuth('forbidden');
      state.sessions = new Map();
      notice('This token is not an admin token for every session (403).');
    } else {
      notice(`Could not read the sessions: ${err.message}`);
    }
  }
  renderTables();
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith('data-')) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}

/** Sends a command; the next refresh shows its outcome. */
async function command(id, path, body) {
  try {
    await api('POST', `/v1/sessions/${id}/${path}`, body);
    state.commandNote = null;
  } catch (err) {
    state.commandNote = `${path} refused: ${err.code}: ${err.message}`;
  }
  notice(state.commandNote);
  await refresh();
}

function actions(view) {
  const live = !['completed', 'cancelled', 'expired'].includes(view.status);
  const button = (label, name, enabled, onClick) => {
    const b = el('button', { type: 'button', textContent: label, disabled: !enabled });
    b.dataset.action = name;
    b.addEventListener('click', onClick);
    return b;
  };
  const id = view.session_id;
  const target = view.active_participant_id ?? view.participants[0]?.participant_id ?? null;
  const canAdd = live && target !== null && ['per_participant', 'per_group', 'global'].includes(view.sync_mode);
  return el('td', { className: 'actions' },
    button('Pause', 'pause', view.status === 'running', () => command(id, 'pause')),
    ' ',
    button('Resume', 'resume', view.status === 'paused', () => command(id, 'resume')),
    ' ',
    button('+1 min', 'add_time', canAdd, () => command(id, 'add_time', { participant_id: target, ms: ADD_MS, reason: 'admin view' })),
    ' ',
    button('Cancel', 'cancel', live, () => {
      if (window.confirm(`Cancel session ${id}?`)) command(id, 'cancel');
    }),
  );
}

function presenceCell(id) {
  if (state.presenceAvailable === false) return el('td', { className: 'muted', textContent: 'not available' });
  const p = state.presence.get(id);
  if (!p) return el('td', { className: 'muted', textContent: '…' });
  if (p.error) return el('td', { className: 'muted', textContent: p.error });
  const users = (p.users || []).map((u) => `${u.sub}${u.participant_id ? ` (${u.participant_id})` : ''}`).join(', ');
  return el('td', {}, `${p.connections} connection${p.connections === 1 ? '' : 's'}`, el('small', { className: 'muted' }, users ? ` · ${users}` : ''));
}

/** Rebuilds the rows (after a refresh); the digits are updated every frame by `tick`. */
function renderTables() {
  const rows = $('session-rows');
  rows.replaceChildren();
  for (const view of state.sessions.values()) {
    const tr = el('tr', { 'data-session': view.session_id });
    const clocks = el('div', { className: 'clocks' });
    for (const p of view.participants) {
      clocks.append(el('span', { className: 'clock', 'data-participant': p.participant_id },
        el('span', { className: 'who', textContent: p.participant_id }),
        el('span', { className: 'digits' })));
    }
    if (view.sync_mode === 'global' || view.sync_mode === 'count_up') {
      clocks.append(el('span', { className: 'clock session-clock', 'data-participant': '' },
        el('span', { className: 'who', textContent: view.sync_mode === 'global' ? 'countdown' : 'stopwatch' }),
        el('span', { className: 'digits' })));
    }
    tr.append(
      el('td', { className: 'sid' }, view.session_id, el('small', { textContent: `v${view.version}` })),
      el('td', {}, el('span', { className: 'pill', 'data-status': view.status, textContent: view.status })),
      el('td', { textContent: view.sync_mode }),
      el('td', {}, clocks),
      presenceCell(view.session_id),
      actions(view),
    );
    rows.append(tr);
  }
  $('session-count').textContent = state.auth === 'ok' ? `(${state.sessions.size}${state.more ? '+' : ''})` : '';
  $('no-sessions').hidden = state.auth !== 'ok' || state.sessions.size > 0;
  $('more-sessions').hidden = !state.more;
  renderWebhooks();
  tick();
}

function renderWebhooks() {
  const unavailable = state.webhooks === 'unavailable';
  const list = Array.isArray(state.webhooks) ? state.webhooks : [];
  $('webhooks-unavailable').hidden = !unavailable;
  $('no-webhooks').hidden = unavailable || state.webhooks === null || list.length > 0;
  $('webhooks').hidden = list.length === 0;
  const rows = $('webhook-rows');
  rows.replaceChildren();
  for (const w of list) {
    const deliveries = el('ul', { className: 'deliveries' });
    if (w.deliveries === null) {
      deliveries.append(el('li', { textContent: w.deliveryError }));
    } else if (w.deliveries.length === 0) {
      deliveries.append(el('li', { className: 'muted', textContent: 'none yet' }));
    }
    for (const d of w.deliveries || []) {
      const ok = Number.isInteger(d.status_code) && d.status_code >= 200 && d.status_code < 300;
      const when = Number.isFinite(d.sent_at_ms) ? new Date(d.sent_at_ms).toISOString().slice(11, 19) : '';
      deliveries.append(el('li', { 'data-ok': String(ok), textContent: `${when} #${d.attempt ?? '?'} ${d.status_code ?? '—'}${d.error ? ` ${d.error}` : ''}${Number.isFinite(d.latency_ms) ? ` ${d.latency_ms} ms` : ''}` }));
    }
    rows.append(el('tr', { 'data-webhook': w.webhook_id },
      el('td', {}, w.url ?? '', el('small', { className: 'muted', textContent: w.description ? ` · ${w.description}` : '' })),
      el('td', { textContent: Array.isArray(w.event_types) ? w.event_types.join(', ') : 'all' }),
      el('td', { textContent: w.disabled ? 'disabled' : 'active' }),
      el('td', {}, deliveries),
    ));
  }
}

/** What every clock shows now, from the views and the server's time. */
function displays(now = serverNow()) {
  const out = new Map();
  for (const [id, view] of state.sessions) out.set(id, computeDisplay(view, now));
  return out;
}

/** Writes the digits of every clock (every frame: nothing counts down). */
function tick() {
  const now = serverNow();
  for (const [id, d] of displays(now)) {
    const row = document.querySelector(`tr[data-session="${id}"]`);
    if (!row || !d) continue;
    for (const p of d.participants) {
      const node = row.querySelector(`.clock[data-participant="${CSS.escape(p.participant_id)}"]`);
      if (!node) continue;
      node.dataset.active = String(!!p.is_active);
      node.dataset.running = String(p.running);
      node.dataset.expired = String(!!p.has_expired);
      const shown = d.sync_mode === 'count_up' ? p.time_used_ms : p.time_remaining_ms;
      node.querySelector('.digits').textContent = formatMs(shown);
    }
    const session = row.querySelector('.clock[data-participant=""] .digits');
    if (session) {
      session.textContent = formatMs(d.sync_mode === 'global' ? d.time_remaining_ms : d.elapsed_ms);
    }
  }
  const off = estimator.offset;
  $('clock-meta').textContent = off === null ? '' : `server time offset ${off.toFixed(0)} ms ± ${(estimator.uncertainty ?? 0).toFixed(1)}`;
}

function frame() {
  tick();
  requestAnimationFrame(frame);
}

$('token-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  state.token = $('token').value.trim();
  if (state.token) sessionStorage.setItem(TOKEN_KEY, state.token);
  else sessionStorage.removeItem(TOKEN_KEY);
  $('token').value = '';
  state.presenceAvailable = null;
  state.webhooks = null;
  refresh();
});
$('forget-token').addEventListener('click', () => {
  state.token = '';
  sessionStorage.removeItem(TOKEN_KEY);
  refresh();
});
$('more-sessions').addEventListener('click', () => {
  state.wanted += PAGE_LIMIT;
  refresh();
});

window.kairosAdmin = {
  /** What the page shows right now, per session, for tests. */
  sample() {
    const now = serverNow();
    const sessions = {};
    for (const [id, d] of displays(now)) {
      const row = document.querySelector(`tr[data-session="${id}"]`);
      const clocks = {};
      const texts = {};
      for (const p of d.participants) {
        clocks[p.participant_id] = d.sync_mode === 'count_up' ? p.time_used_ms : p.time_remaining_ms;
        texts[p.participant_id] = row?.querySelector(`.clock[data-participant="${CSS.escape(p.participant_id)}"] .digits`)?.textContent ?? null;
      }
      sessions[id] = {
        status: d.status,
        mode: d.sync_mode,
        version: d.version,
        active: d.active_participant_id,
        clocks,
        texts,
        presence: row?.children[4]?.textContent ?? null,
      };
    }
    return {
      auth: state.auth,
      error: state.error,
      offset: estimator.offset,
      samples: estimator.sampleCount,
      serverNow: now,
      sessions,
      webhooks: state.webhooks === 'unavailable' ? 'unavailable' : (state.webhooks || []).map((w) => w.webhook_id),
      tokenStored: sessionStorage.getItem(TOKEN_KEY) !== null,
    };
  },
  refresh,
};

refresh();
setInterval(refresh, REFRESH_MS);
requestAnimationFrame(frame);
