//! Turn order: who may play and who plays next, for every sync mode.
//!
//! Shared by the commands (`machine`) and the timeouts (`clock`): a switch
//! and a skipped cycle hand the clock on by the same rules. Knows nothing
//! of time beyond stamping when a cycle begins.

use crate::session::{Session, Status, SyncMode};

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
        let g = s.groups.iter().position(|g| !g.has_expired)?;
        return next_member(s, g);
    }
    (0..s.participants.len()).find(|&i| eligible(s, i))
}

/// The next participant in rotation after the active one, wrapping around
/// (the active one itself comes last), skipping whoever has expired.
pub(crate) fn next_eligible(s: &Session) -> Option<usize> {
    if s.sync_mode == SyncMode::PerGroup {
        let n = s.groups.len();
        let start = s.active_group.map_or(0, |g| g + 1);
        return (0..n)
            .map(|k| (start + k) % n)
            .find(|&g| !s.groups[g].has_expired)
            .and_then(|g| next_member(s, g));
    }
    let n = s.participants.len();
    let start = s.active.map_or(0, |i| i + 1);
    (0..n).map(|k| (start + k) % n).find(|&i| eligible(s, i))
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
