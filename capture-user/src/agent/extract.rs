//! What handlers take and give, in the API's shapes. Request bodies are read under the limit
//! the router's `DefaultBodyLimit` layer sets ([`MAX_BODY`]; over it, 413) and parsed with
//! serde's own message (400), whatever the Content-Type (curl's `-d` says form data), and must
//! arrive whole within the [`BodyDeadline`] the router puts on every request (408); a path
//! segment that does not decode is a 400 too. Answers are pretty-printed JSON with a final
//! newline, for people reading them in a terminal.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::server::{ServerCounters, TimeoutKind};

/// How long a request body may take to arrive, and where a miss is counted; an extension
/// the router adds to every request.
#[derive(Clone, Debug)]
pub struct BodyDeadline {
    pub limit: std::time::Duration,
    pub counters: std::sync::Arc<ServerCounters>,
}

/// Largest request body the API reads (the router's `DefaultBodyLimit`).
pub const MAX_BODY: usize = 1 << 20;

/// A JSON request body; a bad or oversized one is an [`ApiError`] in the API's error shape.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let deadline = req.extensions().get::<BodyDeadline>().cloned();
        let read = Bytes::from_request(req, state);
        let read = match deadline {
            Some(d) => tokio::time::timeout(d.limit, read).await.map_err(|_| {
                d.counters.timed_out(TimeoutKind::BodyRead);
                ApiError::BodyTimeout(d.limit)
            })?,
            None => read.await,
        };
        let body = read.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge
            } else {
                ApiError::BadRequest(format!("request body: {}", e.body_text()))
            }
        })?;
        serde_json::from_slice(&body)
            .map(ApiJson)
            .map_err(|e| ApiError::BadRequest(format!("request body: {e}")))
    }
}

/// A path parameter (a recording name, a replay id); one that does not decode is a 400.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|e| ApiError::BadRequest(format!("path: {}", e.body_text())))
    }
}

/// A successful JSON answer and its status.
pub struct Reply<T>(pub StatusCode, pub T);

/// What handlers return.
pub type ApiResult<T> = Result<Reply<T>, ApiError>;

impl<T> Reply<T> {
    /// 200 with `body`.
    pub fn ok(body: T) -> Self {
        Self(StatusCode::OK, body)
    }
}

impl<T: Serialize> IntoResponse for Reply<T> {
    fn into_response(self) -> Response {
        reply(self.0, &self.1)
    }
}

/// `value` as a pretty-printed JSON answer.
pub fn reply(status: StatusCode, value: &impl Serialize) -> Response {
    let mut body = serde_json::to_string_pretty(value).unwrap_or_else(|_| "{}".into());
    body.push('\n');
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
