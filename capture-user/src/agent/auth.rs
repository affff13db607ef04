//! The bearer-token layer. With a token configured, every call but the open routes (the
//! readiness probe, which kubelet calls without credentials) must carry
//! `Authorization: Bearer TOKEN`; anything else is answered 401 before routing reaches a
//! handler. Unknown routes are no exception, so probing for routes needs the token too.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// What the layer checks against: the token, and the routes that need none.
#[derive(Clone, Debug)]
pub struct Gate {
    /// `None`: every call passes (the agent then listens on loopback only).
    token: Option<Arc<[u8]>>,
    open: Arc<[(Method, &'static str)]>,
}

impl Gate {
    /// A gate for `token` that lets calls to the `open` (method, path) pairs through.
    pub fn new(
        token: Option<&str>,
        open: impl IntoIterator<Item = (Method, &'static str)>,
    ) -> Self {
        Self {
            token: token.map(|t| Arc::from(t.as_bytes())),
            open: open.into_iter().collect(),
        }
    }

    /// True when the call may go on to the router.
    fn admits(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        if self.open.iter().any(|(m, p)| m == method && *p == path) {
            return true;
        }
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|given| same_bytes(given, token))
    }
}

/// The middleware: 401 in the API's error shape, or the call goes on.
pub async fn require_token(State(gate): State<Gate>, req: Request, next: Next) -> Response {
    if gate.admits(req.method(), req.uri().path(), req.headers()) {
        next.run(req).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

/// Compares in time that depends on the token's length only, not on how many leading bytes
/// of a guess are right.
fn same_bytes(given: &[u8], token: &[u8]) -> bool {
    given.len() == token.len()
        && given
            .iter()
            .zip(token)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().expect("header value"));
        h
    }

    #[test]
    fn the_token_is_compared_whole() {
        assert!(same_bytes(b"s3cret", b"s3cret"));
        assert!(!same_bytes(b"s3creT", b"s3cret"));
        assert!(!same_bytes(b"s3cre", b"s3cret"));
        assert!(!same_bytes(b"", b"s3cret"));
    }

    #[test]
    fn only_open_routes_pass_without_the_token() {
        let gate = Gate::new(Some("tok"), [(Method::GET, "/healthz")]);
        let none = HeaderMap::new();
        assert!(gate.admits(&Method::GET, "/healthz", &none));
        assert!(!gate.admits(&Method::POST, "/healthz", &none));
        assert!(!gate.admits(&Method::GET, "/metrics", &none));
        assert!(!gate.admits(&Method::GET, "/metrics", &bearer("Bearer tok2")));
        assert!(!gate.admits(&Method::GET, "/metrics", &bearer("Basic tok")));
        assert!(gate.admits(&Method::GET, "/metrics", &bearer("Bearer tok")));
        assert!(gate.admits(&Method::GET, "/nowhere", &bearer("Bearer tok")));
    }

    #[test]
    fn without_a_token_everything_passes() {
        let gate = Gate::new(None, []);
        assert!(gate.admits(&Method::GET, "/metrics", &HeaderMap::new()));
    }
}
