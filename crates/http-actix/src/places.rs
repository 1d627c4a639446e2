//! The per-user WebSocket cap (`WS_MAX_CONNECTIONS_PER_USER`): counted on
//! this instance, and across every instance when a shared
//! [`PlaceRegistry`] is configured (Redis), so that a round-robin balancer
//! does not multiply the cap by the number of instances.
//!
//! Each socket with a token subject holds one place. The instance checks
//! its own count first (no Redis call for a user already at the cap here),
//! then takes the place in the registry with a lease of [`LEASE_MS`], which
//! [`renew_places`] extends every [`RENEW_EVERY`] for every place the
//! instance still holds. A place is given back when its socket closes; if
//! that release is lost (Redis down, instance killed), the lease runs out
//! within [`LEASE_MS`] and the place comes back by itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kairos_domain::{PlaceRegistry, StoreError};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::error::{ApiError, Code};

/// How long a place in the shared registry lasts without renewal.
pub const LEASE_MS: i64 = 30_000;
/// How often this instance renews the places it holds (a third of the
/// lease: two renewals may fail before a held place could lapse).
pub const RENEW_EVERY: Duration = Duration::from_secs(10);

/// A place being taken: given back when dropped while still held here.
struct Pending<'a> {
    places: &'a UserPlaces,
    place: Option<Place>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(place) = self.place.take() {
            self.places.give_back(place);
        }
    }
}

/// The places of this instance's sockets, per token subject.
pub struct UserPlaces {
    /// This instance's sockets, per subject, by the number of their holder
    /// id (`<instance>:<number>`; 8 bytes a socket instead of a string).
    held: Mutex<HashMap<Box<str>, Vec<u64>>>,
    shared: Option<Arc<dyn PlaceRegistry>>,
    /// Makes holder ids unique across instances.
    instance: String,
    next: AtomicU64,
    /// Where releases in the shared registry run, so that shutdown waits for them.
    tasks: TaskTracker,
}

impl std::fmt::Debug for UserPlaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserPlaces")
            .field("shared", &self.shared.is_some())
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// One socket's place, given back with [`UserPlaces::give_back`].
#[derive(Debug)]
pub struct Place {
    sub: Box<str>,
    /// The number of its holder id ([`UserPlaces::holder_id`]).
    holder: u64,
}

impl UserPlaces {
    /// Places counted on this instance only (no shared store).
    pub fn local() -> Self {
        Self::new(None, TaskTracker::new())
    }

    /// Places counted across every instance sharing `registry`; releases
    /// are spawned on `tasks`.
    pub fn shared(registry: Arc<dyn PlaceRegistry>, tasks: TaskTracker) -> Self {
        Self::new(Some(registry), tasks)
    }

    fn new(shared: Option<Arc<dyn PlaceRegistry>>, tasks: TaskTracker) -> Self {
        Self {
            held: Mutex::new(HashMap::new()),
            shared,
            instance: uuid::Uuid::new_v4().simple().to_string(),
            next: AtomicU64::new(0),
            tasks,
        }
    }

    /// Whether places are counted across instances.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Vec<u64>>> {
        // A poisoned lock only means a panic while editing a Vec of ids.
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a place for `sub`, at most `max` per subject: 403 `FORBIDDEN`
    /// past it, 503 `UNAVAILABLE` when the shared registry cannot be reached.
    pub async fn take(&self, sub: &str, max: usize, now_ms: i64) -> Result<Place, ApiError> {
        let refused = || {
            ApiError::new(
                Code::Forbidden,
                format!("at most {max} WebSockets per user"),
            )
        };
        let holder = self.next.fetch_add(1, Ordering::Relaxed);
        {
            let mut held = self.lock();
            let mine = held.entry(sub.into()).or_default();
            if mine.len() >= max {
                return Err(refused());
            }
            mine.push(holder);
        }
        // From here the place is given back unless kept, also when the
        // handshake is dropped while the registry is asked (the client went
        // away): no count may outlive its socket.
        let mut pending = Pending {
            places: self,
            place: Some(Place {
                sub: sub.into(),
                holder,
            }),
        };
        if let (Some(shared), Some(place)) = (&self.shared, &pending.place) {
            let max = u32::try_from(max).unwrap_or(u32::MAX);
            match shared
                .acquire(
                    &place.sub,
                    &self.holder_id(place.holder),
                    max,
                    now_ms,
                    LEASE_MS,
                )
                .await
            {
                Ok(true) => {}
                Ok(false) => return Err(refused()),
                Err(StoreError::Unavailable(m)) => {
                    return Err(ApiError::new(
                        Code::Unavailable,
                        format!("cannot count this connection: {m}"),
                    ));
                }
                Err(other) => return Err(ApiError::new(Code::InternalError, other.to_string())),
            }
        }
        pending
            .place
            .take()
            .ok_or_else(|| ApiError::new(Code::InternalError, "place lost"))
    }

    /// The holder id of the place numbered `n`, unique across instances.
    fn holder_id(&self, n: u64) -> String {
        format!("{}:{n}", self.instance)
    }

    /// Drops `place` from this instance's count.
    fn forget(&self, place: &Place) {
        let mut held = self.lock();
        if let Some(mine) = held.get_mut(&place.sub) {
            mine.retain(|h| *h != place.holder);
            if mine.is_empty() {
                held.remove(&place.sub);
            }
        }
    }

