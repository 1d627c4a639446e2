// The SyncKairos demo page's script: why this file exists.
// It turns index.html into a working shared clock with nothing but the SDK:
// a form that creates a session over REST, then a view of that session
// (`/?session=<id>`) drawn every animation frame from the SDK's display
// math, pressed with space or a tap. Every clock it draws also carries its
// value in milliseconds as data attributes, and `window.kairosDemo.sample()`
// renders and reads them at one instant, so browser tests (and curious
// people) can compare what two screens show.

import { KairosClient, createSession, formatMs } from '/sdk/kairos.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const token = params.get('token') || null;
const sessionParam = params.get('session');

const MODE_NAMES = {
  per_participant: 'Chess clock',
  per_cycle: 'Turn timer',
  per_group: 'Team clock',
  global: 'Countdown',
  count_up: 'Stopwatch',
};

/** Below this, a running clock's digits turn red. */
const LOW_MS = 10_000;

/** What the arbiter's button adds (docs/protocol.md, added time). */
const ADD_TIME_MS = 120_000;

const MINUTE = 60_000;

/**
 * Chess time controls of real events (docs/protocol.md, time controls):
 * each player's bank and the session fields that make the rule. All with
 * lag compensation (the SDK sends its measured lag on every move) and a
 * warning at one minute and at ten seconds.
 */
const PRESETS = {
  fide: {
    total_time_ms: 90 * MINUTE,
    stages: [
      { moves: 40, increment_ms: 30_000 },
      { add_ms: 30 * MINUTE, increment_ms: 30_000 },
    ],
  },
  rapid: { total_time_ms: 15 * MINUTE, increment_ms: 10_000 },
  blitz: { total_time_ms: 3 * MINUTE, increment_ms: 2000 },
  us_delay: { total_time_ms: 90 * MINUTE, delay_ms: 5000, delay_mode: 'simple' },
  bronstein: { total_time_ms: 25 * MINUTE, delay_ms: 5000, delay_mode: 'bronstein' },
};

if (sessionParam) {
  showSession(sessionParam);
} else {
  showCreate();
}

// ---------------------------------------------------------------------------
// Creating a clock.

function showCreate() {
  document.body.dataset.view = 'create';
  $('create').hidden = false;
  const form = $('create-form');
  const syncFields = () => {
    const mode = form.elements.mode.value;
    for (const el of form.querySelectorAll('[data-for]')) {
      el.hidden = !el.dataset.for.split(' ').includes(mode);
    }
    for (const el of form.querySelectorAll('[data-label-for]')) {
      el.hidden = !el.dataset.labelFor.split(' ').includes(mode);
    }
    // A preset sets the chess clock's time itself.
    if (mode === 'per_participant' && form.elements.preset.value !== '') {
      for (const el of form.querySelectorAll('[data-custom]')) el.hidden = true;
    }
    const minutes = form.elements.minutes;
    if (mode === 'count_up' && minutes.dataset.touched !== 'true') minutes.value = '';
    if (mode !== 'count_up' && minutes.value === '') minutes.value = '5';
  };
  form.elements.minutes.addEventListener('input', (e) => {
    e.target.dataset.touched = 'true';
  });
  for (const radio of form.elements.mode) radio.addEventListener('change', syncFields);
  form.elements.preset.addEventListener('change', syncFields);
  syncFields();

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const error = $('create-error');
    error.hidden = true;
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      const view = await createSession(buildConfig(form), { token });
      const next = new URLSearchParams({ session: view.session_id });
      if (token) next.set('token', token);
      location.assign(`/?${next}`);
    } catch (err) {
      error.textContent = err.message || String(err);
      error.hidden = false;
      button.disabled = false;
    }
  });
}

