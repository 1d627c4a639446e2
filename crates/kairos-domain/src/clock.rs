//! The time model, in one place: what every clock shows at an instant, when
//! the running one runs out, and what running out does.
//!
//! A running clock is stored as the instant its segment started plus what was
//! used before it (contract section 1), so every number is a function of
//! (stored state, instant). The transition function (`machine`) and the read
//! model (`view`) both compute through this module: the time used and left
//! per participant, group and session in every sync mode, the next deadline,
//! and the one catch-up loop that applies due deadlines, each as of its own
//! instant and as its own version.
//!
//! The rules of contract section 8 live here too: stages (a move's increment
//! and the next stage's `add_ms`), simple and Bronstein delay (what the clock
//! shows and what a move costs), the lag quota and its grace, and the three
//! kinds of deadline ([`DueKind`]): the expiry (after its grace, applied as
//! of the instant the clock ran out), each time warning, and a scheduled
//! start. The end of a simple delay and a stage boundary change nothing
//! stored (the numbers follow from the state), so they are no deadlines of
//! their own; the expiry and warning instants account for the delay.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::event::{Event, EventType};
use crate::ids::GroupId;
use crate::rotation::{begin_cycle, first_eligible, group_of, next_eligible};
use crate::session::{DelayMode, Session, Status, SyncMode, TimeoutKind};

/// Guard against unbounded catch-up: a `per_cycle` session with
/// `skip_cycle` and `auto_advance` produces one deadline per cycle forever.
/// The scheduler commits each as it comes; this bound only matters after a
/// very long outage, and then the rest is applied by the next call.
pub const MAX_CATCH_UP: usize = 10_000;

/// The running cycle's time and the session's running time (pauses
/// excluded) at some instant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Elapsed {
    /// Time used in the current cycle (wall time of the turn, pauses excluded).
    pub(crate) cycle: i64,
    /// What the running cycle shows as used on the active clock: the cycle
    /// less the part of a `simple` delay it spent (contract section 8).
    pub(crate) charge: i64,
    /// Session running time.
    pub(crate) session: i64,
}

impl Elapsed {
    /// At `now`: the stored values plus the running segment, if running.
    pub(crate) fn at(s: &Session, now: i64) -> Self {
        let seg = match (s.status, s.segment_started_at_ms) {
            (Status::Running, Some(start)) => now.saturating_sub(start).max(0),
            _ => 0,
        };
        Self::with_cycle(
            s,
            s.cycle_used_ms.saturating_add(seg),
            s.elapsed_ms.saturating_add(seg),
        )
    }

    /// As stored, the running segment not counted (what it is at the
    /// segment's start).
    fn stored(s: &Session) -> Self {
        Self::with_cycle(s, s.cycle_used_ms, s.elapsed_ms)
    }

    fn with_cycle(s: &Session, cycle: i64, session: i64) -> Self {
        let (delay, mode) = turn_delay(s);
        let charge = if mode == DelayMode::Simple {
            cycle.saturating_sub(delay).max(0)
        } else {
            cycle
        };
        Self {
            cycle,
            charge,
            session,
        }
    }
}

// --- Stages and delay (contract section 8). ---

/// The rules of one stage: its increment, delay and length.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StageRules {
    /// Moves in the stage; `None` in the last one.
    pub(crate) moves: Option<u32>,
    /// Added by every move made in the stage.
    pub(crate) increment: i64,
    /// The delay of a turn in the stage (0 when none applies).
    pub(crate) delay: i64,
    /// How the delay works (`None` when none applies).
    pub(crate) mode: DelayMode,
}

/// The rules of stage `index` (clamped to the last); without `stages`, the
/// session's one stage of `increment_ms`, `delay_ms` and `delay_mode`.
pub(crate) fn stage_rules(s: &Session, index: u32) -> StageRules {
    let (moves, increment, delay, mode) = match s.stages.len() {
        0 => (None, s.increment_ms, s.delay_ms, s.delay_mode),
        n => {
            let st = &s.stages[(index as usize).min(n - 1)];
            let last = index as usize + 1 >= n;
            (
                st.moves.filter(|_| !last),
                st.increment_ms,
                st.delay_ms,
                st.delay_mode,
            )
        }
    };
    let (delay, mode) = if delay > 0 && mode != DelayMode::None {
        (delay, mode)
    } else {
        (0, DelayMode::None)
    };
    StageRules {
        moves,
        increment,
        delay,
        mode,
    }
}

