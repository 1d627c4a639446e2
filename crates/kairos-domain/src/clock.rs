//! The time model, in one place: what every clock shows at an instant, when
//! the running one runs out, and what running out does.
//!
//! A running clock is stored as the instant its segment started plus what was
//! used before it (contract section 1), so every number is a function of
//! (stored state, instant). The transition function (`machine`) and the read
//! model (`view`) both compute through this module: the time used and left
//! per participant, group and session in every sync mode, the next deadline,
//! and the one catch-up loop that applies due deadlines, each as of its own
//! instant.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::event::{Event, EventType};
use crate::ids::GroupId;
use crate::rotation::{begin_cycle, group_of, next_eligible};
use crate::session::{Session, Status, SyncMode, TimeoutKind};

/// Guard against unbounded catch-up: a `per_cycle` session with
/// `skip_cycle` and `auto_advance` produces one deadline per cycle forever.
/// The scheduler commits each as it comes; this bound only matters after a
/// very long outage, and then the rest is applied by the next call.
pub const MAX_CATCH_UP: usize = 10_000;

/// The running cycle's time and the session's running time (pauses
/// excluded) at some instant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Elapsed {
    /// Time used in the current cycle.
    pub(crate) cycle: i64,
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
        Self {
            cycle: s.cycle_used_ms.saturating_add(seg),
            session: s.elapsed_ms.saturating_add(seg),
        }
    }

    /// As stored, the running segment not counted (what it is at the
    /// segment's start).
    fn stored(s: &Session) -> Self {
        Self {
            cycle: s.cycle_used_ms,
            session: s.elapsed_ms,
        }
    }
}

// --- Time used and left: unclamped, `None` where a clock has no bound. ---

fn bank_left(bank: i64, used: i64, running: i64) -> i64 {
    bank.saturating_sub(used).saturating_sub(running)
}

/// The running cycle's time if `i` is the active participant, else nothing.
fn running_cycle_of(s: &Session, i: usize, e: &Elapsed) -> i64 {
    if s.active == Some(i) { e.cycle } else { 0 }
}

/// Left of a `per_cycle` cycle with `cycle` used.
fn cycle_left(s: &Session, cycle: i64) -> Option<i64> {
    s.time_per_cycle_ms.map(|t| t.saturating_sub(cycle))
}

/// Left of group `g`'s bank.
fn group_left(s: &Session, g: usize, e: &Elapsed) -> i64 {
    let grp = &s.groups[g];
    let cycle = if s.active_group == Some(g) {
        e.cycle
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
    let cycle = if s.active_group == Some(g) {
        e.cycle
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

/// The instant the running clock reaches zero (or the stopwatch its limit),
/// if the session is running on a bounded clock. The scheduler's input.
pub fn next_deadline(s: &Session) -> Option<i64> {
    if s.status != Status::Running {
        return None;
    }
    let seg = s.segment_started_at_ms?;
    let remaining = running_left(s, &Elapsed::stored(s))?;
    // A deadline past i64::MAX never comes; saturating it would expire a
    // clock at i64::MAX with time left on it.
    seg.checked_add(remaining.max(0))
}

/// The state as of `now` with every due deadline applied, without events:
/// what a read at `now` shows (versions included).
pub fn settle_deadlines(state: &Session, now: i64) -> Cow<'_, Session> {
    match next_deadline(state) {
        Some(d) if d <= now => {
            let mut s = state.clone();
            let mut sink = Vec::new();
            catch_up(&mut s, now, &mut sink, |_, sink, _| sink.clear());
            Cow::Owned(s)
        }
        _ => Cow::Borrowed(state),
    }
}

/// One deadline [`catch_up`] applied.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fired {
    /// The deadline, the instant it took effect at.
    pub(crate) at: i64,
    /// Index of the participant whose clock ran out, if one was active.
    pub(crate) exhausted: Option<usize>,
}

/// Applies every deadline due by `now`, in order, each as of its own
/// deadline and as its own version, at most [`MAX_CATCH_UP`] of them; their
/// events go to `events`. After each, `each` sees the state, the events and
/// what was applied.
pub(crate) fn catch_up(
    s: &mut Session,
    now: i64,
    events: &mut Vec<Event>,
    mut each: impl FnMut(&Session, &mut Vec<Event>, Fired),
) {
    let mut applied = 0;
    while let Some(deadline) = next_deadline(s) {
        if deadline > now || applied >= MAX_CATCH_UP {
            break;
        }
        let exhausted = apply_timeout(s, deadline, events);
        applied += 1;
        each(
            s,
            events,
            Fired {
                at: deadline,
                exhausted,
            },
        );
    }
}

/// Applies the deadline `at` (which the caller knows is due); returns whose
/// clock ran out.
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
            charge_cycle(s, false);
            begin_cycle(s, Some(next), at);
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

/// Charges the settled cycle to whoever played it; with `increment`, adds the
/// increment to the bank that ran (per_participant, per_group). Returns the cycle's length.
pub(crate) fn charge_cycle(s: &mut Session, increment: bool) -> i64 {
    let cycle = std::mem::take(&mut s.cycle_used_ms);
    let cap = s.max_time_ms;
    let inc = if increment { s.increment_ms } else { 0 };
    let add_bank = |bank: i64| -> i64 {
        let raised = bank.saturating_add(inc);
        // Never above the cap, and an increment never lowers a bank.
        cap.map_or(raised, |c| raised.min(c).max(bank))
    };
    if let Some(i) = s.active {
        let p = &mut s.participants[i];
        p.time_used_ms = p.time_used_ms.saturating_add(cycle);
        if s.sync_mode == SyncMode::PerParticipant {
            p.total_time_ms = add_bank(p.total_time_ms);
        }
    }
    if s.sync_mode == SyncMode::PerGroup
        && let Some(g) = s.active_group
    {
        let g = &mut s.groups[g];
        g.time_used_ms = g.time_used_ms.saturating_add(cycle);
        g.total_time_ms = add_bank(g.total_time_ms);
    }
    cycle
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
        event_id: Event::make_id(s.id, s.created_at_ms, s.version, seq),
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