function buildConfig(form) {
  const f = form.elements;
  const mode = f.mode.value;
  const ms = (value, unit) => Math.round(Number(value) * unit);
  const names = [f.p1.value.trim() || 'Player 1', f.p2.value.trim() || 'Player 2'];
  const ids = ['p1', 'p2'];
  const labels = { p1: names[0], p2: names[1] };
  const config = {
    sync_mode: mode,
    participants: ids.map((id) => ({ participant_id: id })),
    metadata: { demo: true, labels },
  };
  const preset = mode === 'per_participant' ? PRESETS[f.preset.value] : undefined;
  if (preset) {
    const { total_time_ms: bank, ...rule } = preset;
    for (const p of config.participants) p.total_time_ms = bank;
    Object.assign(config, rule, { lag_compensation: { enabled: true }, warnings_ms: [60_000, 10_000] });
    config.metadata.preset = f.preset.value;
  } else if (mode === 'per_participant') {
    for (const p of config.participants) p.total_time_ms = ms(f.minutes.value, 60_000);
    config.increment_ms = ms(f.increment.value || 0, 1000);
  } else if (mode === 'per_cycle') {
    config.time_per_cycle_ms = ms(f.cycle.value, 1000);
  } else if (mode === 'global') {
    config.total_time_ms = ms(f.minutes.value, 60_000);
  } else if (mode === 'count_up' && f.minutes.value !== '') {
    config.max_time_ms = ms(f.minutes.value, 60_000);
  }
  return config;
}

// ---------------------------------------------------------------------------
// Showing a clock.