/// The stage the bank participant `i` plays on is in: its own
/// (`per_participant`), its group's (`per_group`), else 0.
pub(crate) fn stage_of_participant(s: &Session, i: usize) -> (u32, u32) {
    match s.sync_mode {
        SyncMode::PerParticipant => s
            .participants
            .get(i)
            .map_or((0, 0), |p| (p.stage_index, p.stage_moves)),
        SyncMode::PerGroup => group_of(s, i).map_or((0, 0), |g| {
            (s.groups[g].stage_index, s.groups[g].stage_moves)
        }),
        _ => (0, 0),
    }
}

/// The stage of the active clock.
fn active_stage(s: &Session) -> u32 {
    s.active.map_or(0, |i| stage_of_participant(s, i).0)
}

/// The delay of the running turn and how it works.
pub(crate) fn turn_delay(s: &Session) -> (i64, DelayMode) {
    if !matches!(s.sync_mode, SyncMode::PerParticipant | SyncMode::PerGroup) {
        return (0, DelayMode::None);
    }
    let r = stage_rules(s, active_stage(s));
    (r.delay, r.mode)
}

/// What is left of the running turn's delay after `cycle` ms of it;
/// `None` when no delay applies.
pub(crate) fn delay_left(s: &Session, cycle: i64) -> Option<i64> {
    match turn_delay(s) {
        (_, DelayMode::None) => None,
        (d, _) => Some(d.saturating_sub(cycle).max(0)),
    }
}

/// What a move after `cycle` ms costs before lag compensation: the delay
/// (both modes) is never charged, and unused delay is never banked.
fn move_charge(s: &Session, cycle: i64) -> i64 {
    let (d, _) = turn_delay(s);
    cycle.saturating_sub(d).max(0)
}

/// The bank and the time charged of the active clock (`per_participant`,
/// `per_group`).
fn active_bank(s: &Session) -> Option<(i64, i64)> {
    match s.sync_mode {
        SyncMode::PerParticipant => s
            .active_participant()
            .map(|p| (p.total_time_ms, p.time_used_ms)),
        SyncMode::PerGroup => s.active_group().map(|g| (g.total_time_ms, g.time_used_ms)),
        _ => None,
    }
}

// --- Lag compensation (contract section 8). ---

/// Most a quota may hold, in gains.
pub const LAG_QUOTA_CAP_GAINS: i64 = 7;
/// What a quota starts with, in gains.
pub const LAG_QUOTA_START_GAINS: i64 = 3;
/// The grace before an expiry takes effect is at most this long.
pub const MAX_GRACE_MS: i64 = 2_000;

/// The quota gain per move for a bank of `bank_ms` with `increment_ms` per
/// move: with E = bank in s + 40 x increment in s, min(1000, 4E + 150) ms
/// (4E rounded down to whole ms).
///
/// ```
/// use kairos_domain::clock::lag_gain_ms;
/// assert_eq!(lag_gain_ms(60_000, 0), 390); // 1+0
/// assert_eq!(lag_gain_ms(300_000, 0), 1000); // 5+0 caps at 1 s
/// ```
pub fn lag_gain_ms(bank_ms: i64, increment_ms: i64) -> i64 {
    let e_ms = bank_ms.saturating_add(increment_ms.saturating_mul(40));
    (e_ms.saturating_mul(4) / 1000)
        .saturating_add(150)
        .min(1000)
}

