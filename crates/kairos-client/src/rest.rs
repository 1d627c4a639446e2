//! Typed REST calls (contract section 3): one method per endpoint, answers
//! unwrapped from `{"data": ...}` into the wire types, refusals turned into
//! [`ApiError`] with the code, message, details, status and `Retry-After`.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

use crate::backend::{AddTime, Delivery, NewWebhook, Presence, Webhook};
use crate::error::{ApiError, Error, ErrorCode};
use crate::subscription::{SubscribeOptions, Subscription};
use crate::types::ParticipantConfig;
use crate::types::{Event, EventsQuery, ServerTime, SessionConfig, SessionView};

/// How long the client's pool keeps an idle HTTP connection: a second less
/// than the server's 5 s keep-alive, so that a command is never sent on a
/// connection the server is closing just then (it would fail, and a POST
/// is not retried). For any other `reqwest` client of a SyncKairos server.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// A SyncKairos server: its base URL, an optional bearer token, and a
/// connection pool. Cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct Client {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

/// Builds a [`Client`].
#[derive(Debug)]
pub struct ClientBuilder {
    base: String,
    token: Option<String>,
    timeout: Duration,
    http: Option<reqwest::Client>,
}

impl ClientBuilder {
    /// Sends `Authorization: Bearer <token>` on every call and on the socket.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The timeout of each REST call (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Uses this `reqwest` client (its own timeouts and pool) instead of a
    /// new one. Give it a pool idle timeout under the server's 5 s
    /// keep-alive ([`POOL_IDLE_TIMEOUT`], the default client's).
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// The client; fails when the base URL is not an `http://` or `https://` URL.
    pub fn build(self) -> Result<Client, Error> {
        let mut base = Url::parse(&self.base).map_err(|e| Error::InvalidUrl(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Error::InvalidUrl(format!(
                "{}: not an http(s) base URL",
                self.base
            )));
        }
        // `join` keeps a base path only up to its last `/`.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = match self.http {
            Some(http) => http,
            None => reqwest::Client::builder()
                .timeout(self.timeout)
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .build()?,
        };
        Ok(Client {
            base,
            token: self.token,
            http,
        })
    }
}

/// The body of a command (`{expected_version?, next_participant_id?}`).
#[derive(Debug, Serialize)]
struct CommandBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    expected_version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_participant_id: Option<&'a str>,
}

/// `{"data": T}`.
#[derive(serde::Deserialize)]
struct Data<T> {
    data: T,
}

impl Client {
    /// A client of the server at `base_url` (e.g. `http://127.0.0.1:8080`),
    /// without a token.
    pub fn new(base_url: &str) -> Result<Self, Error> {
        Self::builder(base_url).build()
    }

    /// A builder for a client of the server at `base_url`.
    pub fn builder(base_url: &str) -> ClientBuilder {
        ClientBuilder {
            base: base_url.to_owned(),
            token: None,
            timeout: Duration::from_secs(10),
            http: None,
        }
    }

    /// The base URL, ending in `/`.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// The bearer token, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The same server with another token (or none); shares the pool.
    pub fn with_token(&self, token: Option<String>) -> Self {
        Self {
            base: self.base.clone(),
            token,
            http: self.http.clone(),
        }
    }

    /// `POST /v1/sessions`: creates a session.
    pub async fn create(&self, config: &SessionConfig) -> Result<SessionView, Error> {
        let req = self.request(Method::POST, "v1/sessions")?.json(config);
        self.data(req).await
    }

    /// `POST /v1/sessions` with a body given as JSON, for configs this
    /// crate's [`SessionConfig`] cannot express (or malformed on purpose).
    pub async fn create_raw(&self, config: &Value) -> Result<SessionView, Error> {
        let req = self.request(Method::POST, "v1/sessions")?.json(config);
        self.data(req).await
    }

    /// `GET /v1/sessions/{id}`.
    pub async fn get(&self, id: Uuid) -> Result<SessionView, Error> {
        let req = self.request(Method::GET, &format!("v1/sessions/{id}"))?;
        self.data(req).await
    }

    /// `POST /v1/sessions/{id}/start`.
    pub async fn start(
        &self,
        id: Uuid,
        expected_version: Option<u64>,
    ) -> Result<SessionView, Error> {
        self.command(id, "start", expected_version, None).await
    }

    /// `POST /v1/sessions/{id}/switch`: ends the active turn; the next
    /// participant is `next_participant_id` when given.
    pub async fn switch(
        &self,
        id: Uuid,
        next_participant_id: Option<&str>,
        expected_version: Option<u64>,
    ) -> Result<SessionView, Error> {
        self.command(id, "switch", expected_version, next_participant_id)
            .await
    }

