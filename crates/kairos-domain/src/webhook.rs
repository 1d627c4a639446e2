//! Webhooks (contract section 9): endpoints, the retry schedule and the one
//! rule that decides what follows an attempt, the body every receiver gets,
//! and the records of the delivery log.
//!
//! Pure like the rest of the domain: "now" and the jitter come in as
//! arguments (the adapter draws the jitter), so the schedule is a function
//! that property tests can state. Signing (HMAC) and sending belong to the
//! sender; the domain only says what to send and when.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::{Event, EventType};
use crate::ids::IdError;

/// A webhook endpoint's id: a UUID, like [`crate::SessionId`].
///
/// ```
/// use kairos_domain::webhook::WebhookId;
/// let id: WebhookId = "123e4567-e89b-12d3-a456-426614174000".parse().unwrap();
/// assert_eq!(id.to_string(), "123e4567-e89b-12d3-a456-426614174000");
/// assert!("nope".parse::<WebhookId>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WebhookId(Uuid);

impl WebhookId {
    /// Wraps a UUID the caller already holds (a freshly generated v4).
    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The UUID inside.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl fmt::Display for WebhookId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl FromStr for WebhookId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self).map_err(|_| IdError::NotUuid)
    }
}

/// A registered receiver. Stored where every instance sees it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Its id.
    pub webhook_id: WebhookId,
    /// Where deliveries are POSTed (checked by the API before it gets here).
    pub url: String,
    /// The event types it wants; `None` for all of them.
    pub event_types: Option<Vec<EventType>>,
    /// Free text from its creator.
    pub description: Option<String>,
    /// `whsec_` + base64 of 32 random bytes ([`new_secret`]): the signing
    /// key. Never logged: `Debug` prints it redacted.
    pub secret: String,
    /// When it was created.
    pub created_at_ms: i64,
    /// Set when deliveries stopped for good (410, or the schedule ran out).
    pub disabled: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
}

impl Endpoint {
    /// Whether an event of type `t` goes to this endpoint: it lists the type
    /// (or lists none, meaning all), and it is not disabled.
    pub fn wants(&self, t: EventType) -> bool {
        !self.disabled
            && self
                .event_types
                .as_ref()
                .is_none_or(|types| types.contains(&t))
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret signs every delivery: it must never reach a log line.
        f.debug_struct("Endpoint")
            .field("webhook_id", &self.webhook_id)
            .field("url", &self.url)
            .field("event_types", &self.event_types)
            .field("description", &self.description)
            .field("secret", &"<redacted>")
            .field("created_at_ms", &self.created_at_ms)
            .field("disabled", &self.disabled)
            .field("disabled_reason", &self.disabled_reason)
            .finish()
    }
}

/// The secret of a new endpoint: `whsec_` + standard base64 of 32 random
/// bytes (the caller draws them; the domain has no randomness).
///
/// ```
/// let s = kairos_domain::webhook::new_secret([0u8; 32]);
/// assert_eq!(s, "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
/// ```
pub fn new_secret(bytes: [u8; 32]) -> String {
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// What every secret starts with (Standard Webhooks).
pub const SECRET_PREFIX: &str = "whsec_";

/// The longest wait the schedule, or a `Retry-After`, may impose: 24 h.
pub const MAX_RETRY_DELAY_MS: i64 = 24 * 3_600_000;

/// How far the jitter moves a retry: ±20% of the step.
pub const JITTER_FRACTION: f64 = 0.2;

/// The most steps a schedule may have.
pub const MAX_SCHEDULE_STEPS: usize = 32;

/// The waits between attempts: after the n-th failed attempt the next one
/// comes `steps[n - 1]` later (±20%); after the last step's retry fails too,
/// the endpoint is disabled. So a delivery is attempted at most
/// `steps.len() + 1` times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(Vec<i64>);

impl Default for RetrySchedule {
    /// Contract section 9: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 24 h.
    fn default() -> Self {
        const S: i64 = 1_000;
        const M: i64 = 60 * S;
        const H: i64 = 60 * M;
        Self(vec![5 * S, 5 * M, 30 * M, 2 * H, 5 * H, 10 * H, 24 * H])
    }
}

/// Why a retry schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// Nothing between the commas.
    #[error("the retry schedule is empty: give delays in ms separated by commas, e.g. 5000,300000")]
    Empty,
    /// Too many steps.
    #[error("the retry schedule has {0} steps; at most {MAX_SCHEDULE_STEPS} are allowed")]
    TooLong(usize),
    /// A step that is not a whole number of milliseconds in range.
    #[error(
        "retry schedule step {position} ({text:?}) must be a whole number of ms from 1 to {MAX_RETRY_DELAY_MS}"
    )]
    BadStep {
        /// 1-based position in the list.
        position: usize,
        /// The text found there.
        text: String,
    },
}