/// The compensation a move with `lag_ms` gets: `min(lag_ms, quota)`; 0 when
/// compensation is off.
fn lag_comp(s: &Session, lag_ms: Option<u32>) -> i64 {
    match (s.lag_compensation, s.active_participant()) {
        (true, Some(p)) => i64::from(lag_ms.unwrap_or(0)).min(p.lag_quota_ms).max(0),
        _ => 0,
    }
}

/// The grace before the active clock's expiry takes effect.
fn grace(s: &Session) -> i64 {
    match (s.lag_compensation, s.active_participant()) {
        (true, Some(p)) => p.lag_quota_ms.clamp(0, MAX_GRACE_MS),
        _ => 0,
    }
}

/// Whether a switch at `now` with `lag_ms` leaves the active clock time
/// once compensated, even though the clock showed zero (the grace).
pub(crate) fn switch_leaves_time(s: &Session, lag_ms: Option<u32>, now: i64) -> bool {
    let Some((bank, used)) = active_bank(s) else {
        return false;
    };
    let e = Elapsed::at(s, now);
    let charged = move_charge(s, e.cycle)
        .saturating_sub(lag_comp(s, lag_ms))
        .max(0);
    bank.saturating_sub(used).saturating_sub(charged) > 0
}

// --- Time used and left: unclamped, `None` where a clock has no bound. ---

fn bank_left(bank: i64, used: i64, running: i64) -> i64 {
    bank.saturating_sub(used).saturating_sub(running)
}

/// What the running cycle shows as used if `i` is the active participant,
/// else nothing. On a bank it never shows more than the bank held (in a
/// lag grace the clock shows zero, not less).
fn running_cycle_of(s: &Session, i: usize, e: &Elapsed) -> i64 {
    if s.active != Some(i) {
        return 0;
    }
    match active_bank(s) {
        Some((bank, used)) => e.charge.min(bank.saturating_sub(used).max(0)),
        None => e.charge,
    }
}

/// Left of a `per_cycle` cycle with `cycle` used.
fn cycle_left(s: &Session, cycle: i64) -> Option<i64> {
    s.time_per_cycle_ms.map(|t| t.saturating_sub(cycle))
}

/// Left of group `g`'s bank.
fn group_left(s: &Session, g: usize, e: &Elapsed) -> i64 {
    let grp = &s.groups[g];
    let cycle = if s.active_group == Some(g) {
        e.charge
    } else {
        0
    };
    bank_left(grp.total_time_ms, grp.time_used_ms, cycle)
}

/// Left of the session's own clock: the `global` countdown, the `count_up`
/// limit; `None` in the other modes or without a bound.
fn session_left(s: &Session, e: &Elapsed) -> Option<i64> {
    match s.sync_mode {
        SyncMode::Global => s.total_time_ms.map(|t| t.saturating_sub(e.session)),
        SyncMode::CountUp => s.max_time_ms.map(|m| m.saturating_sub(e.session)),
        _ => None,
    }
}

/// Left of the clock participant `i` plays on.
fn participant_left(s: &Session, i: usize, e: &Elapsed) -> Option<i64> {
    let p = &s.participants[i];
    let cycle = running_cycle_of(s, i, e);
    match s.sync_mode {
        SyncMode::PerParticipant => Some(bank_left(p.total_time_ms, p.time_used_ms, cycle)),
        SyncMode::PerCycle => cycle_left(s, cycle),
        SyncMode::PerGroup => p
            .group_id
            .as_ref()
            .and_then(|g| s.group_position(g))
            .map(|g| group_left(s, g, e)),
        SyncMode::Global | SyncMode::CountUp => session_left(s, e),
    }
}

/// Left of the clock that runs (the active participant's, group's, cycle's
/// or the session's); `None` for an unbounded stopwatch.
fn running_left(s: &Session, e: &Elapsed) -> Option<i64> {
    match s.sync_mode {
        SyncMode::PerParticipant => s
            .active
            .filter(|&i| i < s.participants.len())
            .and_then(|i| participant_left(s, i, e)),
        SyncMode::PerCycle => cycle_left(s, e.cycle),
        SyncMode::PerGroup => s
            .active_group
            .filter(|&g| g < s.groups.len())
            .map(|g| group_left(s, g, e)),
        SyncMode::Global | SyncMode::CountUp => session_left(s, e),
    }
}