    /// `POST /v1/sessions/{id}/pause`.
    pub async fn pause(
        &self,
        id: Uuid,
        expected_version: Option<u64>,
    ) -> Result<SessionView, Error> {
        self.command(id, "pause", expected_version, None).await
    }

    /// `POST /v1/sessions/{id}/resume`.
    pub async fn resume(
        &self,
        id: Uuid,
        expected_version: Option<u64>,
    ) -> Result<SessionView, Error> {
        self.command(id, "resume", expected_version, None).await
    }

    /// `POST /v1/sessions/{id}/complete`.
    pub async fn complete(
        &self,
        id: Uuid,
        expected_version: Option<u64>,
    ) -> Result<SessionView, Error> {
        self.command(id, "complete", expected_version, None).await
    }

    /// `POST /v1/sessions/{id}/cancel`.
    pub async fn cancel(
        &self,
        id: Uuid,
        expected_version: Option<u64>,
    ) -> Result<SessionView, Error> {
        self.command(id, "cancel", expected_version, None).await
    }

    /// `DELETE /v1/sessions/{id}`: idempotent (an unknown id is success too).
    pub async fn delete(&self, id: Uuid) -> Result<(), Error> {
        let req = self.request(Method::DELETE, &format!("v1/sessions/{id}"))?;
        let res = req.send().await?;
        if res.status().is_success() {
            Ok(())
        } else {
            Err(refusal(res).await)
        }
    }

    /// `POST /v1/sessions/{id}/add_time`: adds time to a bank (owner or admin).
    pub async fn add_time(&self, id: Uuid, body: &AddTime) -> Result<SessionView, Error> {
        let req = self
            .request(Method::POST, &format!("v1/sessions/{id}/add_time"))?
            .json(body);
        self.data(req).await
    }

    /// `POST /v1/sessions/{id}/participants`: a participant joins a live
    /// session, at the end of the rotation or at its `participant_index`.
    pub async fn join(
        &self,
        id: Uuid,
        participant: &ParticipantConfig,
    ) -> Result<SessionView, Error> {
        let req = self
            .request(Method::POST, &format!("v1/sessions/{id}/participants"))?
            .json(participant);
        self.data(req).await
    }

    /// `DELETE /v1/sessions/{id}/participants/{participant_id}`: a
    /// participant leaves; if it was active, the next one's turn starts.
    pub async fn leave(&self, id: Uuid, participant_id: &str) -> Result<SessionView, Error> {
        let mut url = self.url(&format!("v1/sessions/{id}/participants/"))?;
        let shown = url.to_string();
        url.path_segments_mut()
            .map_err(|()| Error::InvalidUrl(format!("{shown}: cannot take a path")))?
            .pop_if_empty()
            .push(participant_id);
        self.data(self.authorize(self.http.delete(url))).await
    }

    /// `GET /v1/sessions/{id}/presence`: who is connected, over every instance.
    pub async fn presence(&self, id: Uuid) -> Result<Presence, Error> {
        let req = self.request(Method::GET, &format!("v1/sessions/{id}/presence"))?;
        self.data(req).await
    }

    /// `POST /v1/webhooks` (admin): the answer carries the signing secret,
    /// shown only here.
    pub async fn create_webhook(&self, webhook: &NewWebhook) -> Result<Webhook, Error> {
        let req = self.request(Method::POST, "v1/webhooks")?.json(webhook);
        self.data(req).await
    }

    /// `GET /v1/webhooks` (admin).
    pub async fn webhooks(&self) -> Result<Vec<Webhook>, Error> {
        let req = self.request(Method::GET, "v1/webhooks")?;
        self.data(req).await
    }

    /// `GET /v1/webhooks/{id}` (admin).
    pub async fn webhook(&self, id: Uuid) -> Result<Webhook, Error> {
        let req = self.request(Method::GET, &format!("v1/webhooks/{id}"))?;
        self.data(req).await
    }

    /// `DELETE /v1/webhooks/{id}` (admin; idempotent).
    pub async fn delete_webhook(&self, id: Uuid) -> Result<(), Error> {
        let req = self.request(Method::DELETE, &format!("v1/webhooks/{id}"))?;
        let res = req.send().await?;
        if res.status().is_success() {
            Ok(())
        } else {
            Err(refusal(res).await)
        }
    }

    /// `GET /v1/webhooks/{id}/deliveries?limit=` (admin): the newest attempts first.
    pub async fn webhook_deliveries(
        &self,
        id: Uuid,
        limit: Option<u32>,
    ) -> Result<Vec<Delivery>, Error> {
        let mut url = self.url(&format!("v1/webhooks/{id}/deliveries"))?;
        if let Some(limit) = limit {
            url.query_pairs_mut()
                .append_pair("limit", &limit.to_string());
        }
        let url = drop_empty_query(url);
        self.data(self.authorize(self.http.get(url))).await
    }

