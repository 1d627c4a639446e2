//! # kairos-domain
//!
//! The core of SyncKairos, a shared-clock service: the time model, the session
//! state machine, events, the ports the core needs, and the application
//! service over them. It is pure: no async runtime, no network, no database,
//! no wall clock. Time comes in through the [`Clock`] port and every decision
//! is a function of (state, command, now), so any Rust service can link this
//! crate for the clock math alone.
//!
//! # Layout
//!
//! Bottom to top: a module refers (by a `crate::` path, docs included) only to
//! modules in the items above its own, so the module graph has no cycle.
//!
//! - [`ids`]: session, participant and group ids, parsed once.
//! - [`session`]: the stored state of a session, for all five sync modes (data
//!   only; imports `ids`). [`event`]: audit events (imports `ids`).
//! - [`config`]: the session config and every validation rule of the contract.
//!   [`auth`]: the authorization matrix. Both read `session` types.
//!   [`webhook`]: webhook endpoints, the retry schedule and [`webhook::next_step`],
//!   the delivery body and log records (imports `ids`, `event`).
//! - `rotation` (private): turn order, who may play and who plays next, and
//!   where a participant joining or leaving goes (contract section 9).
//! - [`clock`]: the time model, the one place time is computed: time used and
//!   left per participant, group and session in every mode at an instant,
//!   [`clock::next_deadline`], and the one catch-up loop that applies due
//!   deadlines (expiries, time warnings, scheduled starts) each as of its own
//!   instant; the stages, delay and lag compensation of contract section 8.
//! - [`presence`]: who is connected to a session (contract section 9):
//!   registry entries and counts, presence events, and the auto-pause rule
//!   [`presence::auto_pause_due`] (reads `session`, builds `event`s).
//! - [`machine`]: the transition function [`machine::decide`] (deadlines via
//!   `clock`, then the command) and [`machine::create`].
//! - [`view`]: the read model at any instant, deadlines applied as of their
//!   deadline (via `clock`, never via `machine`).
//! - [`ratelimit`]: GCRA, the rate-limit math (pure).
//! - [`ports`]: [`SessionStore`], [`Outbox`], [`EventBus`], [`AuditSink`], [`Clock`],
//!   [`PlaceRegistry`], [`PresenceRegistry`], [`PresenceObserver`], [`RateLimiter`], [`WebhookStore`] (and [`DeliveryLog`],
//!   [`WithDeliveryLog`]).
//! - [`cache`]: [`cache::SessionCache`], the bounded, version-monotonic
//!   copy of recent sessions the service decides on before the store
//!   confirms (data only).
//! - [`timers`]: [`timers::TimerQueue`], the keyed deadline queue behind the
//!   server's local timers (pure data structure; imports nothing of ours).
//! - [`service`]: [`SessionService`]: load, decide, commit with compare-and-set,
//!   publish (or have the store publish in the same atomic step as the
//!   commit, when it can: [`SessionStore::publishes_commits`]).
//!
//! # Example
//!
//! ```
//! use kairos_domain::{machine, view, Command, SessionConfig, SessionId, Status};
//!
//! let config = SessionConfig::parse(&serde_json::json!({
//!     "sync_mode": "per_participant",
//!     "participants": [
//!         {"participant_id": "white", "total_time_ms": 60000},
//!         {"participant_id": "black", "total_time_ms": 60000}
//!     ]
//! })).expect("a valid config");
//! let id: SessionId = "123e4567-e89b-12d3-a456-426614174000".parse().unwrap();
//! let (session, _created) = machine::create(config, id, None, 0);
//! let started = machine::decide(&session, &Command::Start, None, 0).unwrap().state;
//!
//! // Nobody presses the clock: white's minute runs out at t = 60 s. A read at
//! // 61 s already shows the expiry, as of the deadline.
//! let v = view::view(&started, 61_000);
//! assert_eq!(v.status, Status::Expired);
//! assert_eq!(v.session_completed_at_ms, Some(60_000));
//! assert_eq!(v.participants[0].time_remaining_ms, 0);
//! assert_eq!(v.participants[0].time_used_ms, 60_000);
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod cache;
pub mod clock;
pub mod config;
pub mod event;
pub mod ids;
pub mod machine;
pub mod ports;
pub mod presence;
pub mod ratelimit;
mod rotation;
pub mod service;
pub mod session;
pub mod timers;
pub mod view;
pub mod webhook;

pub use auth::{Action, Actor, Role};
pub use config::{FieldError, Joiner, SessionConfig};
pub use event::{Event, EventType};
pub use ids::{GroupId, IdError, ParticipantId, SessionId};
pub use machine::{AddMs, AddTarget, Command, Decision, TransitionError};
pub use ports::{
    AuditError, AuditSink, BusError, BusMessage, Claimed, Clock, Commit, DeliveryLog,
    EncodedMessage, EventBus, Outbox, OutboxEntry, PlaceRegistry, PresenceObserver,
    PresenceRegistry, RateCheck, RateLimiter, SessionPage, SessionStore, StoreError, Subscription,
    WebhookStore, WithDeliveryLog,
};
pub use presence::{Absence, PendingLeave, PresenceConnection, PresenceSnapshot, PresenceUser};
pub use ratelimit::{Limit, RateDecision};
pub use service::{
    AbsenceCheck, AuditHealth, DeadlineObserver, DynSessionService, Executed, Health,
    PresenceDueObserver, ServiceError, SessionService, Snapshot,
};
pub use session::{
    DelayMode, Group, Participant, Session, Stage, Status, SyncMode, TimeoutAction, TimeoutKind,
};
pub use view::{GroupView, ParticipantView, SessionView};
pub use webhook::{
    AttemptOutcome, Delivery, DeliveryRecord, Endpoint, NextStep, RetrySchedule, WebhookId,
};

#[cfg(any(test, feature = "mocks"))]
pub use ports::{
    MockAuditSink, MockClock, MockDeliveryLog, MockEventBus, MockOutbox, MockPlaceRegistry,
    MockPresenceObserver, MockPresenceRegistry, MockRateLimiter, MockSessionStore,
    MockWebhookStore,
};
