//! A property test against a running agent: random methods, paths (route words, random
//! segments, percent escapes, trailing slashes, queries), headers, tokens and bodies (bytes
//! and JSON shaped like the API's) go over real connections. The agent never panics and
//! stays up, every answer's status is one the OpenAPI document lists for that operation
//! (401 and 404 for what is no operation: the README's documented errors), and a recording
//! running beside it stores exactly the traffic it saw.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Result, ensure};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};
use tests::agent::{Api, TOKEN, in_netns, start_agent, status_of};
use tests::netns::Topology;
use tests::nginx::Nginx;
use tests::run_ok;

const AGENT: &str = "127.0.0.1:9300";

/// One generated call.
#[derive(Clone, Debug)]
struct Call {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    token: Option<String>,
    body: Vec<u8>,
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["GET", "POST", "DELETE"]).prop_map(String::from),
        1 => prop::sample::select(vec!["PUT", "PATCH", "HEAD", "OPTIONS", "TRACE"])
            .prop_map(String::from),
        1 => "[A-Z]{1,10}",
    ]
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "v1", "recordings", "replays", "stop", "healthz", "metrics", "openapi.json", "r1",
        ])
        .prop_map(String::from),
        2 => "[A-Za-z0-9._~-]{1,12}",
        1 => "(%[0-9A-Fa-f]{2}){1,4}",
        1 => "[a-z]{0,3}%[0-9A-F]{2}[!$&'()*+,;=:@]{0,3}",
    ]
}

/// A path: mostly a route of the API with a random parameter (so calls reach handlers),
/// else random segments; maybe a trailing slash, maybe a query.
fn path() -> impl Strategy<Value = String> {
    let route = (
        prop::sample::select(vec![
            "/healthz",
            "/metrics",
            "/v1/openapi.json",
            "/v1/recordings",
            "/v1/recordings/{}",
            "/v1/recordings/{}/stop",
            "/v1/replays",
            "/v1/replays/{}",
        ]),
        segment(),
    )
        .prop_map(|(template, param)| template.replace("{}", &param));
    let random = prop::collection::vec(segment(), 0..5)
        .prop_map(|segments| format!("/{}", segments.join("/")));
    (
        prop_oneof![3 => route, 1 => random],
        any::<bool>(),
        prop::option::of("[a-z0-9=&%]{0,12}"),
    )
        .prop_map(|(mut p, slash, query)| {
            if slash && p.len() > 1 {
                p.push('/');
            }
            if let Some(q) = query {
                p = format!("{p}?{q}");
            }
            p
        })
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        prop::sample::select(vec![
            "Content-Type",
            "Accept",
            "User-Agent",
            "Accept-Encoding"
        ])
        .prop_map(String::from),
        "X-[A-Za-z0-9-]{1,15}",
    ];
    prop::collection::vec((name, "[ -~]{0,40}"), 0..6)
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let recording = (
        "[a-z0-9_-]{1,10}",
        prop::collection::vec("[a-z]{3,8}[0-9]", 0..3),
        prop::collection::vec(any::<i32>(), 0..3),
    )
        .prop_map(|(name, ifaces, ports)| {
            json!({"name": name, "interfaces": ifaces, "ports": ports}).to_string()
        });
    let replay = ("[a-z]{1,10}", -2.0f64..5.0, "[a-z]{0,6}").prop_map(|(rec, speed, extra)| {
        json!({"recording": rec, "target": "http://127.0.0.1:1", "speed": speed, extra: 1})
            .to_string()
    });
    prop_oneof![
        2 => Just(Vec::new()),
        2 => prop::collection::vec(any::<u8>(), 0..2000),
        2 => recording.prop_map(String::into_bytes),
        2 => replay.prop_map(String::into_bytes),
        1 => "[{}\\[\\]\":,a-z0-9 ]{0,60}".prop_map(String::into_bytes),
    ]
}

fn call() -> impl Strategy<Value = Call> {
    let token = prop_oneof![
        3 => Just(Some(TOKEN.to_string())),
        1 => Just(None),
        1 => "[!-~]{1,30}".prop_map(Some),
    ];
    (method(), path(), headers(), token, body()).prop_map(|(method, path, headers, token, body)| {
        Call {
            method,
            path,
            headers,
            token,
            body,
        }
    })
}

/// Sends `call` over a fresh connection; the answer's status.
fn send(call: &Call) -> Result<u16> {
    let mut tcp = TcpStream::connect(AGENT)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = format!("{} {} HTTP/1.1\r\nHost: agent\r\n", call.method, call.path);
    for (name, value) in &call.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(t) = &call.token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        call.body.len()
    ));
    tcp.write_all(head.as_bytes())?;
    tcp.write_all(&call.body)?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer)?;
    status_of(&answer)
}

