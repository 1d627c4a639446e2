// Types of the SyncKairos browser SDK (/sdk/kairos.js): why this file exists.
// The SDK is plain JavaScript so that it needs no build step; these
// declarations give TypeScript users (and editors) its API. Served at
// /sdk/kairos.d.ts; the API is documented in docs/sdk.md.

export declare const SDK_VERSION: string;

export type SyncMode = 'per_participant' | 'per_cycle' | 'per_group' | 'global' | 'count_up';
export type SessionStatus = 'pending' | 'running' | 'paused' | 'completed' | 'cancelled' | 'expired';

/** One participant of a session view (docs/protocol.md, "The session view"). */
export interface ParticipantView {
  participant_id: string;
  participant_index: number;
  /** Absent (never null) when the participant is in no group. */
  group_id?: string;
  total_time_ms: number;
  time_used_ms: number;
  time_remaining_ms: number;
  cycle_count: number;
  is_active: boolean;
  has_expired: boolean;
  /** **(ext)** 0-based stage of this clock (0 without stages); absent from views of older servers. */
  stage_index?: number;
  /** **(ext)** Moves left until the next stage; null in the last stage and without stages. */
  moves_to_next_stage?: number | null;
  /** **(ext)** What is left of the running turn's delay (active clock only), else null. */
  delay_remaining_ms?: number | null;
  /** **(ext)** The lag quota (null with lag compensation off). */
  lag_quota_ms?: number | null;
}

/** One group of a session view. */
export interface GroupView {
  group_id: string;
  group_index: number;
  total_time_ms: number;
  time_used_ms: number;
  time_remaining_ms: number;
  is_active: boolean;
  has_expired: boolean;
  /** **(ext)** As on {@link ParticipantView}. */
  stage_index?: number;
  moves_to_next_stage?: number | null;
  delay_remaining_ms?: number | null;
}

export type DelayMode = 'none' | 'simple' | 'bronstein';

/** **(ext)** One stage of a time control, as echoed in the view. */
export interface StageView {
  /** Moves in this stage; null on the last. */
  moves: number | null;
  add_ms: number;
  increment_ms: number;
  delay_ms: number;
  delay_mode: DelayMode;
}

/**
 * A session view as the server sends it, computed at `server_time_ms`.
 * `increment_ms`, `max_time_ms` and each participant's `group_id` are left
 * out when they have no value (as v2 clients expect); every other field is
 * always present, `null` when empty.
 */
export interface SessionView {
  session_id: string;
  sync_mode: SyncMode;
  status: SessionStatus;
  version: number;
  participants: ParticipantView[];
  active_participant_id: string | null;
  total_time_ms: number | null;
  time_per_cycle_ms: number | null;
  /** The increment per switch (0 when none was configured); optional in the v2 format. */
  increment_ms?: number;
  /** The bank cap, or the stopwatch limit in count_up; absent when there is none. */
  max_time_ms?: number;
  cycle_started_at: string | null;
  session_started_at: string | null;
  session_completed_at: string | null;
  created_at: string;
  updated_at: string;
  metadata: Record<string, unknown>;
  server_time_ms: number;
  cycle_started_at_ms: number | null;
  session_started_at_ms: number | null;
  session_completed_at_ms: number | null;
  created_at_ms: number;
  updated_at_ms: number;
  active_group_id: string | null;
  groups: GroupView[];
  time_remaining_ms: number | null;
  elapsed_ms: number;
  action_on_timeout: { type: 'end_session' | 'skip_cycle' | 'auto_action'; action?: string; [extra: string]: unknown };
  auto_advance: boolean;
  expired_participant_id?: string;
  /** **(ext)** The time control echoed: `[]` without stages. Absent from views of older servers. */
  stages?: StageView[];
  /** **(ext)** Session-level delay (without stages). */
  delay_ms?: number;
  delay_mode?: DelayMode;
  lag_compensation?: { enabled: boolean };
  /** **(ext)** Warning thresholds, descending. */
  warnings_ms?: number[];
  /** **(ext)** The scheduled start, or null. */
  start_at_ms?: number | null;
}

/** **(ext)** A `time_warning` event: the running clock reached `time_remaining_ms` (a threshold of `warnings_ms`) at `at_ms`. */
export interface TimeWarningEvent extends SessionEvent {
  event_type: 'time_warning';
  time_remaining_ms: number;
}

/** An audit event (`EVENT` messages, docs/protocol.md, "Events"). */
export interface SessionEvent {
  event_id: string;
  session_id: string;
  version: number;
  event_type: string;
  participant_id: string | null;
  group_id: string | null;
  at_ms: number;
  time_remaining_ms: number | null;
  time_elapsed_ms: number | null;
  action: string | null;
  metadata: Record<string, unknown>;
}