impl RetrySchedule {
    /// A schedule of explicit steps (ms), each 1 ms to 24 h, 1 to 32 of them.
    pub fn new(steps: Vec<i64>) -> Result<Self, ScheduleError> {
        if steps.is_empty() {
            return Err(ScheduleError::Empty);
        }
        if steps.len() > MAX_SCHEDULE_STEPS {
            return Err(ScheduleError::TooLong(steps.len()));
        }
        if let Some(i) = steps
            .iter()
            .position(|&s| !(1..=MAX_RETRY_DELAY_MS).contains(&s))
        {
            return Err(ScheduleError::BadStep {
                position: i + 1,
                text: steps[i].to_string(),
            });
        }
        Ok(Self(steps))
    }

    /// Parses a comma-separated list of ms (`"5000,300000,1800000"`;
    /// spaces around the numbers are allowed), a shortened schedule for tests.
    ///
    /// ```
    /// use kairos_domain::webhook::RetrySchedule;
    /// assert_eq!(RetrySchedule::parse("100, 200").unwrap().steps(), &[100, 200]);
    /// assert!(RetrySchedule::parse("100,,200").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Self, ScheduleError> {
        if s.trim().is_empty() {
            return Err(ScheduleError::Empty);
        }
        let steps = s
            .split(',')
            .enumerate()
            .map(|(i, part)| {
                let part = part.trim();
                part.parse::<i64>().map_err(|_| ScheduleError::BadStep {
                    position: i + 1,
                    text: part.to_owned(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(steps)
    }

    /// The steps, in ms.
    pub fn steps(&self) -> &[i64] {
        &self.0
    }

    /// How many attempts a delivery gets at most: the first and one per step.
    pub fn max_attempts(&self) -> u32 {
        // At most MAX_SCHEDULE_STEPS + 1: the conversion cannot overflow.
        u32::try_from(self.0.len() + 1).unwrap_or(u32::MAX)
    }
}

impl FromStr for RetrySchedule {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for RetrySchedule {
    /// The comma list [`RetrySchedule::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{step}")?;
        }
        Ok(())
    }
}

/// One queued delivery of one event to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The endpoint.
    pub webhook_id: WebhookId,
    /// The event; also the `webhook-id` header, the same on every retry.
    pub event_id: Uuid,
    /// The exact body to POST ([`body`]), fixed at enqueue so every retry
    /// signs and sends the same bytes.
    pub body: String,
    /// 1-based: the attempt about to be made.
    pub attempt: u32,
    /// When the attempt is due.
    pub due_at_ms: i64,
    /// When it was first enqueued: the age of the oldest undelivered event.
    pub first_enqueued_at_ms: i64,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The receiver answered 2xx in time.
    Delivered {
        /// The status.
        status: u16,
    },
    /// Anything else but 410: another status, a timeout, a refused connection.
    Failed {
        /// The status, when there was a response.
        status: Option<u16>,
        /// What went wrong, for the delivery log (no secrets).
        error: String,
        /// The response's `Retry-After`, in ms, when it had one.
        retry_after_ms: Option<i64>,
    },
    /// The receiver answered 410 Gone: it wants no more.
    Gone,
}

impl AttemptOutcome {
    /// Classifies a response: 2xx delivered, 410 gone, anything else failed.
    ///
    /// ```
    /// use kairos_domain::webhook::AttemptOutcome;
    /// assert_eq!(AttemptOutcome::from_status(204, None), AttemptOutcome::Delivered { status: 204 });
    /// assert_eq!(AttemptOutcome::from_status(410, None), AttemptOutcome::Gone);
    /// assert!(matches!(AttemptOutcome::from_status(503, Some(1000)), AttemptOutcome::Failed { .. }));
    /// ```
    pub fn from_status(status: u16, retry_after_ms: Option<i64>) -> Self {
        match status {
            200..=299 => Self::Delivered { status },
            410 => Self::Gone,
            _ => Self::Failed {
                status: Some(status),
                error: format!("HTTP {status}"),
                retry_after_ms,
            },
        }
    }
}

/// What to do with a delivery after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextStep {
    /// Delivered: drop it from the queue.
    Done,
    /// Try again at this instant (ms).
    RetryAt(i64),
    /// Stop: disable the endpoint, for this reason.
    Disable(String),
}

/// The rule of contract section 9 for what follows attempt number `attempt`
/// (1-based) with `outcome` at `now_ms`:
///
/// - 2xx: [`NextStep::Done`].
/// - 410: [`NextStep::Disable`] at once.
/// - any other failure with steps left (`attempt <= steps.len()`): a retry at
///   `now + steps[attempt - 1]`, moved by `jitter * 20%` of the step
///   (`jitter` in [-1, 1], drawn by the caller; outside values are clamped,
///   NaN counts as 0), never earlier than `now + Retry-After` (itself capped
///   at 24 h), and always strictly after `now`.
/// - a failure of the last attempt: [`NextStep::Disable`].
pub fn next_step(
    schedule: &RetrySchedule,
    attempt: u32,
    outcome: &AttemptOutcome,
    now_ms: i64,
    jitter: f64,
) -> NextStep {
    let (error, retry_after_ms) = match outcome {
        AttemptOutcome::Delivered { .. } => return NextStep::Done,
        AttemptOutcome::Gone => {
            return NextStep::Disable("the receiver answered 410 Gone".to_owned());
        }
        AttemptOutcome::Failed {
            error,
            retry_after_ms,
            ..
        } => (error, *retry_after_ms),
    };
    let index = attempt.max(1) as usize - 1;
    let Some(&step) = schedule.steps().get(index) else {
        return NextStep::Disable(format!(
            "retry schedule exhausted after {} attempts; last error: {error}",
            attempt.max(1)
        ));
    };
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(-1.0, 1.0)
    };
    // Steps are at most 24 h, so the product is exact enough in f64 and the
    // rounded value fits an i64.
    let delay = (step as f64 * (1.0 + JITTER_FRACTION * jitter)).round() as i64;
    let floor = retry_after_ms.unwrap_or(0).clamp(0, MAX_RETRY_DELAY_MS);
    NextStep::RetryAt(now_ms.saturating_add(delay.max(floor).max(1)))
}