/// What a clock shows: never negative, and zero where it has no bound.
fn shown(left: Option<i64>) -> i64 {
    left.map_or(0, |l| l.max(0))
}

// --- What the read model and events show. ---

/// Time participant `i` used, the running cycle included.
pub(crate) fn participant_used(s: &Session, i: usize, e: &Elapsed) -> i64 {
    s.participants[i]
        .time_used_ms
        .saturating_add(running_cycle_of(s, i, e))
}

/// Time group `g` used, the running cycle included.
pub(crate) fn group_used(s: &Session, g: usize, e: &Elapsed) -> i64 {
    let grp = &s.groups[g];
    let cycle = if s.active_group == Some(g) {
        e.charge
            .min(grp.total_time_ms.saturating_sub(grp.time_used_ms).max(0))
    } else {
        0
    };
    s.groups[g].time_used_ms.saturating_add(cycle)
}

/// Time left on the clock participant `i` plays on (never negative).
pub(crate) fn participant_remaining(s: &Session, i: usize, e: &Elapsed) -> i64 {
    shown(participant_left(s, i, e))
}

/// Time left on group `g`'s bank (never negative).
pub(crate) fn group_remaining(s: &Session, g: usize, e: &Elapsed) -> i64 {
    shown(Some(group_left(s, g, e)))
}

/// The session countdown (`global`; never negative).
pub(crate) fn session_remaining(s: &Session, e: &Elapsed) -> i64 {
    shown(session_left(s, e))
}

/// Remaining time on participant `who`'s clock at `at` (for events); the
/// session's clock when nobody is named; `None` where there is nothing to
/// report.
pub(crate) fn event_remaining(s: &Session, who: Option<usize>, at: i64) -> Option<i64> {
    let e = Elapsed::at(s, at);
    if s.sync_mode == SyncMode::CountUp && s.max_time_ms.is_none() {
        // An unbounded stopwatch has no remaining time to report.
        return None;
    }
    match who {
        Some(i) if i < s.participants.len() => Some(participant_remaining(s, i, &e)),
        _ => matches!(s.sync_mode, SyncMode::Global | SyncMode::CountUp)
            .then(|| session_remaining(s, &e)),
    }
}

/// What is left on the clock of the participant whose cycle of `cycle` ms
/// just ended and was charged.
pub(crate) fn ended_clock_remaining(s: &Session, who: Option<usize>, cycle: i64) -> Option<i64> {
    let p = s.participants.get(who?)?;
    Some(
        match s.sync_mode {
            SyncMode::PerParticipant => p.total_time_ms.saturating_sub(p.time_used_ms),
            SyncMode::PerCycle => s.time_per_cycle_ms.unwrap_or(0).saturating_sub(cycle),
            SyncMode::PerGroup => {
                let g = group_of(s, who?)?;
                let g = &s.groups[g];
                g.total_time_ms.saturating_sub(g.time_used_ms)
            }
            SyncMode::Global => s.total_time_ms.unwrap_or(0).saturating_sub(s.elapsed_ms),
            SyncMode::CountUp => {
                return s.max_time_ms.map(|m| m.saturating_sub(s.elapsed_ms).max(0));
            }
        }
        .max(0),
    )
}

// --- Deadlines. ---

/// What a deadline does when it is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DueKind {
    /// The running clock ran out (or the stopwatch reached its limit):
    /// `action_on_timeout` applies as of [`Due::effect_at`].
    Expiry,
    /// The running clock reached this `warnings_ms` threshold.
    Warning(i64),
    /// A pending session's `start_at_ms`.
    ScheduledStart,
}

/// The next deadline of a session: when the scheduler must act, and the
/// instant the change takes effect as of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// When it is due: the instant the deadline index holds. After
    /// [`Due::effect_at`] only by a lag compensation grace.
    pub fire_at: i64,
    /// The instant it takes effect as of (an expiry's `at_ms` is this, the
    /// instant the clock ran out, even when applied after its grace).
    pub effect_at: i64,
    /// What it does.
    pub kind: DueKind,
}

