//! The session config of `POST /v1/sessions`, parsed and validated once.
//!
//! Parsing works on a `serde_json::Value` rather than a derived struct so that
//! one request gets *every* violation back, field by field, wrong types
//! included (a derived `Deserialize` stops at the first).

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use crate::ids::{GroupId, ParticipantId, SessionId};
use crate::session::{DelayMode, Stage, SyncMode, TimeoutAction, TimeoutKind};

/// Bounds of every duration-like bank (`total_time_ms`, `time_per_cycle_ms`, `max_time_ms`).
pub const BANK_RANGE_MS: std::ops::RangeInclusive<i64> = 1_000..=86_400_000;
/// Bounds of `increment_ms`.
pub const INCREMENT_RANGE_MS: std::ops::RangeInclusive<i64> = 0..=3_600_000;
/// At most this many participants in one session.
pub const MAX_PARTICIPANTS: usize = 1000;
/// `metadata` serialized is at most this many bytes.
pub const MAX_METADATA_BYTES: usize = 10 * 1024;
/// At most this many `stages`.
pub const MAX_STAGES: usize = 10;
/// Bounds of a stage's `moves`.
pub const STAGE_MOVES_RANGE: std::ops::RangeInclusive<i64> = 1..=1000;
/// Bounds of a stage's `add_ms`.
pub const STAGE_ADD_RANGE_MS: std::ops::RangeInclusive<i64> = 0..=86_400_000;
/// Bounds of `delay_ms` (session and stage).
pub const DELAY_RANGE_MS: std::ops::RangeInclusive<i64> = 0..=600_000;
/// At most this many `warnings_ms`.
pub const MAX_WARNINGS: usize = 5;
/// Bounds of each warning threshold.
pub const WARNING_RANGE_MS: std::ops::RangeInclusive<i64> = 1_000..=3_600_000;
/// `start_at_ms` is at most this far after the create.
pub const MAX_START_AHEAD_MS: i64 = 7 * 24 * 3_600_000;
/// Bounds of a switch's `lag_ms` (checked where a switch is parsed).
pub const LAG_RANGE_MS: std::ops::RangeInclusive<u32> = 0..=10_000;
/// Bounds of an `add_time` command's `ms` (the command's `AddMs` holds only these).
pub const ADD_TIME_RANGE_MS: std::ops::RangeInclusive<i64> = 1..=3_600_000;
/// Bounds of `auto_pause_on_disconnect_ms` (contract section 9).
pub const AUTO_PAUSE_RANGE_MS: std::ops::RangeInclusive<i64> = 1_000..=600_000;

/// One broken rule: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// The field's path, e.g. `participants[1].total_time_ms`.
    pub field: String,
    /// What is wrong, in words a client author can act on.
    pub message: String,
}

impl FieldError {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// One participant as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct ParticipantConfig {
    /// Who.
    pub id: ParticipantId,
    /// Rotation position (list order when the client left it out).
    pub index: u32,
    /// Starting bank; required in `per_participant`.
    pub total_time_ms: Option<i64>,
    /// Group membership (`per_group`).
    pub group_id: Option<GroupId>,
}

/// A participant joining a live session (contract section 9): one
/// participant object of the config, whose `participant_index` may be left
/// out (it then joins at the end of the rotation). The rules that need the
/// session (a bank in `per_participant`, an existing group in `per_group`,
/// a free id) are the transition's, `machine::decide`'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joiner {
    /// Who joins.
    pub id: ParticipantId,
    /// Where in the rotation; `None`: at the end.
    pub index: Option<u32>,
    /// Starting bank; required in `per_participant`.
    pub total_time_ms: Option<i64>,
    /// Group membership (required in `per_group`).
    pub group_id: Option<GroupId>,
}

impl Joiner {
    /// Parses one participant object with the config's rules, reporting
    /// every bad field by its name in the object (`total_time_ms`, ...).
    /// Other keys (such as a command's `expected_version`) are left to the
    /// caller.
    ///
    /// ```
    /// use kairos_domain::config::Joiner;
    /// let j = Joiner::parse(&serde_json::json!({"participant_id": "carol", "total_time_ms": 60000})).unwrap();
    /// assert_eq!((j.id.as_str(), j.index), ("carol", None));
    /// let errors = Joiner::parse(&serde_json::json!({"participant_index": -1})).unwrap_err();
    /// let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
    /// assert_eq!(fields, ["participant_id", "participant_index"]);
    /// ```
    pub fn parse(body: &Value) -> Result<Self, Vec<FieldError>> {
        let Some(obj) = body.as_object() else {
            return Err(vec![FieldError::new("body", "must be a JSON object")]);
        };
        let mut e = Errors(Vec::new());
        let fields = parse_participant(obj, "", None, &mut e);
        match (fields.id, fields.index) {
            (Some(id), Ok(index)) if e.0.is_empty() => Ok(Self {
                id,
                index,
                total_time_ms: fields.total_time_ms,
                group_id: fields.group_id,
            }),
            _ => Err(e.0),
        }
    }
}

