//! The router and its layers without a network or a kernel: the token, the body limit, the
//! error shape and the call counter, driven through `tower::ServiceExt::oneshot` on [`app`].

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt as _;

use super::*;

const TOKEN: &str = "tok-for-unit-tests";

fn agent(dir: &tempfile::TempDir, allow_targets: &[&str]) -> Arc<Agent> {
    Agent::new(AgentConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        token: Some(Arc::new(fixed_token(TOKEN))),
        tls: None,
        insecure_plain_http: false,
        limits: ServerLimits::default(),
        store: StoreConfig {
            data_dir: Some(dir.path().to_path_buf()),
            ..StoreConfig::default()
        },
        allow_targets: allow_targets.iter().map(|s| s.to_string()).collect(),
        replay_runtime: None,
    })
}

/// One call: status and body text.
async fn call(
    agent: &Arc<Agent>,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: impl Into<Body>,
) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(body.into()).expect("request");
    let resp = app(agent.clone()).oneshot(req).await.expect("infallible");
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The `error` field of a JSON error answer.
fn error(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn only_the_readiness_probe_is_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent(&dir, &[]);
    assert_eq!(
        call(&agent, "GET", "/healthz", None, "").await,
        (StatusCode::OK, "ok\n".into())
    );
    for (method, path, token) in [
        ("GET", "/metrics", None),
        ("GET", "/v1/replays", Some("wrong-token-of-same-le")),
        ("GET", "/v1/replays", Some("x")),
        ("POST", "/healthz", None),
        ("GET", "/v1/nothing", None),
    ] {
        let (status, body) = call(&agent, method, path, token, "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert!(error(&body).contains("bearer token"), "{body}");
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_are_404_in_the_error_shape() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent(&dir, &[]);
    for (method, path) in [
        ("GET", "/v1/nothing"),
        ("PUT", "/v1/recordings"),
        ("POST", "/healthz"),
    ] {
        let (status, body) = call(&agent, method, path, Some(TOKEN), "").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        assert!(
            error(&body).contains(&format!("no route {method} {path}")),
            "{body}"
        );
    }
    let (status, body) = call(&agent, "GET", "/v1/replays/r9", Some(TOKEN), "").await;
    assert_eq!(
        (status, error(&body)),
        (StatusCode::NOT_FOUND, "replay \"r9\" not found".into())
    );
    let (status, body) = call(&agent, "DELETE", "/v1/replays/r9", Some(TOKEN), "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = call(&agent, "GET", "/v1/recordings/nope", Some(TOKEN), "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(error(&body).contains("nope"), "{body}");
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_and_bad_ones_400() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent(&dir, &[]);
    let big = vec![b' '; extract::MAX_BODY + 1];
    let (status, body) = call(&agent, "POST", "/v1/recordings", Some(TOKEN), big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error(&body), "request body over 1048576 bytes");
    for (sent, says) in [
        ("{", "request body"),
        (
            r#"{"name":"x","interfaces":["lo"],"ports":[80],"bogus":1}"#,
            "bogus",
        ),
        (r#"{"name":"x","interfaces":[],"ports":[80]}"#, "interfaces"),
        (
            r#"{"name":"x","interfaces":["lo"],"ports":[70000]}"#,
            "ports: 70000",
        ),
        (
            r#"{"name":"bad name","interfaces":["lo"],"ports":[80]}"#,
            "name",
        ),
        (
            r#"{"name":"x","tls":"both","tls_scope":"servers","ports":[443]}"#,
            "tls_scope",
        ),
        (
            r#"{"name":"x","tls":"server","tls_scope":"some","ports":[443]}"#,
            "expected `all` or `servers`",
        ),
    ] {
        let (status, body) = call(&agent, "POST", "/v1/recordings", Some(TOKEN), sent).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{sent}: {body}");
        assert!(error(&body).contains(says), "{sent}: {body}");
    }
}

#[tokio::test]
async fn replay_targets_outside_the_allowlist_are_403() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent(&dir, &["127.0.0.1:8080"]);
    let sent = r#"{"recording":"r","target":"http://10.9.9.9:80"}"#;
    let (status, body) = call(&agent, "POST", "/v1/replays", Some(TOKEN), sent).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(error(&body).contains("allow-target"), "{body}");
    let sent = r#"{"recording":"r","target":"http://127.0.0.1:8080","rate":5,"max":true}"#;
    let (status, body) = call(&agent, "POST", "/v1/replays", Some(TOKEN), sent).await;
    assert_eq!(
        (status, error(&body)),
        (StatusCode::BAD_REQUEST, "rate and max: choose one".into())
    );
}

#[tokio::test]
async fn bad_copies_copy_headers_and_samples_are_400_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent(&dir, &[]);
    let target = r#""recording":"r","target":"http://127.0.0.1:8080""#;
    for (fields, says) in [
        (
            r#""copies":0"#,
            "--copies must be between 1 and 1000 (got 0)",
        ),
        (r#""copies":1001"#, "--copies must be between 1 and 1000"),
        (r#""copy_header":"Bad Name""#, "copy_header: --copy-header"),
        (
            r#""copy_header":"Content-Length""#,
            "copy_header: --copy-header",
        ),
        (r#""sample":"150%""#, "sample: --sample must be more than 0"),
        (r#""sample":"ten""#, "sample: --sample expects a percentage"),
        (r#""concurrency":0"#, "--concurrency must be at least 1"),
    ] {
        let sent = format!("{{{target},{fields}}}");
        let (status, body) = call(&agent, "POST", "/v1/replays", Some(TOKEN), sent.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{sent}: {body}");
        assert!(error(&body).contains(says), "{sent}: {body}");
    }
}

#[tokio::test]
async fn a_trailing_slash_reaches_the_same_route() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent(&dir, &[]);
    let (status, body) = call(&agent, "GET", "/v1/replays/", Some(TOKEN), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v, serde_json::json!({"replays": []}));
}

#[tokio::test]
async fn every_answer_is_counted_by_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent(&dir, &[]);
    call(&agent, "GET", "/healthz", None, "").await;
    call(&agent, "GET", "/v1/replays", None, "").await;
    call(&agent, "GET", "/v1/nothing", Some(TOKEN), "").await;
    call(
        &agent,
        "POST",
        "/v1/replays",
        Some(TOKEN),
        vec![b' '; extract::MAX_BODY + 1],
    )
    .await;
    let (status, text) = call(&agent, "GET", "/metrics", Some(TOKEN), "").await;
    assert_eq!(status, StatusCode::OK);
    for line in [
        "capture_agent_http_requests_total{code=\"200\"} 1",
        "capture_agent_http_requests_total{code=\"401\"} 1",
        "capture_agent_http_requests_total{code=\"404\"} 1",
        "capture_agent_http_requests_total{code=\"413\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
    // The /metrics call itself is counted once it is answered.
    let counted = agent.metrics_snapshot().await.http_requests;
    assert_eq!(counted.get(&200), Some(&2), "{counted:?}");
}

#[tokio::test]
async fn a_store_call_past_the_handling_deadline_is_503_counted_and_its_work_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = agent(&dir, &[]).config.clone();
    config.limits.handling_deadline = std::time::Duration::from_millis(50);
    let agent = Agent::new(config);
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = finished.clone();
    let slow = axum::routing::get(move || async move {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        "late"
    })
    .layer(from_fn_with_state(agent.clone(), handling_deadline));
    let router: Router = Router::new().route("/slow", slow);
    let req = Request::builder()
        .uri("/slow")
        .body(Body::empty())
        .expect("request");
    let resp = router.oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    let message = error(&String::from_utf8_lossy(&body));
    assert!(message.contains("--handling-deadline"), "{message}");
    let timeouts = agent.server.snapshot().timeouts;
    assert!(timeouts.contains(&("handling", 1)), "{timeouts:?}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        finished.load(std::sync::atomic::Ordering::SeqCst),
        "the call's work stopped"
    );
}