/// The instant the running clock's display reaches `level`, as a duration
/// from the segment's start: a `simple` delay first, then the clock.
fn time_to_level(s: &Session, level: i64) -> Option<i64> {
    let stored = Elapsed::stored(s);
    let left = running_left(s, &stored)?;
    let wait = if turn_delay(s).1 == DelayMode::Simple {
        delay_left(s, stored.cycle).unwrap_or(0)
    } else {
        0
    };
    Some(wait.saturating_add(left.saturating_sub(level).max(0)))
}

/// The next deadline of `s`, whichever kind comes first: a time warning,
/// the expiry (after its grace), or a scheduled start. Ties go to the
/// earlier effect, so warnings come before the expiry they announce.
pub fn next_due(s: &Session) -> Option<Due> {
    match s.status {
        Status::Pending => s.start_at_ms.map(|at| Due {
            fire_at: at,
            effect_at: at,
            kind: DueKind::ScheduledStart,
        }),
        Status::Running => {
            let seg = s.segment_started_at_ms?;
            // A deadline past i64::MAX never comes; saturating it would
            // expire a clock at i64::MAX with time left on it.
            let expiry = time_to_level(s, 0)
                .and_then(|d| seg.checked_add(d))
                .and_then(|t| {
                    Some(Due {
                        fire_at: t.checked_add(grace(s))?,
                        effect_at: t,
                        kind: DueKind::Expiry,
                    })
                });
            let warning = pending_warning(s).and_then(|w| {
                let at = seg.checked_add(time_to_level(s, w)?)?;
                Some(Due {
                    fire_at: at,
                    effect_at: at,
                    kind: DueKind::Warning(w),
                })
            });
            match (warning, expiry) {
                (Some(w), Some(x)) if x.fire_at < w.fire_at => Some(x),
                (Some(w), _) => Some(w),
                (None, x) => x,
            }
        }
        _ => None,
    }
}

/// The highest threshold not yet done in this turn (the first the clock
/// reaches), if the running clock is bounded.
fn pending_warning(s: &Session) -> Option<i64> {
    s.warnings_ms
        .iter()
        .copied()
        .filter(|w| !s.warned_ms.contains(w))
        .max()
}

/// When the scheduler must next act on `s` (the deadline index holds this):
/// the `fire_at` of [`next_due`].
pub fn next_deadline(s: &Session) -> Option<i64> {
    next_due(s).map(|d| d.fire_at)
}

/// The state as of `now` with every due deadline applied, without events:
/// what a read at `now` shows (versions included).
pub fn settle_deadlines(state: &Session, now: i64) -> Cow<'_, Session> {
    match next_deadline(state) {
        Some(d) if d <= now => {
            let mut s = state.clone();
            let mut sink = Vec::new();
            catch_up(&mut s, now, false, &mut sink, |_, sink, _| sink.clear());
            Cow::Owned(s)
        }
        _ => Cow::Borrowed(state),
    }
}

/// One deadline [`catch_up`] applied.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fired {
    /// When it was due: its `fire_at`, or when the deadline before it in
    /// the same catch-up was, if later (for lateness metrics).
    pub(crate) at: i64,
    /// What it did.
    pub(crate) kind: DueKind,
    /// Index of the participant whose clock ran out, if one was active.
    pub(crate) exhausted: Option<usize>,
}