/** **(ext)** `participant_joined`: `participant_id` joined a live session at `metadata.index`. */
export interface ParticipantJoinedEvent extends SessionEvent {
  event_type: 'participant_joined';
  participant_id: string;
  metadata: { index: number; [extra: string]: unknown };
}

/**
 * **(ext)** `participant_left`: `participant_id` left. When its turn was on,
 * `time_elapsed_ms` is the time charged and `metadata.next_participant_id`
 * whose turn began (absent when nobody eligible was left: `session_completed`
 * follows in the same version).
 */
export interface ParticipantLeftEvent extends SessionEvent {
  event_type: 'participant_left';
  participant_id: string;
  metadata: { next_participant_id?: string; [extra: string]: unknown };
}

/**
 * **(ext)** `presence_joined` (a user's first connection) and `presence_left`
 * (their last one closed and they did not come back within the leave delay;
 * `at_ms` is when it closed). Not state changes: `version` is 0.
 * `participant_id` is set when the connection names a participant.
 */
export interface PresenceEvent extends SessionEvent {
  event_type: 'presence_joined' | 'presence_left';
  version: 0;
  metadata: { sub: string; [extra: string]: unknown };
}

/** **(ext)** One user connected to a session (`GET /v1/sessions/{id}/presence`). */
export interface PresenceUser {
  /** The token's `sub` (with auth off: the socket's `?user=`), or `anonymous`. */
  sub: string;
  participant_id: string | null;
  connections: number;
  since_ms: number;
}

/** **(ext)** `GET /v1/sessions/{id}/presence`: the session's sockets over every instance. */
export interface Presence {
  connections: number;
  users: PresenceUser[];
}

/** **(ext)** A participant object of the config, as `join` takes it. */
export interface JoiningParticipant {
  participant_id: string;
  /** Where in the rotation (those at or after it move up); left out: the end. */
  participant_index?: number;
  /** Required in per_participant (1000..=86400000). */
  total_time_ms?: number;
  /** Required in per_group: one of the session's groups. */
  group_id?: string;
}

/** A participant as displayed at some server instant. */
export interface DisplayedParticipant extends ParticipantView {
  /** Whether this participant's clock is moving at that instant. */
  running: boolean;
  stage_index: number;
  moves_to_next_stage: number | null;
  /** The delay left at that instant (active clock with a delay), else the view's value (null). */
  delay_remaining_ms: number | null;
  /** The delay mode of this clock's stage. */
  delay_mode: DelayMode;
  /** A `simple` delay is running: the main clock holds while `delay_remaining_ms` runs down. */
  in_delay: boolean;
  lag_quota_ms: number | null;
}

/** A group as displayed at some server instant. */
export interface DisplayedGroup extends GroupView {
  running: boolean;
  stage_index: number;
  moves_to_next_stage: number | null;
  delay_remaining_ms: number | null;
  delay_mode: DelayMode;
  in_delay: boolean;
}

/** Every clock of a session at one server instant ({@link computeDisplay}). */
export interface Display {
  server_now: number;
  session_id: string;
  version: number;
  status: SessionStatus;
  sync_mode: SyncMode;
  /** `status === 'running'`. */
  running: boolean;
  /** Running and the running clock has not reached its deadline yet. */
  ticking: boolean;
  active_participant_id: string | null;
  active_group_id: string | null;
  participants: DisplayedParticipant[];
  byId: Record<string, DisplayedParticipant>;
  groups: DisplayedGroup[];
  /** The session countdown (global mode), else null. */
  time_remaining_ms: number | null;
  /** Running time since start, pauses excluded (the stopwatch in count_up). */
  elapsed_ms: number;
  /** The view's `max_time_ms`, or null when it has none. */
  max_time_ms: number | null;
  /** The running clock's delay mode (`none` when it has no delay). */
  delay_mode: DelayMode;
  /** The running clock's delay left at that instant, or null. */
  delay_remaining_ms: number | null;
  /** Whether the session has lag compensation on. */
  lag_compensation: boolean;
}

export declare class KairosError extends Error {
  constructor(code: string, message: string, details?: unknown);
  /**
   * A wire error code (`CONFLICT`, `INVALID_STATE_TRANSITION`, ...) or one of
   * the SDK's: `SESSION_NOT_FOUND` (close 4404), `POLICY_VIOLATION` (close
   * 1008; `message` and `details.reason` are the close reason, e.g.
   * `token expired`), `TOKEN_UNAVAILABLE` (`getToken` threw, rejected or
   * returned no token), `SESSION_DELETED`, `NOT_CONNECTED`, `DISCONNECTED`,
   * `TIMEOUT`, `CLOSED`, `UNSUPPORTED`, `CONNECT_FAILED`, `HTTP_<status>`.
   */
  code: string;
  /**
   * The wire error's details; for a fatal close `{ close_code, reason }`;
   * for `TOKEN_UNAVAILABLE` `{ cause }` (plus `close_code` and `reason` when
   * it followed a `token expired` close).
   */
  details?: unknown;
}

