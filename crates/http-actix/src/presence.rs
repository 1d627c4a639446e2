//! This instance's WebSockets in the presence registry (contract section
//! 9): each socket that connected to a session it may read holds a
//! [`Seat`], registered through the service (which announces
//! `presence_joined`), removed when the socket ends (its user's
//! `presence_left` follows after the leave delay, from the worker), and
//! renewed every [`RENEW_EVERY`] with every other seat of the instance, so
//! that the entries of a killed instance lapse within the lease (30 s).
//!
//! A socket is not sent presence events about its own user (the hub tags
//! each with its `sub`): a user is not told of its own arrival.
//!
//! This instance's own counts (connections, and distinct users per
//! session) are reported as gauges ([`LocalPresence::report_to`]).
//!
//! Presence is counted, never enforced: a registry that cannot be reached
//! costs the socket its seat (it is not counted, and so can never pause a
//! session by its absence), not its connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use kairos_domain::presence::ANONYMOUS;
use kairos_domain::{ParticipantId, SessionId, SessionView};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use kairos_domain::DynSessionService as Service;
use prometheus::IntGauge;

/// How often this instance renews its connections' entries: a third of
/// the lease, so two renewals may fail before a live entry could lapse.
pub const RENEW_EVERY: Duration = Duration::from_secs(10);

/// Who a socket is, as presence counts it; and its entry once registered.
/// Kept compact (one of these lives in every socket): the anonymous user
/// costs no string, and the entry is the instance-local number of the
/// connection id (the id is that number after the instance's prefix).
#[derive(Debug)]
pub struct Seat {
    /// The user; `None` for [`ANONYMOUS`].
    sub: Option<Box<str>>,
    participant: Option<Box<str>>,
    joined: Option<(SessionId, u64)>,
}

impl Seat {
    /// The user.
    pub fn sub(&self) -> &str {
        self.sub.as_deref().unwrap_or(ANONYMOUS)
    }

    /// The user `sub` (or [`ANONYMOUS`]), playing as `participant` if that
    /// names one of the session (checked at [`LocalPresence::join`]).
    pub fn new(sub: Option<String>, participant: Option<String>) -> Self {
        Self {
            sub: sub
                .filter(|s| !s.is_empty() && s != ANONYMOUS)
                .map(String::into_boxed_str),
            participant: participant.map(String::into_boxed_str),
            joined: None,
        }
    }
}

/// What this instance holds: its connections by the number in their
/// connection id (`<instance>:<number>`; a number and a session id an entry
/// instead of a string per connection), the number of them per (session,
/// user), and the gauges that report both counts
/// (`kairos_presence_connections`, `kairos_presence_users`).
#[derive(Default)]
struct Held {
    connections: HashMap<u64, SessionId>,
    users: HashMap<(SessionId, Box<str>), usize>,
    gauges: Option<(IntGauge, IntGauge)>,
}

impl Held {
    fn insert(&mut self, n: u64, session_id: SessionId, sub: &str) {
        if self.connections.insert(n, session_id).is_none() {
            *self.users.entry((session_id, sub.into())).or_default() += 1;
        }
        self.report();
    }

    fn remove(&mut self, n: u64, sub: &str) {
        if let Some(session_id) = self.connections.remove(&n) {
            let user = (session_id, Box::<str>::from(sub));
            if let Some(count) = self.users.get_mut(&user) {
                *count -= 1;
                if *count == 0 {
                    self.users.remove(&user);
                }
            }
        }
        self.report();
    }
    fn report(&self) {
        if let Some((connections, users)) = &self.gauges {
            connections.set(i64::try_from(self.connections.len()).unwrap_or(i64::MAX));
            users.set(i64::try_from(self.users.len()).unwrap_or(i64::MAX));
        }
    }
}

/// The registered connections of this instance, by connection id.
pub struct LocalPresence {
    held: Mutex<Held>,
    /// Makes connection ids unique across instances.
    instance: String,
    next: AtomicU64,
    /// Where leaves run, so that shutdown waits for them.
    tasks: TaskTracker,
}

impl std::fmt::Debug for LocalPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPresence")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl LocalPresence {
    /// No connection yet; leaves are spawned on `tasks`.
    pub fn new(tasks: TaskTracker) -> Self {
        Self {
            held: Mutex::new(Held::default()),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            next: AtomicU64::new(0),
            tasks,
        }
    }

    /// A poisoned lock only means a panic while editing a map of ids.
    fn lock(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection id of the entry numbered `n`, unique across instances.
    fn connection_id(&self, n: u64) -> String {
        format!("{}:{n}", self.instance)
    }

    /// Reports this instance's registered connections in `connections` and
    /// its distinct (session, user) pairs in `users`, from now on (set at
    /// once to the current counts).
    pub fn report_to(&self, connections: IntGauge, users: IntGauge) {
        let mut held = self.lock();
        held.gauges = Some((connections, users));
        held.report();
    }

    /// Registers `seat` on `session_id` (whose view the socket was just
    /// sent). Does nothing when presence is off; on a registry error the
    /// seat stays unregistered (logged).
    pub async fn join(
        &self,
        service: &Service,
        seat: &mut Seat,
        session_id: SessionId,
        view: &SessionView,
    ) {
        if !service.has_presence() || seat.joined.is_some() {
            return;
        }
        let participant: Option<ParticipantId> = seat
            .participant
            .as_deref()
            .and_then(|p| ParticipantId::parse(p).ok())
            .filter(|p| view.participants.iter().any(|v| &v.participant_id == p));
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = self.connection_id(n);
        // Held before the call, so that a renewal meanwhile covers it.
        self.lock().insert(n, session_id, seat.sub());
        match service
            .presence_join(session_id, &id, seat.sub(), participant)
            .await
        {
            Ok(_) => seat.joined = Some((session_id, n)),
            Err(e) => {
                self.lock().remove(n, seat.sub());
                tracing::warn!(%session_id, error = %e, "connection not counted in presence");
            }
        }
    }

    /// Removes `seat`'s entry, by a task of its own (a socket's end never
    /// waits for Redis; a lost leave lapses with its lease and is swept).
    pub fn leave(&self, service: &Service, seat: Seat) {
        let Some((session_id, n)) = seat.joined else {
            return;
        };
        self.lock().remove(n, seat.sub());
        let id = self.connection_id(n);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let service = service.clone();
            runtime.spawn(self.tasks.track_future(async move {
                if let Err(e) = service.presence_leave(session_id, &id).await {
                    tracing::debug!(%session_id, error = %e, "presence leave lost; it lapses with its lease");
                }
            }));
        }
    }

    /// Every registered connection of this instance.
    pub fn held(&self) -> Vec<(SessionId, String)> {
        self.lock()
            .connections
            .iter()
            .map(|(&n, session)| (*session, self.connection_id(n)))
            .collect()
    }
}

/// Renews `presence`'s entries every [`RENEW_EVERY`] until `stop` turns
/// true (or its sender is dropped). Does nothing when presence is off.
pub async fn renew_presence(
    presence: &LocalPresence,
    service: &Service,
    mut stop: watch::Receiver<bool>,
) {
    if !service.has_presence() {
        return;
    }
    let mut ticker = tokio::time::interval(RENEW_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let held = presence.held();
                if let Err(e) = service.presence_renew(&held).await {
                    tracing::warn!(error = %e, "cannot renew the presence entries; retrying next round");
                }
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}