/// The body POSTed for `event`: `{"type": event_type, "timestamp": RFC 3339
/// of at_ms (UTC, ms), "data": event}`, the event in its wire shape
/// (contract section 5).
pub fn body(event: &Event) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        r#type: &'static str,
        timestamp: String,
        data: &'a Event,
    }
    let body = Body {
        r#type: event.event_type.as_str(),
        timestamp: rfc3339_ms(event.at_ms),
        data: event,
    };
    // An event is plain data (strings, integers, a JSON object with string
    // keys): serializing it cannot fail.
    serde_json::to_string(&body).unwrap_or_else(|e| unreachable!("an event serializes: {e}"))
}

/// `ms` since the Unix epoch as RFC 3339 in UTC with milliseconds and `Z`
/// (`2026-01-02T03:04:05.678Z`), the form the REST API uses. Years outside
/// 0000..=9999 are written with a sign or more digits, never wrong.
///
/// ```
/// use kairos_domain::webhook::rfc3339_ms;
/// assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
/// assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
/// assert_eq!(rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
/// ```
pub fn rfc3339_ms(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (hh, rest) = (in_day / 3_600_000, in_day % 3_600_000);
    let (mm, rest) = (rest / 60_000, rest % 60_000);
    let (ss, milli) = (rest / 1_000, rest % 1_000);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{milli:03}Z")
}