export interface OffsetSample {
  sent: number;
  received: number;
  server: number;
  rtt: number;
  /** The range the true offset lies in, whatever the legs: `[server - received, server + resolution - sent]`. */
  lo: number;
  hi: number;
  /** Its middle: `server - received + rtt/2 + resolution/2`. */
  offset: number;
}

/**
 * Estimates `server clock - client clock` from PING/PONG round trips: the
 * middle of the range every one of the last `window` samples allows (the
 * smallest round trips bound it). `resolution` is the server timestamps'
 * granularity (whole ms: 1).
 */
export declare class OffsetEstimator {
  constructor(options?: { window?: number; resolution?: number });
  readonly window: number;
  readonly resolution: number;
  /** How many times a jumped clock made it drop its samples. */
  readonly resets: number;
  addSample(sample: { sent: number; received: number; server: number }): OffsetSample | null;
  setProvisional(offset: number): void;
  reset(): void;
  readonly offset: number | null;
  /** Half the best round trip. */
  readonly uncertainty: number | null;
  /** Half-width of the range all samples allow: a guaranteed error bound. */
  readonly bound: number | null;
  readonly rtt: number | null;
  readonly lastRtt: number | null;
  readonly sampleCount: number;
}

export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed' | 'error';

/** What {@link KairosClient.getSnapshot} returns: frozen, replaced on every change. */
export interface Snapshot {
  connection: ConnectionState;
  /** The last applied view (highest version), or null. */
  state: SessionView | null;
  version: number;
  offset: number | null;
  uncertainty: number | null;
  rtt: number | null;
  samples: number;
  /** The last error: fatal when `connection === 'error'`, informative otherwise. */
  error: KairosError | null;
  lastEvent: SessionEvent | null;
  reconnectAttempt: number;
  deleted: boolean;
}

/** The subset of the browser WebSocket the client uses. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export interface KairosClientOptions {
  sessionId: string;
  /** Where the server is; default: the page's origin. */
  baseUrl?: string;
  /** A JWT, sent as `&token=` on the socket and as a bearer token over REST. Ignored when `getToken` is given. */
  token?: string | null;
  /**
   * Called before every connect and reconnect for the JWT to use, on the
   * socket and over REST (which uses the latest result); wins over `token`.
   * With it, a socket the server closes with 1008 `token expired` is reopened
   * with a fresh token, after the first backoff step. Throwing, rejecting
   * or returning no token stops the client (`TOKEN_UNAVAILABLE`).
   */
  getToken?: () => string | Promise<string>;
  /** The socket URL; default derived from `baseUrl` (and the token). Used as is: `getToken` and `setToken` then only change REST calls. */
  wsUrl?: string;
  /** Open the socket in the constructor (default true). */
  autoConnect?: boolean;
  /** Pause between periodic offset probes (default 4000 ms). */
  pingIntervalMs?: number;
  /** Probes sent right after connecting (default 5), `burstSpacingMs` apart (default 120). */
  burstPings?: number;
  burstSpacingMs?: number;
  /** Offset samples kept (default 8: about half a minute of probes). */
  offsetWindow?: number;
  /** A command not confirmed by then is rejected with TIMEOUT (default 10000 ms). */
  commandTimeoutMs?: number;
  /** Reconnect delays: min(maxMs, initialMs * factor^attempt), of which `jitter` is random. */
  backoff?: { initialMs?: number; maxMs?: number; factor?: number; jitter?: number };
  /** For tests and other runtimes. */
  WebSocket?: new (url: string) => WebSocketLike;
  fetch?: typeof fetch;
  /** This machine's clock in ms since the epoch; default {@link monotonicClock}(). */
  clock?: () => number;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (handle: unknown) => void;
  random?: () => number;
  /** **(ext)** Called for every `time_warning` event (same as `on('warning', ...)`). */
  onWarning?: (event: TimeWarningEvent) => void;
}

export declare class KairosClient {
  constructor(options: KairosClientOptions);
  static socketUrl(baseUrl: string, sessionId: string, token?: string | null): string;
  readonly sessionId: string;
  readonly baseUrl: string;
  /** The URL of the current socket, or of the next one after `setToken`. */
  readonly wsUrl: string;
  readonly estimator: OffsetEstimator;

  /** Calls `listener` after every snapshot change; returns the unsubscribe function. Bound. */
  subscribe(listener: (snapshot: Snapshot) => void): () => void;
  /** The current snapshot; the same object until something changes. Bound. */
  getSnapshot(): Snapshot;