/// Applies every deadline due by `now`, in order, each as of its own
/// instant and as its own version, at most [`MAX_CATCH_UP`] of them; their
/// events go to `events`. With `force`, an expiry whose clock ran out by
/// `now` is due even inside its grace (a command other than a switch that
/// leaves time finds the clock run out). After each, `each` sees the state,
/// the events and what was applied.
pub(crate) fn catch_up(
    s: &mut Session,
    now: i64,
    force: bool,
    events: &mut Vec<Event>,
    mut each: impl FnMut(&Session, &mut Vec<Event>, Fired),
) {
    let mut applied = 0;
    // A deadline that follows from one applied after its grace (the next
    // turn's warning) became due when that one was applied, not before.
    let mut due_since = i64::MIN;
    while let Some(due) = next_due(s) {
        let forced = force && due.kind == DueKind::Expiry && due.effect_at <= now;
        if (due.fire_at > now && !forced) || applied >= MAX_CATCH_UP {
            break;
        }
        let exhausted = match due.kind {
            DueKind::Expiry => apply_timeout(s, due.effect_at, events),
            DueKind::Warning(w) => {
                apply_warning(s, w, due.effect_at, events);
                None
            }
            DueKind::ScheduledStart => {
                start_session(s, due.effect_at, true, events);
                None
            }
        };
        applied += 1;
        due_since = due_since.max(due.fire_at);
        each(
            s,
            events,
            Fired {
                at: due_since,
                kind: due.kind,
                exhausted,
            },
        );
    }
}

/// The warning for threshold `w`, reached at `at`: its own version.
fn apply_warning(s: &mut Session, w: i64, at: i64, events: &mut Vec<Event>) {
    s.version += 1;
    s.updated_at_ms = s.updated_at_ms.max(at);
    s.warned_ms.push(w);
    let who = s.active;
    let mut meta = Map::new();
    meta.insert("threshold_ms".into(), w.into());
    push_raw(
        s,
        events,
        EventType::TimeWarning,
        who,
        at,
        Some(w),
        None,
        None,
        meta,
    );
}

/// `pending` -> `running` at `at` (a start command, or `start_at_ms`).
pub(crate) fn start_session(s: &mut Session, at: i64, scheduled: bool, events: &mut Vec<Event>) {
    s.version += 1;
    s.updated_at_ms = s.updated_at_ms.max(at);
    s.status = Status::Running;
    s.session_started_at_ms = Some(at);
    s.segment_started_at_ms = Some(at);
    let first = first_eligible(s);
    begin_turn(s, first, at);
    let pid = s.active;
    let mut meta = Map::new();
    if scheduled {
        meta.insert("scheduled".into(), true.into());
    }
    push_event(s, events, EventType::SessionStarted, pid, at, meta);
}

/// Makes `next` active and starts its turn at `at`: the thresholds at or
/// above its clock now are done for this turn (never warned in it).
pub(crate) fn begin_turn(s: &mut Session, next: Option<usize>, at: i64) {
    begin_cycle(s, next, at);
    if s.warnings_ms.is_empty() {
        return;
    }
    let left = running_left(s, &Elapsed::stored(s));
    s.warned_ms = s
        .warnings_ms
        .iter()
        .copied()
        .filter(|&w| left.is_none_or(|l| w >= l))
        .collect();
}