/// One group as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupConfig {
    /// Which group.
    pub id: GroupId,
    /// Starting bank.
    pub total_time_ms: i64,
}

/// A valid session config. Only [`SessionConfig::parse`] makes one, so every
/// value inside already obeys the contract's rules.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// The id the client chose, if any.
    pub session_id: Option<SessionId>,
    /// The sync mode.
    pub sync_mode: SyncMode,
    /// Participants, sorted by index.
    pub participants: Vec<ParticipantConfig>,
    /// Groups, in configuration order.
    pub groups: Vec<GroupConfig>,
    /// Session bank (required in `global`).
    pub total_time_ms: Option<i64>,
    /// Cycle length (required in `per_cycle`).
    pub time_per_cycle_ms: Option<i64>,
    /// Increment per switch.
    pub increment_ms: i64,
    /// Bank cap, or the stopwatch limit in `count_up`.
    pub max_time_ms: Option<i64>,
    /// What a timeout does.
    pub action_on_timeout: TimeoutAction,
    /// Start the next cycle at once after a skipped one.
    pub auto_advance: bool,
    /// Client-defined metadata.
    pub metadata: Map<String, Value>,
    /// The stages of a staged control (`per_participant`, `per_group`);
    /// empty: one stage of `increment_ms`, `delay_ms` and `delay_mode`.
    pub stages: Vec<Stage>,
    /// Session-level delay (only without `stages`).
    pub delay_ms: i64,
    /// Session-level delay mode (only without `stages`).
    pub delay_mode: DelayMode,
    /// `lag_compensation.enabled`.
    pub lag_compensation: bool,
    /// Warning thresholds, distinct, sorted descending.
    pub warnings_ms: Vec<i64>,
    /// When the session starts by itself. [`SessionConfig::parse`] checks
    /// only its type; [`SessionConfig::parse_at`] also checks it is within
    /// [`MAX_START_AHEAD_MS`] of now and not in the past.
    pub start_at_ms: Option<i64>,
    /// Pause the running session by itself when its active participant has
    /// had no connection for this long (contract section 9), within
    /// [`AUTO_PAUSE_RANGE_MS`].
    pub auto_pause_on_disconnect_ms: Option<i64>,
}

struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    /// An optional integer within `range`; `null` counts as absent.
    fn int(
        &mut self,
        obj: &Map<String, Value>,
        key: &str,
        path: &str,
        range: &std::ops::RangeInclusive<i64>,
    ) -> Option<i64> {
        match obj.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_i64() {
                Some(n) if range.contains(&n) => Some(n),
                Some(_) => {
                    self.push(
                        path,
                        format!("must be between {} and {}", range.start(), range.end()),
                    );
                    None
                }
                None => {
                    self.push(path, "must be an integer number of milliseconds");
                    None
                }
            },
        }
    }
}

impl SessionConfig {
    /// Parses and validates a config, returning every violation at once.
    ///
    /// ```
    /// use kairos_domain::{SessionConfig, SyncMode};
    /// let cfg = SessionConfig::parse(&serde_json::json!({
    ///     "sync_mode": "per_participant",
    ///     "participants": [
    ///         {"participant_id": "white", "total_time_ms": 300000},
    ///         {"participant_id": "black", "total_time_ms": 300000}
    ///     ],
    ///     "increment_ms": 2000
    /// })).unwrap();
    /// assert_eq!(cfg.sync_mode, SyncMode::PerParticipant);
    /// assert_eq!(cfg.participants[1].index, 1);
    ///
    /// let errors = SessionConfig::parse(&serde_json::json!({
    ///     "sync_mode": "per_cycle", "increment_ms": -1
    /// })).unwrap_err();
    /// let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
    /// assert_eq!(fields, ["increment_ms", "participants", "time_per_cycle_ms"]);
    /// ```
    pub fn parse(body: &Value) -> Result<Self, Vec<FieldError>> {
        let mut e = Errors(Vec::new());
        let Some(obj) = body.as_object() else {
            return Err(vec![FieldError::new("body", "must be a JSON object")]);
        };

        let session_id = match obj.get("session_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => match s.parse::<SessionId>() {
                Ok(id) => Some(id),
                Err(_) => {
                    e.push("session_id", "must be a UUID");
                    None
                }
            },
            Some(_) => {
                e.push("session_id", "must be a UUID string");
                None
            }
        };

        let sync_mode = match obj.get("sync_mode") {
            Some(Value::String(s)) => match SyncMode::parse(s) {
                Some(m) => Some(m),
                None => {
                    e.push(
                        "sync_mode",
                        "must be one of per_participant, per_cycle, per_group, global, count_up",
                    );
                    None
                }
            },
            None | Some(Value::Null) => {
                e.push("sync_mode", "is required");
                None
            }
            Some(_) => {
                e.push("sync_mode", "must be a string");
                None
            }
        };

