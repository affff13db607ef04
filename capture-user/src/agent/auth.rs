//! The bearer-token layer. With a token configured, every call but the open routes (the
//! readiness probe, which kubelet calls without credentials) must carry
//! `Authorization: Bearer TOKEN`; anything else is answered 401 before routing reaches a
//! handler. Unknown routes are no exception, so probing for routes needs the token too.
//! The token comes from `--token-file` and is read again when the file changes
//! ([`super::reload`]): a rotation needs no restart, and the old token stops working then.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::reload::{AgentFileError, Reloading, read_file};

/// The bearer token's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token(Box<[u8]>);

impl Token {
    /// A token given as text (surrounding whitespace is not part of it).
    pub fn new(text: &str) -> Self {
        Self(text.trim().as_bytes().into())
    }
}

/// The token in use, read again when `--token-file` changes.
pub type ReloadingToken = Reloading<Token>;

/// Opens `--token-file`: an empty or unreadable file is an error at start.
pub fn open_token_file(path: PathBuf) -> Result<ReloadingToken, AgentFileError> {
    Reloading::open("token", vec![path], load_token)
}

/// A token that never changes, for tests and embedders.
pub fn fixed_token(text: &str) -> ReloadingToken {
    Reloading::fixed("token", Token::new(text))
}

fn load_token(files: &[PathBuf]) -> Result<Token, AgentFileError> {
    let path = &files[0];
    let bytes = read_file(
        "--token-file",
        path,
        "give the file the token Secret is mounted as, e.g. /etc/capture/token",
    )?;
    let token = Token::new(&String::from_utf8_lossy(&bytes));
    if token.0.is_empty() {
        return Err(AgentFileError::EmptyToken { path: path.clone() });
    }
    Ok(token)
}

/// What the layer checks against: the token, and the routes that need none.
#[derive(Clone, Debug)]
pub struct Gate {
    /// `None`: every call passes (the agent then listens on loopback only).
    token: Option<Arc<ReloadingToken>>,
    open: Arc<[(Method, &'static str)]>,
}

impl Gate {
    /// A gate for `token` that lets calls to the `open` (method, path) pairs through.
    pub fn new(
        token: Option<Arc<ReloadingToken>>,
        open: impl IntoIterator<Item = (Method, &'static str)>,
    ) -> Self {
        Self {
            token,
            open: open.into_iter().collect(),
        }
    }

    /// True when the call may go on to the router.
    fn admits(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        // The router answers HEAD with the GET handler, so an open GET is an open HEAD.
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        if self.open.iter().any(|(m, p)| m == method && *p == path) {
            return true;
        }
        let token = token.current();
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|given| same_bytes(given, &token.0))
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
        let gate = Gate::new(
            Some(Arc::new(fixed_token("tok"))),
            [(Method::GET, "/healthz")],
        );
        let none = HeaderMap::new();
        assert!(gate.admits(&Method::GET, "/healthz", &none));
        assert!(gate.admits(&Method::HEAD, "/healthz", &none));
        assert!(!gate.admits(&Method::POST, "/healthz", &none));
        assert!(!gate.admits(&Method::GET, "/metrics", &none));
        assert!(!gate.admits(&Method::GET, "/metrics", &bearer("Bearer tok2")));
        assert!(!gate.admits(&Method::GET, "/metrics", &bearer("Basic tok")));
        assert!(gate.admits(&Method::GET, "/metrics", &bearer("Bearer tok")));
        assert!(gate.admits(&Method::GET, "/nowhere", &bearer("Bearer tok")));
    }

    #[test]
    fn a_rotated_token_file_replaces_the_old_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "old-token\n").expect("write");
        let token = Arc::new(open_token_file(path.clone()).expect("token"));
        let gate = Gate::new(Some(token.clone()), []);
        assert!(gate.admits(&Method::GET, "/metrics", &bearer("Bearer old-token")));
        std::fs::write(&path, "new-token-longer\n").expect("write");
        assert!(matches!(token.check(), Some(Ok(()))));
        assert!(!gate.admits(&Method::GET, "/metrics", &bearer("Bearer old-token")));
        assert!(gate.admits(&Method::GET, "/metrics", &bearer("Bearer new-token-longer")));
        // Emptied during a rotation: the token in use stays.
        std::fs::write(&path, "").expect("write");
        assert!(matches!(
            token.check(),
            Some(Err(AgentFileError::EmptyToken { .. }))
        ));
        assert!(gate.admits(&Method::GET, "/metrics", &bearer("Bearer new-token-longer")));
    }

    #[test]
    fn without_a_token_everything_passes() {
        let gate = Gate::new(None, []);
        assert!(gate.admits(&Method::GET, "/metrics", &HeaderMap::new()));
    }
}