/// The proleptic Gregorian date of a day count from 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, exact for every i64 day count whose year fits).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// One line of an endpoint's delivery log (`GET /v1/webhooks/{id}/deliveries`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// The event delivered (the `webhook-id`).
    pub event_id: Uuid,
    /// Which attempt (1-based).
    pub attempt: u32,
    /// The response's status, when there was one.
    pub status_code: Option<u16>,
    /// What went wrong, when something did.
    pub error: Option<String>,
    /// When the request was sent.
    pub sent_at_ms: i64,
    /// How long the receiver took to answer (or to fail).
    pub latency_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(retry_after_ms: Option<i64>) -> AttemptOutcome {
        AttemptOutcome::Failed {
            status: Some(503),
            error: "HTTP 503".to_owned(),
            retry_after_ms,
        }
    }

    #[test]
    fn the_default_schedule_is_the_contracts() {
        assert_eq!(
            RetrySchedule::default().steps(),
            &[
                5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 86_400_000
            ]
        );
        assert_eq!(RetrySchedule::default().max_attempts(), 8);
        let text = RetrySchedule::default().to_string();
        assert_eq!(
            text,
            "5000,300000,1800000,7200000,18000000,36000000,86400000"
        );
        assert_eq!(RetrySchedule::parse(&text), Ok(RetrySchedule::default()));
    }

    #[test]
    fn bad_schedules_are_refused_with_the_step_named() {
        assert_eq!(RetrySchedule::parse(""), Err(ScheduleError::Empty));
        assert_eq!(RetrySchedule::parse("  "), Err(ScheduleError::Empty));
        assert_eq!(
            RetrySchedule::parse("100,abc"),
            Err(ScheduleError::BadStep {
                position: 2,
                text: "abc".to_owned()
            })
        );
        assert_eq!(
            RetrySchedule::parse("0"),
            Err(ScheduleError::BadStep {
                position: 1,
                text: "0".to_owned()
            })
        );
        assert_eq!(
            RetrySchedule::parse("100,-5").map_err(|e| e.to_string()),
            Err(
                "retry schedule step 2 (\"-5\") must be a whole number of ms from 1 to 86400000"
                    .to_owned()
            )
        );
        assert!(RetrySchedule::parse("86400001").is_err());
        assert!(RetrySchedule::parse("1.5").is_err());
        assert_eq!(
            RetrySchedule::parse(&vec!["1"; 33].join(",")),
            Err(ScheduleError::TooLong(33))
        );
        assert_eq!(
            RetrySchedule::parse(" 10 ,20").map(|s| s.steps().to_vec()),
            Ok(vec![10, 20])
        );
    }

    #[test]
    fn next_step_follows_the_schedule_then_disables() {
        let s = RetrySchedule::parse("100,1000").unwrap();
        let now = 1_000_000;
        assert_eq!(
            next_step(&s, 1, &AttemptOutcome::Delivered { status: 200 }, now, 0.0),
            NextStep::Done
        );
        assert_eq!(
            next_step(&s, 1, &failed(None), now, 0.0),
            NextStep::RetryAt(now + 100)
        );
        assert_eq!(
            next_step(&s, 2, &failed(None), now, 1.0),
            NextStep::RetryAt(now + 1_200)
        );
        assert_eq!(
            next_step(&s, 2, &failed(None), now, -1.0),
            NextStep::RetryAt(now + 800)
        );
        assert_eq!(
            next_step(&s, 3, &failed(None), now, 0.0),
            NextStep::Disable(
                "retry schedule exhausted after 3 attempts; last error: HTTP 503".to_owned()
            )
        );
        assert_eq!(
            next_step(&s, 1, &AttemptOutcome::Gone, now, 0.0),
            NextStep::Disable("the receiver answered 410 Gone".to_owned())
        );
    }

    #[test]
    fn retry_after_lengthens_but_is_capped_at_a_day() {
        let s = RetrySchedule::parse("100").unwrap();
        assert_eq!(
            next_step(&s, 1, &failed(Some(5_000)), 0, 0.0),
            NextStep::RetryAt(5_000)
        );
        assert_eq!(
            next_step(&s, 1, &failed(Some(10)), 0, 0.0),
            NextStep::RetryAt(100)
        );
        assert_eq!(
            next_step(&s, 1, &failed(Some(i64::MAX)), 0, 0.0),
            NextStep::RetryAt(MAX_RETRY_DELAY_MS)
        );
        assert_eq!(
            next_step(&s, 1, &failed(Some(-7)), 0, 0.0),
            NextStep::RetryAt(100)
        );
    }

    #[test]
    fn odd_jitter_and_attempt_zero_are_tamed() {
        let s = RetrySchedule::parse("1000").unwrap();
        assert_eq!(
            next_step(&s, 1, &failed(None), 0, f64::NAN),
            NextStep::RetryAt(1_000)
        );
        assert_eq!(
            next_step(&s, 1, &failed(None), 0, 7.0),
            NextStep::RetryAt(1_200)
        );
        assert_eq!(
            next_step(&s, 0, &failed(None), 0, 0.0),
            NextStep::RetryAt(1_000)
        );
    }

    #[test]
    fn wants_follows_the_list_and_the_disabled_flag() {
        let mut e = Endpoint {
            webhook_id: WebhookId::from_uuid(Uuid::from_u128(1)),
            url: "https://example.com/hook".to_owned(),
            event_types: None,
            description: None,
            secret: new_secret([7; 32]),
            created_at_ms: 0,
            disabled: false,
            disabled_reason: None,
        };
        assert!(e.wants(EventType::PresenceLeft));
        e.event_types = Some(vec![EventType::SessionExpired]);
        assert!(e.wants(EventType::SessionExpired));
        assert!(!e.wants(EventType::CycleSwitched));
        e.event_types = Some(vec![]);
        assert!(!e.wants(EventType::SessionExpired));
        e.event_types = None;
        e.disabled = true;
        assert!(!e.wants(EventType::SessionExpired));
        let debug = format!("{e:?}");
        assert!(!debug.contains(&e.secret), "{debug}");
        assert!(debug.contains("<redacted>"));
    }

    #[test]
    fn a_secret_is_prefixed_standard_base64_of_32_bytes() {
        let s = new_secret([0xff; 32]);
        assert_eq!(s, "whsec_//////////////////////////////////////////8=");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(s.strip_prefix(SECRET_PREFIX).unwrap())
            .unwrap();
        assert_eq!(decoded, vec![0xff; 32]);
    }

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339_ms(1_760_970_600_000), "2025-10-20T14:30:00.000Z");
        assert_eq!(rfc3339_ms(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(rfc3339_ms(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(-62_135_596_800_000), "0001-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn the_body_wraps_the_event_in_its_wire_shape() {
        let event = Event {
            event_id: Uuid::from_u128(0xabc),
            session_id: "123e4567-e89b-12d3-a456-426614174000".parse().unwrap(),
            version: 3,
            event_type: EventType::SessionExpired,
            participant_id: Some("p1".parse().unwrap()),
            group_id: None,
            at_ms: 1_760_970_600_042,
            time_remaining_ms: Some(0),
            time_elapsed_ms: None,
            action: None,
            metadata: serde_json::Map::new(),
        };
        let value: serde_json::Value = serde_json::from_str(&body(&event)).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "type": "session_expired",
                "timestamp": "2025-10-20T14:30:00.042Z",
                "data": {
                    "event_id": "00000000-0000-0000-0000-000000000abc",
                    "session_id": "123e4567-e89b-12d3-a456-426614174000",
                    "version": 3,
                    "event_type": "session_expired",
                    "participant_id": "p1",
                    "group_id": null,
                    "at_ms": 1_760_970_600_042i64,
                    "time_remaining_ms": 0,
                    "time_elapsed_ms": null,
                    "action": null,
                    "metadata": {}
                }
            })
        );
    }
}