        let total_time_ms = e.int(obj, "total_time_ms", "total_time_ms", &BANK_RANGE_MS);
        let time_per_cycle_ms = e.int(
            obj,
            "time_per_cycle_ms",
            "time_per_cycle_ms",
            &BANK_RANGE_MS,
        );
        let increment_ms = e
            .int(obj, "increment_ms", "increment_ms", &INCREMENT_RANGE_MS)
            .unwrap_or(0);
        let max_time_ms = e.int(obj, "max_time_ms", "max_time_ms", &BANK_RANGE_MS);

        let groups = parse_groups(obj, &mut e);
        let participants = parse_participants(obj, sync_mode, &mut e);

        // Mode-specific requirements.
        if let Some(mode) = sync_mode {
            let needs_participants = matches!(
                mode,
                SyncMode::PerParticipant | SyncMode::PerCycle | SyncMode::PerGroup
            );
            if needs_participants && participants.is_empty() && !has_error(&e, "participants") {
                e.push(
                    "participants",
                    format!("{} needs at least one participant", mode.as_str()),
                );
            }
            if mode == SyncMode::Global
                && total_time_ms.is_none()
                && !has_error(&e, "total_time_ms")
            {
                e.push("total_time_ms", "is required in global mode");
            }
            if mode == SyncMode::PerCycle
                && time_per_cycle_ms.is_none()
                && !has_error(&e, "time_per_cycle_ms")
            {
                e.push("time_per_cycle_ms", "is required in per_cycle mode");
            }
            if mode == SyncMode::PerGroup {
                check_group_membership(&participants, &groups, obj, &mut e);
            }
        }

        let stages = parse_stages(obj, sync_mode, increment_ms, &mut e);
        let (delay_ms, delay_mode) = parse_delay(obj, "", &mut e);
        if delay_ms > 0 || delay_mode != DelayMode::None {
            let field = if delay_ms > 0 {
                "delay_ms"
            } else {
                "delay_mode"
            };
            if obj.contains_key("stages") && !matches!(obj.get("stages"), Some(Value::Null)) {
                e.push(field, "give the delay in each stage when stages are given");
            } else {
                check_timed_mode(sync_mode, field, "a delay", &mut e);
            }
        }
        let lag_compensation = parse_lag(obj, sync_mode, &mut e);
        let warnings_ms = parse_warnings(obj, &mut e);
        let start_at_ms = match obj.get("start_at_ms") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_i64() {
                Some(n) if n >= 0 => Some(n),
                _ => {
                    e.push(
                        "start_at_ms",
                        "must be an instant in ms since the Unix epoch",
                    );
                    None
                }
            },
        };

        let auto_pause_on_disconnect_ms = e.int(
            obj,
            "auto_pause_on_disconnect_ms",
            "auto_pause_on_disconnect_ms",
            &AUTO_PAUSE_RANGE_MS,
        );

        let action_on_timeout = parse_timeout_action(obj, &mut e);
        let auto_advance = match obj.get("auto_advance") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                e.push("auto_advance", "must be true or false");
                false
            }
        };
        let metadata = match obj.get("metadata") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => {
                // Serializing a Value cannot fail: its keys are strings.
                let size = serde_json::to_vec(m).map(|v| v.len()).unwrap_or(usize::MAX);
                if size > MAX_METADATA_BYTES {
                    e.push(
                        "metadata",
                        format!(
                            "must be at most {MAX_METADATA_BYTES} bytes serialized (got {size})"
                        ),
                    );
                }
                m.clone()
            }
            Some(_) => {
                e.push("metadata", "must be an object");
                Map::new()
            }
        };

        match sync_mode {
            Some(sync_mode) if e.0.is_empty() => Ok(Self {
                session_id,
                sync_mode,
                participants,
                groups,
                total_time_ms,
                time_per_cycle_ms,
                increment_ms,
                max_time_ms,
                action_on_timeout,
                auto_advance,
                metadata,
                stages,
                delay_ms,
                delay_mode,
                lag_compensation,
                warnings_ms,
                start_at_ms,
                auto_pause_on_disconnect_ms,
            }),
            _ => Err(e.0),
        }
    }

    /// [`Self::parse`], plus the rules that need the current instant:
    /// `start_at_ms` is not before `now` and at most [`MAX_START_AHEAD_MS`]
    /// after it. Every violation is reported at once.
    ///
    /// ```
    /// use kairos_domain::SessionConfig;
    /// let body = serde_json::json!({"sync_mode": "count_up", "start_at_ms": 5_000});
    /// assert!(SessionConfig::parse_at(&body, 1_000).is_ok());
    /// let errors = SessionConfig::parse_at(&body, 6_000).unwrap_err();
    /// assert_eq!(errors[0].field, "start_at_ms");
    /// ```
    pub fn parse_at(body: &Value, now: i64) -> Result<Self, Vec<FieldError>> {
        match Self::parse(body) {
            Ok(cfg) => cfg.validate_at(now).map(|()| cfg),
            Err(mut errors) => {
                // The type was fine if parse did not name it; check the window too.
                if !errors.iter().any(|f| f.field == "start_at_ms")
                    && let Some(at) = body.get("start_at_ms").and_then(Value::as_i64)
                    && let Some(err) = start_window(at, now)
                {
                    errors.push(err);
                }
                Err(errors)
            }
        }
    }

    /// The rules of an already parsed config that need the current instant
    /// (see [`Self::parse_at`]); the service checks them at create.
    pub fn validate_at(&self, now: i64) -> Result<(), Vec<FieldError>> {
        match self.start_at_ms.and_then(|at| start_window(at, now)) {
            Some(err) => Err(vec![err]),
            None => Ok(()),
        }
    }
}