/// The statuses the OpenAPI document lists for the operation `call` reaches, or the
/// documented 401/404 of anything that is no operation.
fn documented(doc: &Value, call: &Call) -> Vec<u16> {
    let path = call.path.split('?').next().unwrap_or_default();
    let trimmed = path.trim_end_matches('/');
    let path = if trimmed.is_empty() { "/" } else { trimmed };
    let method = match call.method.as_str() {
        "HEAD" => "get".to_string(),
        m => m.to_ascii_lowercase(),
    };
    let given: Vec<&str> = path.split('/').collect();
    let operation = doc["paths"].as_object().and_then(|paths| {
        paths.iter().find_map(|(template, item)| {
            let parts: Vec<&str> = template.split('/').collect();
            let same = parts.len() == given.len()
                && parts
                    .iter()
                    .zip(&given)
                    .all(|(t, g)| (t.starts_with('{') && !g.is_empty()) || t == g);
            same.then(|| item.get(&method)).flatten()
        })
    });
    match operation.and_then(|op| op["responses"].as_object()) {
        Some(responses) => responses.keys().filter_map(|k| k.parse().ok()).collect(),
        None => vec![401, 404],
    }
}

#[test]
fn random_calls_get_documented_statuses_and_a_recording_beside_them_is_intact() -> Result<()> {
    let topo = Topology::new("fuzz")?;
    let _nginx = Nginx::start(&topo.server_ns, &[8080])?;
    let data = tempfile::tempdir()?;
    let dir = data.path().display().to_string();
    let agent = start_agent(
        &topo.client_ns,
        AGENT,
        data.path(),
        &["--data-dir", &dir],
        &[],
    )?;
    let api = Api {
        ns: &topo.client_ns,
        base: format!("http://{AGENT}"),
    };
    let doc = api.ok("GET", "/v1/openapi.json", None)?;
    let body = json!({"name": "beside", "interfaces": [topo.client_if], "ports": [8080]});
    api.ok("POST", "/v1/recordings", Some(&body.to_string()))?;

    let origin = format!("http://{}:8080/index.html", topo.server_ip);
    let ns = topo.client_ns.clone();
    let (cases, requests, seen) = in_netns(&topo.client_ns, move || {
        let mut runner = TestRunner::new(Config {
            cases: 1000,
            failure_persistence: None,
            // Each case is a real call: shrink a little, not for minutes.
            max_shrink_iters: 64,
            ..Config::default()
        });
        let (cases, requests) = (Cell::new(0u32), Cell::new(0u32));
        let seen = RefCell::new(BTreeMap::<u16, u32>::new());
        let result = runner.run(&call(), |call| {
            cases.set(cases.get() + 1);
            // Traffic for the recording, interleaved with the calls.
            if cases.get() % 20 == 0 {
                run_ok(Topology::exec(&ns, "curl").args(["-sS", "-o", "/dev/null", &origin]))
                    .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
                requests.set(requests.get() + 1);
            }
            let status = send(&call).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
            *seen.borrow_mut().entry(status).or_default() += 1;
            let allowed = documented(&doc, &call);
            prop_assert!(
                allowed.contains(&status),
                "{status} is not among {allowed:?} for {call:?}"
            );
            Ok(())
        });
        result.map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok((cases.get(), requests.get(), seen.into_inner()))
    })?;

    // The calls reached the handlers, not only the token layer and the fallback.
    for status in [200, 400, 401, 404] {
        ensure!(seen.contains_key(&status), "no {status} among {seen:?}");
    }
    // Still up, and the recording has every exchange the curls made, nothing else.
    assert_eq!(api.raw("GET", "/healthz", None, None)?.0, 200);
    let stopped = api.ok("POST", "/v1/recordings/beside/stop", None)?;
    ensure!(stopped["state"] == "complete", "{stopped}");
    ensure!(
        stopped["messages"] == 2 * requests,
        "{requests} exchanges, recording: {stopped}"
    );
    let out = agent.stop(libc::SIGTERM)?;
    ensure!(out.status.success(), "{}", out.stderr.join("\n"));
    let panicked = out.stderr.iter().find(|l| l.contains("panicked"));
    ensure!(panicked.is_none(), "{}", out.stderr.join("\n"));
    eprintln!("{cases} random calls ({seen:?}), {requests} recorded exchanges beside them");
    Ok(())
}
