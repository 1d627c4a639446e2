//! Turn order: who may play and who plays next, for every sync mode.
//!
//! Shared by the commands (`machine`) and the timeouts (`clock`): a switch
//! and a skipped cycle hand the clock on by the same rules. Also where a
//! participant joining a live session goes and what its leaving shifts
//! (contract section 9), so that positions held elsewhere (the active
//! participant, a group's last member) follow their participant. Knows
//! nothing of time beyond stamping when a cycle begins.

use crate::session::{Participant, Session, Status, SyncMode};

/// Index of the group participant `participant` plays in (`per_group` only).
pub(crate) fn group_of(s: &Session, participant: usize) -> Option<usize> {
    if s.sync_mode != SyncMode::PerGroup {
        return None;
    }
    let gid = s.participants.get(participant)?.group_id.as_ref()?;
    s.group_position(gid)
}

/// Whether participant `i` is still in the rotation (nor it nor its group expired).
pub(crate) fn eligible(s: &Session, i: usize) -> bool {
    !s.participants[i].has_expired && group_of(s, i).is_none_or(|g| !s.groups[g].has_expired)
}

/// The first participant in rotation order who may play.
pub(crate) fn first_eligible(s: &Session) -> Option<usize> {
    if s.sync_mode == SyncMode::PerGroup {
        return member_of_group_from(s, 0);
    }
    eligible_from(s, 0)
}

/// The next participant in rotation after the active one, wrapping around
/// (the active one itself comes last), skipping whoever has expired.
pub(crate) fn next_eligible(s: &Session) -> Option<usize> {
    if s.sync_mode == SyncMode::PerGroup {
        return member_of_group_from(s, s.active_group.map_or(0, |g| g + 1));
    }
    eligible_from(s, s.active.map_or(0, |i| i + 1))
}

/// The first eligible participant at or after position `start`, wrapping
/// around.
pub(crate) fn eligible_from(s: &Session, start: usize) -> Option<usize> {
    let n = s.participants.len();
    (0..n).map(|k| (start + k) % n).find(|&i| eligible(s, i))
}

/// The next member of the first group at or after group `start`, wrapping
/// around, that has not expired and has members (a group whose members all
/// left is passed over, like an expired one).
fn member_of_group_from(s: &Session, start: usize) -> Option<usize> {
    let n = s.groups.len();
    (0..n)
        .map(|k| (start + k) % n)
        .filter(|&g| !s.groups[g].has_expired)
        .find_map(|g| next_member(s, g))
}

/// The member of group `g` after the one who played last, round-robin.
fn next_member(s: &Session, g: usize) -> Option<usize> {
    let gid = &s.groups[g].id;
    let members: Vec<usize> = (0..s.participants.len())
        .filter(|&i| s.participants[i].group_id.as_ref() == Some(gid))
        .collect();
    let after = s.groups[g]
        .last_member
        .and_then(|last| members.iter().position(|&m| m == last))
        .map_or(0, |pos| pos + 1);
    members.get(after % members.len().max(1)).copied()
}

/// Makes `next` active and starts its cycle at `at`.
pub(crate) fn begin_cycle(s: &mut Session, next: Option<usize>, at: i64) {
    s.active = next;
    s.cycle_used_ms = 0;
    s.cycle_started_at_ms = Some(at);
    if s.status == Status::Running {
        s.segment_started_at_ms = Some(at);
    }
    if let Some(i) = next {
        s.participants[i].cycle_count = s.participants[i].cycle_count.saturating_add(1);
        s.active_group = group_of(s, i);
        if let Some(g) = s.active_group {
            s.groups[g].last_member = Some(i);
        }
    }
}

// --- Joining and leaving (contract section 9). ---

/// Puts `p` into the rotation at its `index`: the participants at or after
/// that index move up by one, so the list stays sorted by unique indexes.
/// Positions held elsewhere (the active participant, each group's last
/// member) follow their participant. Returns `p`'s position. The caller
/// has checked that no index overflows ([`shift_room`]).
pub(crate) fn insert_participant(s: &mut Session, p: Participant) -> usize {
    let at = s.participants.partition_point(|q| q.index < p.index);
    for q in &mut s.participants[at..] {
        q.index = q.index.saturating_add(1);
    }
    s.participants.insert(at, p);
    let follow = |pos: &mut Option<usize>| {
        if let Some(i) = pos.as_mut()
            && *i >= at
        {
            *i += 1;
        }
    };
    follow(&mut s.active);
    for g in &mut s.groups {
        follow(&mut g.last_member);
    }
    at
}

/// Whether inserting at `index` leaves every index within `u32`: the last
/// participant moves up by one if it is at or after `index`.
pub(crate) fn shift_room(s: &Session, index: u32) -> bool {
    s.participants
        .last()
        .is_none_or(|last| last.index < index || last.index < u32::MAX)
}

/// Takes the participant at position `at` out of the rotation: the ones
/// after it move down by one index. The active participant is `None` if it
/// was the one removed; a group whose last member left remembers the member
/// before it, so the group's round-robin goes on with the one after it.
pub(crate) fn remove_participant(s: &mut Session, at: usize) -> Participant {
    let gid = s.participants[at].group_id.clone();
    let before = (0..at)
        .rev()
        .find(|&i| gid.is_some() && s.participants[i].group_id == gid);
    let gone = s.participants.remove(at);
    for q in &mut s.participants[at..] {
        q.index = q.index.saturating_sub(1);
    }
    let follow = |pos: Option<usize>, replacement: Option<usize>| match pos {
        Some(i) if i == at => replacement,
        Some(i) if i > at => Some(i - 1),
        other => other,
    };
    s.active = follow(s.active, None);
    for g in &mut s.groups {
        g.last_member = follow(g.last_member, before);
    }
    gone
}