  /** Server time now in ms since the epoch. Bound. */
  now(): number;
  readonly offset: number | null;
  /** Half the best recent round trip. */
  readonly uncertainty: number | null;
  /** Guaranteed bound on the offset's error. */
  readonly bound: number | null;
  readonly rtt: number | null;
  /** Every clock at `serverNow` (default `now()`); null before the first state. */
  display(serverNow?: number): Display | null;

  connect(): void;
  close(): void;
  /**
   * Replaces the token for the next connect and for REST calls; the open
   * socket keeps its own. With `getToken`, the next connect's result replaces
   * it in turn. After a `token expired` error: `setToken(fresh)`, `connect()`.
   */
  setToken(token: string): void;

  /** Over the socket; resolve with the view showing the command's effect, reject with the server's ERROR. */
  /**
   * With `lag_compensation.enabled`, carries `lag_ms`: `lagMs`, else half the
   * latest measured round trip (rounded, clamped to 0..=10000).
   */
  switch(options?: { nextParticipantId?: string; expectedVersion?: number; lagMs?: number }): Promise<SessionView>;
  /** The `lag_ms` a switch would send now (undefined without lag compensation or a measurement). */
  lagMs(explicit?: number): number | undefined;
  /** **(ext)** `ADD_TIME` (owner or admin): `ms` (1..=3600000) more on a participant's or group's bank. */
  addTime(
    target: string | { participantId: string } | { groupId: string },
    ms: number,
    reason?: string,
    options?: { expectedVersion?: number },
  ): Promise<SessionView>;
  /** **(ext)** Server `EVENT`s: `warning` (time_warning), `time_added`, or `event` (all). Returns the unsubscribe function. */
  on(name: 'warning', listener: (event: TimeWarningEvent) => void): () => void;
  on(name: 'participant_joined', listener: (event: ParticipantJoinedEvent) => void): () => void;
  on(name: 'participant_left', listener: (event: ParticipantLeftEvent) => void): () => void;
  on(name: 'presence_joined' | 'presence_left', listener: (event: PresenceEvent) => void): () => void;
  on(name: 'time_added' | 'event', listener: (event: SessionEvent) => void): () => void;
  pause(options?: { expectedVersion?: number }): Promise<SessionView>;
  resume(options?: { expectedVersion?: number }): Promise<SessionView>;
  /** Over REST (the socket has no START / COMPLETE). */
  start(options?: { expectedVersion?: number }): Promise<SessionView>;
  complete(options?: { expectedVersion?: number }): Promise<SessionView>;
  /** **(ext)** REST `GET .../presence`: connections and users over every instance. */
  presence(): Promise<Presence>;
  /** **(ext)** REST `POST .../participants` (owner or admin); an id already there rejects with `PARTICIPANT_EXISTS`. */
  join(participant: JoiningParticipant, options?: { expectedVersion?: number }): Promise<SessionView>;
  /** **(ext)** REST `DELETE .../participants/{participantId}` (owner or admin). */
  leave(participantId: string, options?: { expectedVersion?: number }): Promise<SessionView>;
}

/** Every clock of `state` at `serverNow` (server ms); a pure function. */
export declare function computeDisplay(state: SessionView, serverNow: number): Display;
export declare function computeDisplay(state: SessionView | null, serverNow: number): Display | null;

/** `H:MM:SS`, `M:SS`, or `M:SS.t` below `tenthsBelowMs` (default 10000). Rounds down. */
/** **(ext)** The delay mode of a clock at `stageIndex`: its stage's, else the session's. */
export declare function delayModeOf(state: SessionView | null, stageIndex?: number): DelayMode;

export declare function formatMs(ms: number, options?: { tenthsBelowMs?: number }): string;

/** A monotonic ms-since-epoch clock: the wall clock read once, advanced by performance.now(). */
export declare function monotonicClock(): () => number;

export interface RestOptions {
  baseUrl?: string;
  token?: string | null;
  fetch?: typeof fetch;
}

/** `POST /v1/sessions`; resolves with the new session's view. */
export declare function createSession(config: Record<string, unknown>, options?: RestOptions): Promise<SessionView>;
/** `GET /v1/sessions/{id}`. */
export declare function getSession(sessionId: string, options?: RestOptions): Promise<SessionView>;
/** **(ext)** `GET /v1/sessions/{id}/presence`. */
export declare function getPresence(sessionId: string, options?: RestOptions): Promise<Presence>;
/** **(ext)** `POST /v1/sessions/{id}/participants`; resolves with the view. */
export declare function joinParticipant(
  sessionId: string,
  participant: JoiningParticipant & { expected_version?: number },
  options?: RestOptions,
): Promise<SessionView>;
/** **(ext)** `DELETE /v1/sessions/{id}/participants/{participantId}`; resolves with the view. */
export declare function leaveParticipant(sessionId: string, participantId: string, options?: RestOptions): Promise<SessionView>;