fn start_window(at: i64, now: i64) -> Option<FieldError> {
    if at < now {
        Some(FieldError::new("start_at_ms", "must not be in the past"))
    } else if at > now.saturating_add(MAX_START_AHEAD_MS) {
        Some(FieldError::new(
            "start_at_ms",
            "must be at most 7 days from now",
        ))
    } else {
        None
    }
}

/// The modes with banks that stages, delay and lag compensation apply to.
fn check_timed_mode(mode: Option<SyncMode>, field: &str, what: &str, e: &mut Errors) {
    if let Some(m) = mode
        && !matches!(m, SyncMode::PerParticipant | SyncMode::PerGroup)
    {
        e.push(
            field,
            format!("{what} applies only in per_participant and per_group mode"),
        );
    }
}

/// `delay_ms` and `delay_mode` of `obj` (a stage, or the session when
/// `prefix` is empty): `delay_ms` > 0 needs a mode other than `none`.
fn parse_delay(obj: &Map<String, Value>, prefix: &str, e: &mut Errors) -> (i64, DelayMode) {
    let ms_path = format!("{prefix}delay_ms");
    let mode_path = format!("{prefix}delay_mode");
    let ms = e
        .int(obj, "delay_ms", &ms_path, &DELAY_RANGE_MS)
        .unwrap_or(0);
    let mode = match obj.get("delay_mode") {
        None | Some(Value::Null) => DelayMode::None,
        Some(Value::String(m)) => DelayMode::parse(m).unwrap_or_else(|| {
            e.push(&mode_path, "must be one of none, simple, bronstein");
            DelayMode::None
        }),
        Some(_) => {
            e.push(&mode_path, "must be one of none, simple, bronstein");
            DelayMode::None
        }
    };
    if ms > 0 && mode == DelayMode::None && !has_error(e, &mode_path) {
        e.push(mode_path, "must be simple or bronstein when delay_ms > 0");
    }
    (ms, mode)
}

fn parse_stages(
    obj: &Map<String, Value>,
    mode: Option<SyncMode>,
    increment_ms: i64,
    e: &mut Errors,
) -> Vec<Stage> {
    let list = match obj.get("stages") {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(list)) => list,
        Some(_) => {
            e.push("stages", "must be an array");
            return Vec::new();
        }
    };
    check_timed_mode(mode, "stages", "stages", e);
    if list.is_empty() || list.len() > MAX_STAGES {
        e.push(
            "stages",
            format!("must hold 1 to {MAX_STAGES} stages (got {})", list.len()),
        );
        return Vec::new();
    }
    if increment_ms != 0 {
        e.push(
            "increment_ms",
            "must be absent or 0 with stages (give each stage its increment_ms)",
        );
    }
    let last = list.len() - 1;
    let mut out = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let path = format!("stages[{i}]");
        let Some(st) = item.as_object() else {
            e.push(path, "must be an object");
            continue;
        };
        let moves = e.int(st, "moves", &format!("{path}.moves"), &STAGE_MOVES_RANGE);
        let moves_given = !matches!(st.get("moves"), None | Some(Value::Null));
        if i < last && !moves_given {
            e.push(
                format!("{path}.moves"),
                "is required on every stage but the last",
            );
        }
        if i == last && moves_given {
            e.push(format!("{path}.moves"), "must be absent on the last stage");
        }
        let add_ms = e
            .int(st, "add_ms", &format!("{path}.add_ms"), &STAGE_ADD_RANGE_MS)
            .unwrap_or(0);
        if i == 0 && add_ms != 0 {
            e.push(
                format!("{path}.add_ms"),
                "must be absent or 0 on the first stage",
            );
        }
        let increment_ms = e
            .int(
                st,
                "increment_ms",
                &format!("{path}.increment_ms"),
                &INCREMENT_RANGE_MS,
            )
            .unwrap_or(0);
        let (delay_ms, delay_mode) = parse_delay(st, &format!("{path}."), e);
        out.push(Stage {
            moves: moves
                .filter(|_| i < last)
                .and_then(|m| u32::try_from(m).ok()),
            add_ms,
            increment_ms,
            delay_ms,
            delay_mode,
        });
    }
    out
}