/// Applies the expiry of the active clock as of `at`, the instant it ran
/// out (which the caller knows is due); returns whose clock ran out.
fn apply_timeout(s: &mut Session, at: i64, events: &mut Vec<Event>) -> Option<usize> {
    settle(s, at);
    s.version += 1;
    s.updated_at_ms = s.updated_at_ms.max(at);
    let exhausted = s.active;
    // Charged only if another cycle begins; an ending session keeps it as
    // its stopped current cycle (see `Command::Complete`).
    let cycle = s.cycle_used_ms;
    let action = (s.action_on_timeout.kind == TimeoutKind::AutoAction)
        .then(|| s.action_on_timeout.action.clone())
        .flatten();
    let mut meta = Map::new();
    meta.insert("action_on_timeout".into(), s.action_on_timeout.to_json());
    let kind = s.action_on_timeout.kind;
    match s.sync_mode {
        SyncMode::Global | SyncMode::CountUp => {
            end_expired(s, exhausted, at, Some(cycle), action, meta, events);
            return exhausted;
        }
        SyncMode::PerCycle => {
            push_raw(
                s,
                events,
                EventType::CycleTimeout,
                exhausted,
                at,
                Some(0),
                Some(cycle),
                action.clone(),
                meta.clone(),
            );
        }
        SyncMode::PerParticipant | SyncMode::PerGroup => {
            if let Some(i) = exhausted {
                s.participants[i].has_expired = true;
                if let Some(g) = group_of(s, i) {
                    s.groups[g].has_expired = true;
                    // The whole group left the rotation, so its members did too.
                    let gid = s.groups[g].id.clone();
                    for p in &mut s.participants {
                        if p.group_id.as_ref() == Some(&gid) {
                            p.has_expired = true;
                        }
                    }
                }
            }
            push_raw(
                s,
                events,
                EventType::ParticipantExpired,
                exhausted,
                at,
                Some(0),
                Some(cycle),
                action.clone(),
                meta.clone(),
            );
        }
    }
    if kind == TimeoutKind::EndSession {
        end_expired(s, exhausted, at, None, action, meta, events);
        return exhausted;
    }
    match next_eligible(s) {
        None => end_expired(s, exhausted, at, None, action, meta, events),
        Some(next) => {
            charge_cycle(s, None);
            begin_turn(s, Some(next), at);
            if !s.auto_advance {
                s.status = Status::Paused;
                s.segment_started_at_ms = None;
                let pid = s.active;
                push_event(s, events, EventType::SessionPaused, pid, at, Map::new());
            }
        }
    }
    exhausted
}

#[allow(clippy::too_many_arguments)] // One call site per event kind; a struct would only rename them.
fn end_expired(
    s: &mut Session,
    who: Option<usize>,
    at: i64,
    cycle: Option<i64>,
    action: Option<String>,
    meta: Map<String, Value>,
    events: &mut Vec<Event>,
) {
    s.status = Status::Expired;
    s.segment_started_at_ms = None;
    s.session_completed_at_ms = Some(at);
    let remaining = if matches!(s.sync_mode, SyncMode::Global | SyncMode::CountUp) {
        Some(0)
    } else {
        None
    };
    push_raw(
        s,
        events,
        EventType::SessionExpired,
        who,
        at,
        remaining,
        cycle,
        action,
        meta,
    );
}

// --- Folding time into the stored state. ---

/// Folds the running segment up to `at` into the cycle and the session's running time.
pub(crate) fn settle(s: &mut Session, at: i64) {
    if let Some(seg) = s.segment_started_at_ms {
        let d = at.saturating_sub(seg).max(0);
        s.cycle_used_ms = s.cycle_used_ms.saturating_add(d);
        s.elapsed_ms = s.elapsed_ms.saturating_add(d);
        s.segment_started_at_ms = Some(seg.max(at));
    }
}

/// What charging a cycle did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Charged {
    /// The cycle's length (wall time of the turn, pauses excluded).
    pub(crate) cycle: i64,
    /// Lag compensation the move got (0 without a move or compensation).
    pub(crate) lag_compensated: i64,
}

/// Raises a bank by `add`, never above the cap, and never lowers it.
pub(crate) fn raise_bank(bank: i64, add: i64, cap: Option<i64>) -> i64 {
    let raised = bank.saturating_add(add.max(0));
    cap.map_or(raised, |c| raised.min(c).max(bank))
}

/// Charges the settled cycle to whoever played it. With `mv` (a move, and
/// the lag the client measured), the move's rules apply (contract section
/// 8): the delay is not charged, lag compensation is taken off, the
/// stage's increment is added, and the move that completes a stage enters
/// the next one and adds its `add_ms`. Without, the cycle is charged as the
/// clock showed it (a timeout).
pub(crate) fn charge_cycle(s: &mut Session, mv: Option<Option<u32>>) -> Charged {
    let cycle = s.cycle_used_ms;
    let (charge, comp) = match mv {
        Some(lag) => {
            let comp = lag_comp(s, lag);
            (move_charge(s, cycle).saturating_sub(comp).max(0), comp)
        }
        None => (Elapsed::stored(s).charge, 0),
    };
    s.cycle_used_ms = 0;
    if let Some(i) = s.active {
        let p = &mut s.participants[i];
        p.time_used_ms = p.time_used_ms.saturating_add(charge);
        if mv.is_some() && s.lag_compensation {
            p.lag_quota_ms = p
                .lag_quota_ms
                .saturating_add(p.lag_gain_ms)
                .saturating_sub(comp)
                .min(p.lag_gain_ms.saturating_mul(LAG_QUOTA_CAP_GAINS))
                .max(0);
        }
    }
    let group = if s.sync_mode == SyncMode::PerGroup {
        s.active_group
    } else {
        None
    };
    if let Some(g) = group {
        let g = &mut s.groups[g];
        g.time_used_ms = g.time_used_ms.saturating_add(charge);
    }
    if mv.is_some() {
        move_stages(s, group);
    }
    Charged {
        cycle,
        lag_compensated: comp,
    }
}