    /// Gives `place` back: at once on this instance, and in the shared
    /// registry by a task of its own (a socket's close never waits for
    /// Redis; a lost release lapses with its lease).
    pub fn give_back(&self, place: Place) {
        self.forget(&place);
        if let Some(shared) = &self.shared
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let shared = Arc::clone(shared);
            let holder = self.holder_id(place.holder);
            runtime.spawn(self.tasks.track_future(async move {
                if let Err(e) = shared.release(&place.sub, &holder).await {
                    tracing::debug!(error = %e, "place not released; it lapses with its lease");
                }
            }));
        }
    }

    /// Every place this instance holds, as `(subject, holder)`.
    pub fn held(&self) -> Vec<(String, String)> {
        self.lock()
            .iter()
            .flat_map(|(sub, holders)| {
                holders
                    .iter()
                    .map(|&h| (sub.to_string(), self.holder_id(h)))
            })
            .collect()
    }

    /// Extends the leases of every place this instance holds.
    pub async fn renew(&self, now_ms: i64) -> Result<(), StoreError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let held = self.held();
        if held.is_empty() {
            return Ok(());
        }
        shared.renew(&held, now_ms, LEASE_MS).await
    }
}

/// Renews `places` every [`RENEW_EVERY`], at the time `now_ms` tells,
/// until `stop` turns true (or its sender is dropped). Does nothing without
/// a shared registry.
pub async fn renew_places(
    places: &UserPlaces,
    now_ms: impl Fn() -> i64,
    mut stop: watch::Receiver<bool>,
) {
    if !places.is_shared() {
        return;
    }
    let mut ticker = tokio::time::interval(RENEW_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if let Err(e) = places.renew(now_ms()).await {
                    tracing::warn!(error = %e, "cannot renew the per-user WebSocket places; retrying next round");
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

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;

    /// A registry that answers what it is told and records what it is asked.
    struct Scripted {
        answer: Mutex<Result<bool, StoreError>>,
        /// Never answers an acquire (a registry that hangs).
        hang: std::sync::atomic::AtomicBool,
        renewed: Mutex<Vec<(String, String)>>,
        released: Mutex<Vec<(String, String)>>,
    }

    impl Scripted {
        fn answering(answer: Result<bool, StoreError>) -> Arc<Self> {
            Arc::new(Self {
                answer: Mutex::new(answer),
                hang: std::sync::atomic::AtomicBool::new(false),
                renewed: Mutex::default(),
                released: Mutex::default(),
            })
        }
    }

    #[async_trait]
    impl PlaceRegistry for Scripted {
        async fn acquire(
            &self,
            _: &str,
            _: &str,
            _: u32,
            _: i64,
            _: i64,
        ) -> Result<bool, StoreError> {
            if self.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            self.answer.lock().unwrap().clone()
        }
        async fn release(&self, key: &str, holder: &str) -> Result<(), StoreError> {
            self.released
                .lock()
                .unwrap()
                .push((key.to_owned(), holder.to_owned()));
            Ok(())
        }
        async fn renew(
            &self,
            places: &[(String, String)],
            _: i64,
            lease_ms: i64,
        ) -> Result<(), StoreError> {
            assert_eq!(lease_ms, LEASE_MS);
            self.renewed.lock().unwrap().extend_from_slice(places);
            Ok(())
        }
    }

    #[tokio::test]
    async fn locally_at_most_max_per_subject_and_a_place_comes_back() {
        let places = UserPlaces::local();
        let a = places.take("bob", 2, 0).await.unwrap();
        let _b = places.take("bob", 2, 0).await.unwrap();
        let refused = places.take("bob", 2, 0).await.unwrap_err();
        assert_eq!(refused.code, Code::Forbidden);
        assert_eq!(refused.message, "at most 2 WebSockets per user");
        assert!(places.take("carol", 2, 0).await.is_ok());
        places.give_back(a);
        assert!(places.take("bob", 2, 0).await.is_ok());
        assert_eq!(places.held().len(), 3);
    }

    #[tokio::test]
    async fn a_shared_refusal_or_outage_leaves_no_local_place_behind() {
        let full = Scripted::answering(Ok(false));
        let places = UserPlaces::shared(full.clone(), TaskTracker::new());
        assert_eq!(
            places.take("bob", 5, 0).await.unwrap_err().code,
            Code::Forbidden
        );
        assert!(places.held().is_empty());

        *full.answer.lock().unwrap() = Err(StoreError::Unavailable("down".into()));
        let e = places.take("bob", 5, 0).await.unwrap_err();
        assert_eq!(e.code, Code::Unavailable);
        assert!(e.message.contains("down"), "{}", e.message);
        assert!(places.held().is_empty());

        *full.answer.lock().unwrap() = Ok(true);
        let place = places.take("bob", 5, 0).await.unwrap();
        let holder = places.holder_id(place.holder);
        places.renew(1_000).await.unwrap();
        assert_eq!(
            *full.renewed.lock().unwrap(),
            [("bob".to_owned(), holder.clone())]
        );
        places.give_back(place);
        assert!(places.held().is_empty());
        // Releases in the registry are tasks of their own: the refused and
        // the failed attempt gave back what they might have taken, then
        // the socket's place.
        for _ in 0..100 {
            if full.released.lock().unwrap().len() == 3 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let released = full.released.lock().unwrap().clone();
        assert_eq!(released.len(), 3, "{released:?}");
        assert!(
            released.contains(&("bob".to_owned(), holder)),
            "{released:?}"
        );
    }

    #[tokio::test]
    async fn a_take_dropped_while_the_registry_answers_leaves_no_place_behind() {
        let hanging = Scripted::answering(Ok(true));
        hanging.hang.store(true, Ordering::SeqCst);
        let places = UserPlaces::shared(hanging.clone(), TaskTracker::new());
        let take = places.take("bob", 1, 0);
        // The handshake is dropped while the registry has not answered.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(10), take)
                .await
                .is_err()
        );
        assert!(places.held().is_empty());
        hanging.hang.store(false, Ordering::SeqCst);
        assert!(
            places.take("bob", 1, 0).await.is_ok(),
            "the place came back"
        );
    }
}