fn parse_lag(obj: &Map<String, Value>, mode: Option<SyncMode>, e: &mut Errors) -> bool {
    let on = match obj.get("lag_compensation") {
        None | Some(Value::Null) => false,
        Some(Value::Object(m)) => match m.get("enabled") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                e.push("lag_compensation.enabled", "must be true or false");
                false
            }
        },
        Some(_) => {
            e.push("lag_compensation", "must be an object {\"enabled\": bool}");
            false
        }
    };
    if on {
        check_timed_mode(mode, "lag_compensation", "lag compensation", e);
    }
    on
}

fn parse_warnings(obj: &Map<String, Value>, e: &mut Errors) -> Vec<i64> {
    let list = match obj.get("warnings_ms") {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(list)) => list,
        Some(_) => {
            e.push("warnings_ms", "must be an array of durations in ms");
            return Vec::new();
        }
    };
    if list.len() > MAX_WARNINGS {
        e.push(
            "warnings_ms",
            format!("at most {MAX_WARNINGS} thresholds (got {})", list.len()),
        );
        return Vec::new();
    }
    let mut out: Vec<i64> = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let path = format!("warnings_ms[{i}]");
        match v.as_i64() {
            Some(n) if WARNING_RANGE_MS.contains(&n) => {
                if out.contains(&n) {
                    e.push(path, format!("duplicate threshold {n}"));
                } else {
                    out.push(n);
                }
            }
            Some(_) => e.push(
                path,
                format!(
                    "must be between {} and {}",
                    WARNING_RANGE_MS.start(),
                    WARNING_RANGE_MS.end()
                ),
            ),
            None => e.push(path, "must be an integer number of milliseconds"),
        }
    }
    out.sort_unstable_by(|a, b| b.cmp(a));
    out
}

fn has_error(e: &Errors, prefix: &str) -> bool {
    e.0.iter().any(|f| f.field.starts_with(prefix))
}

fn parse_groups(obj: &Map<String, Value>, e: &mut Errors) -> Vec<GroupConfig> {
    let mut groups = Vec::new();
    let list = match obj.get("groups") {
        None | Some(Value::Null) => return groups,
        Some(Value::Array(list)) => list,
        Some(_) => {
            e.push("groups", "must be an array");
            return groups;
        }
    };
    let mut seen = HashSet::new();
    for (i, item) in list.iter().enumerate() {
        let path = format!("groups[{i}]");
        let Some(g) = item.as_object() else {
            e.push(path, "must be an object");
            continue;
        };
        let id = match g.get("group_id").and_then(Value::as_str) {
            Some(s) => match GroupId::parse(s) {
                Ok(id) => Some(id),
                Err(err) => {
                    e.push(format!("{path}.group_id"), err.to_string());
                    None
                }
            },
            None => {
                e.push(
                    format!("{path}.group_id"),
                    "is required and must be a string",
                );
                None
            }
        };
        let total = e.int(
            g,
            "total_time_ms",
            &format!("{path}.total_time_ms"),
            &BANK_RANGE_MS,
        );
        if total.is_none() && matches!(g.get("total_time_ms"), None | Some(Value::Null)) {
            e.push(format!("{path}.total_time_ms"), "is required");
        }
        if let Some(id) = &id
            && !seen.insert(id.clone())
        {
            e.push(
                format!("{path}.group_id"),
                format!("duplicate group id {id}"),
            );
        }
        if let (Some(id), Some(total_time_ms)) = (id, total) {
            groups.push(GroupConfig { id, total_time_ms });
        }
    }
    groups
}

fn parse_participants(
    obj: &Map<String, Value>,
    mode: Option<SyncMode>,
    e: &mut Errors,
) -> Vec<ParticipantConfig> {
    let mut out = Vec::new();
    let list = match obj.get("participants") {
        None | Some(Value::Null) => return out,
        Some(Value::Array(list)) => list,
        Some(_) => {
            e.push("participants", "must be an array");
            return out;
        }
    };
    if list.len() > MAX_PARTICIPANTS {
        e.push(
            "participants",
            format!(
                "at most {MAX_PARTICIPANTS} participants (got {})",
                list.len()
            ),
        );
        return out;
    }
    let mut ids = HashSet::new();
    let mut indexes: HashMap<u32, usize> = HashMap::new();
    for (i, item) in list.iter().enumerate() {
        let path = format!("participants[{i}]");
        let Some(p) = item.as_object() else {
            e.push(path, "must be an object");
            continue;
        };
        let fields = parse_participant(p, &format!("{path}."), mode, e);
        let (id, total, group_id) = (fields.id, fields.total_time_ms, fields.group_id);
        // List order is the default index (contract: "participant_index may be left out").
        let default_index = u32::try_from(i).unwrap_or(u32::MAX);
        let index = match fields.index {
            Ok(given) => Some(given.unwrap_or(default_index)),
            Err(()) => None,
        };
        if let Some(id) = &id
            && !ids.insert(id.clone())
        {
            e.push(
                format!("{path}.participant_id"),
                format!("duplicate participant id {id}"),
            );
        }
        if let Some(index) = index
            && let Some(first) = indexes.insert(index, i)
        {
            e.push(
                format!("{path}.participant_index"),
                format!("duplicate participant_index {index} (also participants[{first}])"),
            );
        }
        if let (Some(id), Some(index)) = (id, index) {
            out.push(ParticipantConfig {
                id,
                index,
                total_time_ms: total,
                group_id,
            });
        }
    }
    out.sort_by_key(|p| p.index);
    out
}