/// A move's increment and stage change on the bank that ran (the active
/// participant's, or group `group`'s in `per_group`).
fn move_stages(s: &mut Session, group: Option<usize>) {
    let cap = s.max_time_ms;
    let index = match (s.sync_mode, group, s.active) {
        (SyncMode::PerGroup, Some(g), _) => s.groups[g].stage_index,
        (SyncMode::PerParticipant, _, Some(i)) => s.participants[i].stage_index,
        _ => return,
    };
    let rules = stage_rules(s, index);
    let next_add = s.stages.get(index as usize + 1).map(|st| st.add_ms);
    let (bank, index, moves) = match (s.sync_mode, group, s.active) {
        (SyncMode::PerGroup, Some(g), _) => {
            let g = &mut s.groups[g];
            (&mut g.total_time_ms, &mut g.stage_index, &mut g.stage_moves)
        }
        (_, _, Some(i)) => {
            let p = &mut s.participants[i];
            (&mut p.total_time_ms, &mut p.stage_index, &mut p.stage_moves)
        }
        _ => return,
    };
    // The move earns its stage's increment first ...
    *bank = raise_bank(*bank, rules.increment, cap);
    // ... then, if it completes the stage, the clock enters the next one.
    // The last stage lasts to the end: its moves are not counted (so a
    // session of the previous release, which counted none, is the same).
    if let Some(length) = rules.moves {
        *moves = moves.saturating_add(1);
        if *moves >= length
            && let Some(add_ms) = next_add
        {
            *bank = raise_bank(*bank, add_ms, cap);
            *index = index.saturating_add(1);
            *moves = 0;
        }
    }
}

// --- Events, which carry the clock's numbers at their instant. ---

/// Records an event about `who` at `at`, with the time left on their clock then.
pub(crate) fn push_event(
    s: &Session,
    events: &mut Vec<Event>,
    ty: EventType,
    who: Option<usize>,
    at: i64,
    meta: Map<String, Value>,
) {
    let remaining = event_remaining(s, who, at);
    push_raw(s, events, ty, who, at, remaining, None, None, meta);
}

/// Records an event with every clock value given.
#[allow(clippy::too_many_arguments)] // The event's fields, named at each call.
pub(crate) fn push_raw(
    s: &Session,
    events: &mut Vec<Event>,
    ty: EventType,
    who: Option<usize>,
    at: i64,
    remaining: Option<i64>,
    elapsed: Option<i64>,
    action: Option<String>,
    metadata: Map<String, Value>,
) {
    let seq = events.iter().filter(|e| e.version == s.version).count();
    let participant = who.and_then(|i| s.participants.get(i));
    let group_id: Option<GroupId> = who
        .and_then(|i| group_of(s, i))
        .map(|g| s.groups[g].id.clone())
        .or_else(|| participant.and_then(|p| p.group_id.clone()));
    events.push(Event {
        event_id: Event::make_id(s.id, s.created_at_ms, s.version, seq, at),
        session_id: s.id,
        version: s.version,
        event_type: ty,
        participant_id: participant.map(|p| p.id.clone()),
        group_id,
        at_ms: at,
        time_remaining_ms: remaining,
        time_elapsed_ms: elapsed,
        action,
        metadata,
    });
}
