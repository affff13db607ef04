//! The API's one error shape: `{"error": "..."}` with a status that says whose fault it is.
//! Handlers return [`ApiError`]; library errors get their status from what they are
//! ([`From<anyhow::Error>`]), so no handler picks a status for a store or loader error.

use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::extract::{MAX_BODY, reply};
use crate::live::LoaderError;
use crate::replay::load::LoadError;
use crate::replay::schedule::ScheduleError;
use crate::replay::select::SelectError;
use crate::store::StoreError;

/// Why a call failed; each variant is one status, and its message names the field or thing.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the call asks for something impossible (bad JSON, unknown field, bad port...).
    #[error("{0}")]
    BadRequest(String),
    /// 401: no bearer token, or the wrong one.
    #[error(
        "missing or wrong bearer token: send `Authorization: Bearer <token from --token-file>`"
    )]
    Unauthorized,
    /// 403: a replay target outside the agent's `--allow-target` list.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such recording, replay or route.
    #[error("{0}")]
    NotFound(String),
    /// 409: a recording of that name already runs here (or already exists in the store).
    #[error("{0}")]
    Conflict(String),
    /// 408: the request body did not arrive whole within `--body-read-timeout`.
    #[error(
        "request body not received whole within {} (--body-read-timeout); send it at once",
        humantime::format_duration(*.0)
    )]
    BodyTimeout(std::time::Duration),
    /// 413: a request body over [`MAX_BODY`] bytes.
    #[error("request body over {MAX_BODY} bytes")]
    TooLarge,
    /// 500: the node failed (store I/O, missing privileges...), not the call.
    #[error("{0}")]
    Internal(String),
    /// 503: the call passed its handling deadline (its work goes on).
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, naming the field or thing.
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        reply(
            self.status(),
            &ErrorBody {
                error: self.to_string(),
            },
        )
    }
}

impl From<anyhow::Error> for ApiError {
    /// Maps library errors to statuses by what they are; anything unknown is the node's fault.
    fn from(e: anyhow::Error) -> Self {
        let message = format!("{e:#}");
        if let Some(s) = e.downcast_ref::<StoreError>() {
            return match s {
                StoreError::NotFound(_) => Self::NotFound(message),
                StoreError::Exists(_) => Self::Conflict(message),
                StoreError::BadName(_) | StoreError::JoinUnsupported(_) => {
                    Self::BadRequest(message)
                }
                _ => Self::Internal(message),
            };
        }
        let bad_input = e
            .downcast_ref::<LoaderError>()
            .is_some_and(LoaderError::is_bad_input)
            || e.downcast_ref::<SelectError>().is_some()
            || e.downcast_ref::<ScheduleError>().is_some()
            || e.downcast_ref::<LoadError>().is_some();
        if bad_input {
            Self::BadRequest(message)
        } else {
            Self::Internal(message)
        }
    }
}

/// Answers calls no route serves: an unknown path, or a method its path does not take.
pub async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!(
        "no route {method} {}; see the operations section of the README",
        uri.path()
    ))
}