/// The fields of one participant object, as parsed (errors pushed under
/// `prefix`, e.g. `participants[1].`, or nothing for a body of its own).
struct ParticipantFields {
    id: Option<ParticipantId>,
    /// `Ok(None)` when left out, `Err` when malformed.
    index: Result<Option<u32>, ()>,
    total_time_ms: Option<i64>,
    group_id: Option<GroupId>,
}

fn parse_participant(
    p: &Map<String, Value>,
    prefix: &str,
    mode: Option<SyncMode>,
    e: &mut Errors,
) -> ParticipantFields {
    let id = match p.get("participant_id") {
        Some(Value::String(s)) => match ParticipantId::parse(s) {
            Ok(id) => Some(id),
            Err(err) => {
                e.push(format!("{prefix}participant_id"), err.to_string());
                None
            }
        },
        _ => {
            e.push(
                format!("{prefix}participant_id"),
                "is required and must be a string",
            );
            None
        }
    };
    let index = match p.get("participant_index") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => Ok(Some(n)),
            None => {
                e.push(
                    format!("{prefix}participant_index"),
                    "must be a non-negative integer",
                );
                Err(())
            }
        },
    };
    let total = e.int(
        p,
        "total_time_ms",
        &format!("{prefix}total_time_ms"),
        &BANK_RANGE_MS,
    );
    if total.is_none()
        && mode == Some(SyncMode::PerParticipant)
        && matches!(p.get("total_time_ms"), None | Some(Value::Null))
    {
        e.push(
            format!("{prefix}total_time_ms"),
            "is required in per_participant mode",
        );
    }
    let group_id = match p.get("group_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match GroupId::parse(s) {
            Ok(g) => Some(g),
            Err(err) => {
                e.push(format!("{prefix}group_id"), err.to_string());
                None
            }
        },
        Some(_) => {
            e.push(format!("{prefix}group_id"), "must be a string or null");
            None
        }
    };
    ParticipantFields {
        id,
        index,
        total_time_ms: total,
        group_id,
    }
}

fn check_group_membership(
    participants: &[ParticipantConfig],
    groups: &[GroupConfig],
    obj: &Map<String, Value>,
    e: &mut Errors,
) {
    if groups.is_empty() {
        if !has_error(e, "groups") {
            e.push("groups", "per_group needs at least one group");
        }
        return;
    }
    let known: HashSet<&GroupId> = groups.iter().map(|g| &g.id).collect();
    // Report by list position, as the client wrote it.
    let raw = obj
        .get("participants")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, item) in raw.iter().enumerate() {
        let path = format!("participants[{i}].group_id");
        if has_error(e, &path) {
            continue;
        }
        match item.get("group_id").and_then(Value::as_str) {
            None => e.push(path, "is required in per_group mode"),
            Some(g) => {
                if GroupId::parse(g).is_ok_and(|g| !known.contains(&g)) {
                    e.push(path, format!("names no group in groups: {g}"));
                }
            }
        }
    }
    for (i, g) in groups.iter().enumerate() {
        if !participants
            .iter()
            .any(|p| p.group_id.as_ref() == Some(&g.id))
        {
            e.push(
                format!("groups[{i}]"),
                format!("group {} has no members", g.id),
            );
        }
    }
}