function showSession(sessionId) {
  document.body.dataset.view = 'session';
  $('session').hidden = false;
  const share = new URL('/', location.href);
  share.searchParams.set('session', sessionId);
  $('share-link').value = share.href;
  $('copy-link').addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(share.href);
      $('copy-link').textContent = 'Copied';
    } catch {
      $('share-link').select();
    }
    setTimeout(() => {
      $('copy-link').textContent = 'Copy link';
    }, 1500);
  });

  const client = new KairosClient({ sessionId, token });
  let structure = '';
  let faces = new Map(); // clock key -> { el, digits, sub }
  let chips = new Map(); // participant id -> chip element
  let lastSnapshot = null;

  const labelOf = (state, id) => (state.metadata && state.metadata.labels && state.metadata.labels[id]) || id;

  function build(state) {
    const container = $('faces');
    container.replaceChildren();
    faces = new Map();
    chips = new Map();
    const mode = state.sync_mode;
    const addFace = (key, label, wide) => {
      const el = document.createElement('div');
      el.className = wide ? 'face wide' : 'face';
      el.dataset.clock = key;
      el.innerHTML = '<div class="label"></div><div class="digits">–</div><div class="delay" hidden></div><div class="sub"></div>';
      el.querySelector('.label').textContent = label;
      el.addEventListener('click', () => {
        // Pressing the running clock ends that turn (or records the lap,
        // passes the word); pressing a clock that is not running does nothing.
        if (el.dataset.active === 'true' || wide) press();
      });
      container.append(el);
      faces.set(key, {
        el,
        digits: el.querySelector('.digits'),
        delay: el.querySelector('.delay'),
        sub: el.querySelector('.sub'),
      });
    };
    if (mode === 'global' || mode === 'count_up') {
      addFace(mode === 'global' ? '__global' : '__elapsed', mode === 'global' ? 'Time left' : 'Elapsed', true);
      if (state.participants.length > 0) {
        const row = document.createElement('div');
        row.className = 'speakers';
        for (const p of state.participants) {
          const chip = document.createElement('span');
          chip.className = 'speaker';
          chip.dataset.participant = p.participant_id;
          row.append(chip);
          chips.set(p.participant_id, chip);
        }
        container.append(row);
      }
    } else {
      for (const p of state.participants) addFace(p.participant_id, labelOf(state, p.participant_id), false);
    }
  }

  /** Draws every clock at the SDK's current server time; returns that time. */
  function renderClocks() {
    const snap = client.getSnapshot();
    const state = snap.state;
    if (!state) return null;
    const key = [state.sync_mode, ...state.participants.map((p) => p.participant_id)].join('|');
    if (key !== structure) {
      structure = key;
      build(state);
    }
    const serverNow = client.now();
    const d = client.display(serverNow);
    const set = (face, ms, { active, running, expired, low, text, sub }) => {
      if (!face) return;
      const value = String(Math.round(ms));
      if (face.el.dataset.remainingMs !== value) face.el.dataset.remainingMs = value;
      face.el.dataset.active = String(active);
      face.el.dataset.running = String(running);
      face.el.dataset.expired = String(expired);
      face.el.dataset.low = String(low);
      // H:MM:SS (a classical game's 1:30:00) needs smaller digits to fit.
      face.el.dataset.long = String(text.split(':').length > 2);
      face.el.classList.toggle('pressable', active && d.status === 'running');
      if (face.digits.textContent !== text) face.digits.textContent = text;
      if (sub !== undefined && face.sub.textContent !== sub) face.sub.textContent = sub;
    };
    if (d.sync_mode === 'global') {
      const left = d.time_remaining_ms ?? 0;
      set(faces.get('__global'), left, {
        active: d.status === 'running',
        running: d.ticking,
        expired: left <= 0 && d.status === 'expired',
        low: left < LOW_MS,
        text: formatMs(left),
        sub: d.active_participant_id ? `Speaking: ${labelOf(state, d.active_participant_id)}` : '',
      });
    } else if (d.sync_mode === 'count_up') {
      const max = d.max_time_ms;
      const left = max === null ? null : Math.max(0, max - d.elapsed_ms);
      set(faces.get('__elapsed'), d.elapsed_ms, {
        active: d.status === 'running',
        running: d.ticking,
        expired: d.status === 'expired',
        low: left !== null && left < LOW_MS,
        text: formatMs(d.elapsed_ms, { tenthsBelowMs: Infinity }),
        sub: left === null ? 'No limit' : `${formatMs(left)} left of ${formatMs(max)}`,
      });
    } else {
      const stages = Array.isArray(state.stages) ? state.stages : [];
      for (const p of d.participants) {
        const rem = p.time_remaining_ms;
        const moves = p.cycle_count === 1 ? '1 turn' : `${p.cycle_count} turns`;
        const face = faces.get(p.participant_id);
        // The increment of the clock's stage (the session's without stages).
        const stage = stages[Math.min(p.stage_index, stages.length - 1)];
        const increment = stage ? stage.increment_ms : (state.increment_ms ?? 0);
        const parts = [moves];
        if (stages.length > 1) {
          parts.push(
            p.moves_to_next_stage === null
              ? `stage ${p.stage_index + 1}/${stages.length}`
              : `stage ${p.stage_index + 1}/${stages.length}, ${p.moves_to_next_stage} to go`,
          );
        }
        if (d.sync_mode === 'per_participant' && increment > 0) parts.push(`+${increment / 1000} s a move`);
        const delayMs = stage ? stage.delay_ms : (state.delay_ms ?? 0);
        if (p.delay_mode !== 'none' && delayMs > 0) parts.push(`${p.delay_mode === 'simple' ? 'delay' : 'Bronstein'} ${delayMs / 1000} s`);
        set(face, rem, {
          active: p.is_active && !['completed', 'cancelled', 'expired'].includes(d.status),
          running: p.running && !p.in_delay,
          expired: p.has_expired || (rem <= 0 && d.status === 'expired' && p.is_active),
          low: rem < LOW_MS,
          text: formatMs(rem),
          sub: parts.join(' · '),
        });
        if (face) {
          face.el.dataset.stageIndex = String(p.stage_index);
          face.el.dataset.movesToNextStage = p.moves_to_next_stage === null ? '' : String(p.moves_to_next_stage);
          const delay = p.delay_remaining_ms;
          const delayValue = delay === null ? '' : String(Math.round(delay));
          if (face.el.dataset.delayMs !== delayValue) face.el.dataset.delayMs = delayValue;
          face.el.dataset.inDelay = String(p.in_delay);
          // The delay's own countdown: simple delay while it holds the clock,
          // Bronstein's what this move can still get back.
          const showDelay = delay !== null && p.is_active && p.delay_mode !== 'none';
          face.delay.hidden = !showDelay;
          const delayText = showDelay
            ? `${p.delay_mode === 'simple' ? 'delay' : 'back'} ${formatMs(delay)}`
            : '';
          if (face.delay.textContent !== delayText) face.delay.textContent = delayText;
        }
      }
    }
    for (const p of d.participants) {
      const chip = chips.get(p.participant_id);
      if (!chip) continue;
      chip.dataset.active = String(p.is_active);
      const text = d.sync_mode === 'count_up'
        ? `${labelOf(state, p.participant_id)} · ${formatMs(p.time_used_ms, { tenthsBelowMs: Infinity })}`
        : labelOf(state, p.participant_id);
      if (chip.textContent !== text) chip.textContent = text;
    }
    document.body.dataset.serverNow = String(Math.round(serverNow));
    return serverNow;
  }

  function renderMeta(snap) {
    const state = snap.state;
    const body = document.body.dataset;
    body.connection = snap.connection;
    $('stat-connection').textContent = snap.connection + (snap.reconnectAttempt ? ` (#${snap.reconnectAttempt})` : '');
    if (snap.offset !== null) {
      body.offsetMs = snap.offset.toFixed(1);
      const big = Math.abs(snap.offset) >= 1000 ? ` (${(snap.offset / 1000).toFixed(1)} s)` : '';
      $('stat-offset').textContent = snap.uncertainty === null
        ? `${snap.offset.toFixed(0)} ms${big} (rough)`
        : `${snap.offset >= 0 ? '+' : ''}${snap.offset.toFixed(1)} ± ${snap.uncertainty.toFixed(1)} ms${big}`;
    }
    if (snap.rtt !== null) {
      body.rttMs = snap.rtt.toFixed(1);
      $('stat-rtt').textContent = `${snap.rtt.toFixed(1)} ms`;
    }
    if (snap.connection === 'error' || snap.deleted) {
      const err = snap.error;
      showError(
        err && err.code === 'SESSION_NOT_FOUND'
          ? 'This clock does not exist (any more): sessions expire an hour after their last change.'
          : `${err ? err.message : 'The session ended.'}`,
        true,
      );
    }
    if (!state) return;
    body.status = state.status;
    body.version = String(state.version);
    const status = $('status');
    status.textContent = state.status;
    status.dataset.status = state.status;
    $('mode-name').textContent = MODE_NAMES[state.sync_mode] || state.sync_mode;
    $('stat-version').textContent = String(state.version);
    const pressLabel = { global: 'Next speaker', count_up: 'Lap' }[state.sync_mode] || 'Press clock';
    $('btn-press').firstChild.textContent = `${pressLabel} `;
    $('btn-start').hidden = state.status !== 'pending';
    $('btn-press').hidden = state.status !== 'running';
    $('btn-pause').hidden = state.status !== 'running';
    $('btn-resume').hidden = state.status !== 'paused';
    $('btn-add-time').hidden = !(
      ['per_participant', 'per_group'].includes(state.sync_mode) &&
      ['pending', 'running', 'paused'].includes(state.status) &&
      (state.active_participant_id || state.active_group_id)
    );
    document.title = `${MODE_NAMES[state.sync_mode] || 'Clock'} · ${state.status} — SyncKairos`;
  }

  let errorTimer = null;
  function showError(message, sticky = false) {
    const el = $('session-error');
    el.textContent = message;
    el.hidden = false;
    clearTimeout(errorTimer);
    if (!sticky) {
      errorTimer = setTimeout(() => {
        el.hidden = true;
      }, 4000);
    }
  }

  const report = (err) => {
    // Two screens pressing at once: the second press finds a newer version.
    if (err && err.code === 'CONFLICT') return;
    showError(err && err.message ? err.message : String(err));
  };

  function press() {
    const state = client.getSnapshot().state;
    if (!state) return;
    if (state.status === 'pending') {
      client.start().catch(report);
    } else if (state.status === 'running') {
      client.switch({ expectedVersion: state.version }).catch(report);
    }
  }

  function togglePause() {
    const state = client.getSnapshot().state;
    if (!state) return;
    if (state.status === 'running') client.pause({ expectedVersion: state.version }).catch(report);
    else if (state.status === 'paused') client.resume({ expectedVersion: state.version }).catch(report);
  }

  /** The arbiter's "+2 min": for the participant (group) to move. */
  function addTime() {
    const state = client.getSnapshot().state;
    if (!state) return;
    const target = state.sync_mode === 'per_group' && state.active_group_id
      ? { groupId: state.active_group_id }
      : state.active_participant_id;
    if (!target) return;
    client.addTime(target, ADD_TIME_MS, 'arbiter').catch(report);
  }

  let warningTimer = null;
  client.on('warning', (event) => {
    const el = $('session-warning');
    const who = event.participant_id ? labelOf(client.getSnapshot().state || {}, event.participant_id) : event.group_id;
    el.textContent = `${who || 'Clock'}: ${formatMs(event.time_remaining_ms, { tenthsBelowMs: 0 })} left`;
    el.hidden = false;
    document.body.dataset.lastWarningMs = String(event.time_remaining_ms);
    clearTimeout(warningTimer);
    warningTimer = setTimeout(() => {
      el.hidden = true;
    }, 5000);
  });

  $('btn-start').addEventListener('click', press);
  $('btn-add-time').addEventListener('click', addTime);
  $('btn-press').addEventListener('click', press);
  $('btn-pause').addEventListener('click', togglePause);
  $('btn-resume').addEventListener('click', togglePause);
  document.addEventListener('keydown', (e) => {
    if (e.target instanceof HTMLInputElement || e.metaKey || e.ctrlKey || e.altKey) return;
    if (e.code === 'Space' || e.key === ' ') {
      // Space presses the clock, even with a button focused (which it
      // would otherwise click a second time).
      e.preventDefault();
      if (!e.repeat) press();
    } else if ((e.key === 'p' || e.key === 'P') && !e.repeat) {
      togglePause();
    }
  });

  client.subscribe((snap) => {
    if (snap !== lastSnapshot) {
      lastSnapshot = snap;
      renderMeta(snap);
    }
  });
  renderMeta(client.getSnapshot());

  const frame = () => {
    renderClocks();
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);

  // For tests and the console: render now, then read back what is displayed.
  window.kairosDemo = {
    client,
    sample() {
      const serverNow = renderClocks();
      const clocks = {};
      const texts = {};
      const active = [];
      const delays = {};
      const delayTexts = {};
      const stages = {};
      const subs = {};
      for (const el of document.querySelectorAll('#faces [data-clock]')) {
        const key = el.dataset.clock;
        clocks[key] = Number(el.dataset.remainingMs);
        texts[key] = el.querySelector('.digits').textContent;
        subs[key] = el.querySelector('.sub').textContent;
        if (el.dataset.active === 'true') active.push(key);
        if (el.dataset.delayMs !== undefined) delays[key] = el.dataset.delayMs === '' ? null : Number(el.dataset.delayMs);
        const delayEl = el.querySelector('.delay');
        delayTexts[key] = delayEl && !delayEl.hidden ? delayEl.textContent : null;
        if (el.dataset.stageIndex !== undefined) {
          stages[key] = {
            index: Number(el.dataset.stageIndex),
            movesToNext: el.dataset.movesToNextStage === '' ? null : Number(el.dataset.movesToNextStage),
          };
        }
      }
      const snap = client.getSnapshot();
      return {
        serverNow,
        clientNow: Date.now(),
        status: snap.state ? snap.state.status : null,
        version: snap.version,
        activeParticipantId: snap.state ? snap.state.active_participant_id : null,
        active,
        clocks,
        texts,
        delays,
        delayTexts,
        stages,
        subs,
        offset: snap.offset,
        uncertainty: snap.uncertainty,
        rtt: snap.rtt,
        samples: snap.samples,
        connection: snap.connection,
      };
    },
  };
}