    /// `GET /v1/sessions/{id}/events`: the audit history, newest first.
    pub async fn events(&self, id: Uuid, query: EventsQuery) -> Result<Vec<Event>, Error> {
        let mut url = self.url(&format!("v1/sessions/{id}/events"))?;
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(limit) = query.limit {
                pairs.append_pair("limit", &limit.to_string());
            }
            if let Some(before) = query.before_ms {
                pairs.append_pair("before_ms", &before.to_string());
            }
        }
        let url = drop_empty_query(url);
        self.data(self.authorize(self.http.get(url))).await
    }

    /// `GET /v1/time`: the server's clock (one sample; the subscription
    /// measures the offset better).
    pub async fn time(&self) -> Result<ServerTime, Error> {
        let req = self.request(Method::GET, "v1/time")?;
        let res = req.send().await?;
        let status = res.status();
        if !status.is_success() {
            return Err(refusal(res).await);
        }
        decode(status, &res.bytes().await?)
    }

    /// Opens a WebSocket subscription to a session with the default options.
    /// Must be called within a Tokio runtime (it spawns the socket's task);
    /// it returns at once, the socket opens in the background.
    pub fn subscribe(&self, id: Uuid) -> Result<Subscription, Error> {
        self.subscribe_with(id, SubscribeOptions::default())
    }

    /// Opens a WebSocket subscription to a session (within a Tokio runtime).
    pub fn subscribe_with(
        &self,
        id: Uuid,
        options: SubscribeOptions,
    ) -> Result<Subscription, Error> {
        Subscription::open(self.socket_url(id)?, self.token.clone(), options)
    }

    /// `ws(s)://.../ws?sessionId=<id>` for this server.
    pub fn socket_url(&self, id: Uuid) -> Result<Url, Error> {
        let mut url = self.url("ws")?;
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        url.set_scheme(scheme)
            .map_err(|()| Error::InvalidUrl(format!("{url}: cannot be a WebSocket URL")))?;
        url.query_pairs_mut()
            .append_pair("sessionId", &id.to_string());
        Ok(url)
    }

    async fn command(
        &self,
        id: Uuid,
        name: &str,
        expected_version: Option<u64>,
        next_participant_id: Option<&str>,
    ) -> Result<SessionView, Error> {
        let body = CommandBody {
            expected_version,
            next_participant_id,
        };
        let req = self
            .request(Method::POST, &format!("v1/sessions/{id}/{name}"))?
            .json(&body);
        self.data(req).await
    }

    fn url(&self, path: &str) -> Result<Url, Error> {
        self.base
            .join(path)
            .map_err(|e| Error::InvalidUrl(e.to_string()))
    }

    fn request(&self, method: Method, path: &str) -> Result<RequestBuilder, Error> {
        Ok(self.authorize(self.http.request(method, self.url(path)?)))
    }

    fn authorize(&self, req: RequestBuilder) -> RequestBuilder {
        match &self.token {
            Some(token) => req.header(AUTHORIZATION, format!("Bearer {token}")),
            None => req,
        }
    }

    /// Sends, and unwraps `{"data": T}` from a success or types the refusal.
    async fn data<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, Error> {
        let res = req.send().await?;
        let status = res.status();
        if !status.is_success() {
            return Err(refusal(res).await);
        }
        let body = res.bytes().await?;
        decode::<Data<T>>(status, &body).map(|d| d.data)
    }
}

/// A URL whose query ended up empty loses its `?`.
fn drop_empty_query(mut url: Url) -> Url {
    if url.query() == Some("") {
        url.set_query(None);
    }
    url
}

fn decode<T: DeserializeOwned>(status: StatusCode, body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::Decode {
        status: Some(status.as_u16()),
        message: e.to_string(),
    })
}

/// The [`Error::Api`] of a non-success answer; a body that is not the
/// contract's error format still gives its status (code `HTTP_<status>`).
async fn refusal(res: Response) -> Error {
    let status = res.status();
    let retry_after = res
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body: Value = match res.bytes().await {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        Err(e) => return Error::Http(e),
    };
    let error = body.get("error");
    let code = error
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str)
        .map(ErrorCode::parse)
        .unwrap_or_else(|| ErrorCode::Other(format!("HTTP_{}", status.as_u16())));
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| status.to_string());
    let details = error.and_then(|e| e.get("details")).cloned();
    Error::Api(Box::new(ApiError {
        status: Some(status.as_u16()),
        code,
        message,
        details,
        retry_after,
    }))
}