fn parse_timeout_action(obj: &Map<String, Value>, e: &mut Errors) -> TimeoutAction {
    let mut out = TimeoutAction::default();
    let map = match obj.get("action_on_timeout") {
        None | Some(Value::Null) => return out,
        Some(Value::Object(m)) => m,
        Some(_) => {
            e.push("action_on_timeout", "must be an object");
            return out;
        }
    };
    match map.get("type").and_then(Value::as_str) {
        Some("end_session") => out.kind = TimeoutKind::EndSession,
        Some("skip_cycle") => out.kind = TimeoutKind::SkipCycle,
        Some("auto_action") => out.kind = TimeoutKind::AutoAction,
        _ => e.push(
            "action_on_timeout.type",
            "must be one of end_session, skip_cycle, auto_action",
        ),
    }
    match map.get("action") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.len() <= 256 => out.action = Some(s.clone()),
        Some(_) => e.push(
            "action_on_timeout.action",
            "must be a string of at most 256 bytes",
        ),
    }
    out.extra = map
        .iter()
        .filter(|(k, _)| k.as_str() != "type" && k.as_str() != "action")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Vec<String> {
        SessionConfig::parse(&v)
            .unwrap_err()
            .into_iter()
            .map(|f| f.field)
            .collect()
    }

    fn chess() -> Value {
        json!({
            "session_id": "123e4567-e89b-12d3-a456-426614174000",
            "sync_mode": "per_participant",
            "participants": [
                {"participant_id": "white", "participant_index": 0, "total_time_ms": 300000},
                {"participant_id": "black", "participant_index": 1, "total_time_ms": 300000, "group_id": null}
            ],
            "increment_ms": 2000,
            "max_time_ms": null,
            "action_on_timeout": {"type": "end_session"},
            "auto_advance": false,
            "metadata": {"event": "blitz"}
        })
    }

    #[test]
    fn the_contract_example_parses() {
        let cfg = SessionConfig::parse(&chess()).unwrap();
        assert_eq!(cfg.participants.len(), 2);
        assert_eq!(cfg.participants[0].total_time_ms, Some(300_000));
        assert_eq!(cfg.increment_ms, 2000);
        assert_eq!(cfg.metadata["event"], "blitz");
        assert_eq!(cfg.action_on_timeout.kind, TimeoutKind::EndSession);
    }

    #[test]
    fn body_must_be_an_object() {
        assert_eq!(fields(json!([1, 2])), ["body"]);
    }

    #[test]
    fn sync_mode_is_required_and_known() {
        assert_eq!(fields(json!({})), ["sync_mode"]);
        assert_eq!(fields(json!({"sync_mode": "chess"})), ["sync_mode"]);
        assert_eq!(fields(json!({"sync_mode": 3})), ["sync_mode"]);
    }

    #[test]
    fn banks_are_between_one_second_and_one_day() {
        for (v, ok) in [
            (999, false),
            (1000, true),
            (86_400_000, true),
            (86_400_001, false),
        ] {
            let r = SessionConfig::parse(&json!({"sync_mode": "global", "total_time_ms": v}));
            assert_eq!(r.is_ok(), ok, "total_time_ms {v}");
            let r = SessionConfig::parse(&json!({
                "sync_mode": "per_cycle", "time_per_cycle_ms": v,
                "participants": [{"participant_id": "a"}]
            }));
            assert_eq!(r.is_ok(), ok, "time_per_cycle_ms {v}");
            let r = SessionConfig::parse(&json!({"sync_mode": "count_up", "max_time_ms": v}));
            assert_eq!(r.is_ok(), ok, "max_time_ms {v}");
            let r = SessionConfig::parse(&json!({
                "sync_mode": "per_participant",
                "participants": [{"participant_id": "a", "total_time_ms": v}]
            }));
            assert_eq!(r.is_ok(), ok, "participant total_time_ms {v}");
            let r = SessionConfig::parse(&json!({
                "sync_mode": "per_group",
                "participants": [{"participant_id": "a", "group_id": "g"}],
                "groups": [{"group_id": "g", "total_time_ms": v}]
            }));
            assert_eq!(r.is_ok(), ok, "group total_time_ms {v}");
        }
    }

    #[test]
    fn increment_is_between_zero_and_one_hour() {
        for (v, ok) in [
            (-1, false),
            (0, true),
            (3_600_000, true),
            (3_600_001, false),
        ] {
            let r = SessionConfig::parse(&json!({"sync_mode": "count_up", "increment_ms": v}));
            assert_eq!(r.is_ok(), ok, "increment_ms {v}");
        }
        assert_eq!(
            fields(json!({"sync_mode": "count_up", "increment_ms": 1.5})),
            ["increment_ms"]
        );
        assert_eq!(
            fields(json!({"sync_mode": "count_up", "increment_ms": "10"})),
            ["increment_ms"]
        );
    }

    #[test]
    fn participant_count_is_capped_at_1000() {
        let list = |n: usize| -> Vec<Value> {
            (0..n)
                .map(|i| json!({"participant_id": format!("p{i}"), "total_time_ms": 60000}))
                .collect()
        };
        let ok = json!({"sync_mode": "per_participant", "participants": list(1000)});
        assert_eq!(SessionConfig::parse(&ok).unwrap().participants.len(), 1000);
        let too_many = json!({"sync_mode": "per_participant", "participants": list(1001)});
        assert_eq!(fields(too_many), ["participants"]);
    }

    #[test]
    fn participant_ids_and_indexes_are_unique() {
        let v = json!({"sync_mode": "per_participant", "participants": [
            {"participant_id": "a", "participant_index": 0, "total_time_ms": 60000},
            {"participant_id": "a", "participant_index": 0, "total_time_ms": 60000}
        ]});
        assert_eq!(
            fields(v),
            [
                "participants[1].participant_id",
                "participants[1].participant_index"
            ]
        );
    }

    #[test]
    fn explicit_indexes_order_the_rotation() {
        let v = json!({"sync_mode": "per_participant", "participants": [
            {"participant_id": "second", "participant_index": 5, "total_time_ms": 60000},
            {"participant_id": "first", "participant_index": 2, "total_time_ms": 60000}
        ]});
        let cfg = SessionConfig::parse(&v).unwrap();
        assert_eq!(cfg.participants[0].id.as_str(), "first");
        assert_eq!(cfg.participants[1].index, 5);
    }

    #[test]
    fn modes_with_turns_need_participants() {
        assert_eq!(
            fields(json!({"sync_mode": "per_participant"})),
            ["participants"]
        );
        assert_eq!(
            fields(
                json!({"sync_mode": "per_cycle", "time_per_cycle_ms": 5000, "participants": []})
            ),
            ["participants"]
        );
        assert_eq!(
            fields(
                json!({"sync_mode": "per_group", "groups": [{"group_id": "g", "total_time_ms": 5000}]})
            ),
            ["participants", "groups[0]"]
        );
        // global and count_up may have none.
        assert!(
            SessionConfig::parse(&json!({"sync_mode": "global", "total_time_ms": 5000})).is_ok()
        );
        assert!(SessionConfig::parse(&json!({"sync_mode": "count_up"})).is_ok());
    }

    #[test]
    fn per_participant_needs_every_bank() {
        let v = json!({"sync_mode": "per_participant", "participants": [{"participant_id": "a"}]});
        assert_eq!(fields(v), ["participants[0].total_time_ms"]);
    }

    #[test]
    fn per_group_needs_groups_and_valid_membership() {
        let v = json!({"sync_mode": "per_group", "participants": [{"participant_id": "a", "group_id": "g"}]});
        assert_eq!(fields(v), ["groups"]);
        let v = json!({"sync_mode": "per_group",
            "participants": [{"participant_id": "a", "group_id": "g"}, {"participant_id": "b"}, {"participant_id": "c", "group_id": "nope"}],
            "groups": [{"group_id": "g", "total_time_ms": 60000}]});
        assert_eq!(
            fields(v),
            ["participants[1].group_id", "participants[2].group_id"]
        );
    }

    #[test]
    fn global_needs_total_and_per_cycle_needs_cycle_length() {
        assert_eq!(fields(json!({"sync_mode": "global"})), ["total_time_ms"]);
        assert_eq!(
            fields(json!({"sync_mode": "per_cycle", "participants": [{"participant_id": "a"}]})),
            ["time_per_cycle_ms"]
        );
    }

    #[test]
    fn metadata_is_capped_at_10_kib() {
        let ok = json!({"sync_mode": "count_up", "metadata": {"k": "x".repeat(10_000)}});
        assert!(SessionConfig::parse(&ok).is_ok());
        let big = json!({"sync_mode": "count_up", "metadata": {"k": "x".repeat(10_300)}});
        assert_eq!(fields(big), ["metadata"]);
        assert_eq!(
            fields(json!({"sync_mode": "count_up", "metadata": [1]})),
            ["metadata"]
        );
    }

    #[test]
    fn session_id_must_be_a_uuid() {
        assert_eq!(
            fields(json!({"sync_mode": "count_up", "session_id": "abc"})),
            ["session_id"]
        );
    }

    #[test]
    fn timeout_action_keeps_extra_fields() {
        let cfg = SessionConfig::parse(&json!({"sync_mode": "count_up",
            "action_on_timeout": {"type": "auto_action", "action": "fold", "penalty": 5, "notify_participants": true}}))
        .unwrap();
        assert_eq!(cfg.action_on_timeout.kind, TimeoutKind::AutoAction);
        assert_eq!(cfg.action_on_timeout.action.as_deref(), Some("fold"));
        assert_eq!(
            cfg.action_on_timeout.to_json(),
            json!({"type": "auto_action", "action": "fold", "penalty": 5, "notify_participants": true})
        );
        assert_eq!(
            fields(json!({"sync_mode": "count_up", "action_on_timeout": {"type": "explode"}})),
            ["action_on_timeout.type"]
        );
    }

    #[test]
    fn every_violation_is_reported_at_once() {
        let v = json!({
            "session_id": 7,
            "sync_mode": "per_participant",
            "participants": [{"participant_id": "bad id", "total_time_ms": 5}],
            "increment_ms": 4_000_000,
            "auto_advance": "yes",
            "metadata": "x"
        });
        assert_eq!(
            fields(v),
            [
                "session_id",
                "increment_ms",
                "participants[0].participant_id",
                "participants[0].total_time_ms",
                "auto_advance",
                "metadata"
            ]
        );
    }
}
