//! A recorded HTTP/2 connection's replay: one HTTP/2 session (h2c, prior knowledge) per replay
//! connection. Each request is a stream of its own, opened when it is due without waiting for
//! the answers of earlier streams, so the recorded concurrency comes back. Pseudo-headers,
//! headers, body and trailers are sent as recorded; frames, HPACK and the order of headers of
//! different names are the h2 crate's (HTTP/2 cannot be replayed byte for byte: its frames
//! depend on the session). A connection recorded as an `Upgrade: h2c` starts with an HTTP/1
//! request: it is sent as the session's first stream. To an https target the session runs
//! inside TLS (ALPN `h2`, required) and the requests' `:scheme` is `https`.

use std::sync::Arc;

use bytes::Bytes;
use h2::SendStream;
use h2::client::{ResponseFuture, SendRequest};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

use super::connection::{Job, Jobs};
use super::stream::open_stream;
use super::{Shared, stopped};
use crate::http2::parse_stored;
use crate::message::HttpVersion;
use crate::replay::report::{Failure, FailureKind};

/// Receive windows: large enough that a fast target is not held back by window updates.
const STREAM_WINDOW: u32 = 1 << 20;
const SESSION_WINDOW: u32 = 16 << 20;

/// A recorded request read back for the h2 crate.
#[derive(Debug)]
pub(crate) struct H2Request {
    pub(crate) head: Request<()>,
    pub(crate) body: Bytes,
    pub(crate) trailers: Option<HeaderMap>,
}

/// What the target answered on a stream.
struct Answer {
    status: u16,
    body_len: u64,
    /// `grpc-status` from the trailers (or a trailers-only answer's headers); "missing" when
    /// a gRPC answer has none.
    grpc_status: Option<String>,
}

/// Headers HTTP/2 forbids (RFC 9113 section 8.2.2): a request recorded over HTTP/1 (an h2c
/// upgrade's first) may carry them.
fn connection_specific(name: &[u8]) -> bool {
    [
        &b"connection"[..],
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
        b"host",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n))
}

/// Reads a recorded request back: HTTP/2's stored form, or an HTTP/1 request. None when the
/// bytes do not make a request HTTP/2 can carry. `over_tls`: the session is inside TLS, so
/// the scheme is `https` whatever was recorded.
pub(crate) fn h2_request(
    bytes: &[u8],
    version: HttpVersion,
    body_len: u64,
    default_authority: &str,
    over_tls: bool,
) -> Option<H2Request> {
    let mut fields: Vec<(&[u8], &[u8])> = Vec::new();
    let (method, path, scheme, mut authority, body, trailers) = if version == HttpVersion::Http2 {
        let stored = parse_stored(bytes, body_len)?;
        let pseudo = |name: &[u8]| {
            stored
                .pseudo
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
        };
        fields.extend(stored.headers.iter().copied());
        (
            pseudo(b":method")?,
            pseudo(b":path")?,
            pseudo(b":scheme"),
            pseudo(b":authority"),
            stored.body,
            stored.trailers,
        )
    } else {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(head_len) = parsed.parse(bytes).ok()? else {
            return None;
        };
        let (method, path) = (parsed.method?.as_bytes(), parsed.path?.as_bytes());
        fields.extend(parsed.headers.iter().map(|h| (h.name.as_bytes(), h.value)));
        let body = bytes.get(head_len..)?;
        (method, path, None, None, body, Vec::new())
    };
    // A Host field names the authority: what an HTTP/1 request carries, and what `--host`
    // sets on an HTTP/2 one (so it wins over the recorded :authority).
    let host = fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(b"host"))
        .map(|(_, v)| *v);
    authority = host.or(authority);
    let authority = authority.unwrap_or(default_authority.as_bytes());
    let uri = Uri::builder()
        .scheme(if over_tls {
            &b"https"[..]
        } else {
            scheme.unwrap_or(b"http")
        })
        .authority(authority)
        .path_and_query(path)
        .build()
        .ok()?;
    let mut head = Request::builder()
        .method(Method::from_bytes(method).ok()?)
        .uri(uri)
        .version(http::Version::HTTP_2)
        .body(())
        .ok()?;
    append_fields(head.headers_mut(), &fields)?;
    let trailers = if trailers.is_empty() {
        None
    } else {
        let mut map = HeaderMap::new();
        append_fields(&mut map, &trailers)?;
        Some(map)
    };
    Some(H2Request {
        head,
        body: Bytes::copy_from_slice(body),
        trailers,
    })
}

/// Adds recorded fields to `map`, leaving out what HTTP/2 forbids (`te` but `trailers`).
fn append_fields(map: &mut HeaderMap, fields: &[(&[u8], &[u8])]) -> Option<()> {
    for &(name, value) in fields {
        if connection_specific(name)
            || (name.eq_ignore_ascii_case(b"te") && !value.eq_ignore_ascii_case(b"trailers"))
        {
            continue;
        }
        let name = HeaderName::from_bytes(name).ok()?;
        map.append(name, HeaderValue::from_bytes(value).ok()?);
    }
    Some(())
}

/// Opens a session with the target: TCP (and TLS, for https), then the HTTP/2 preface and
/// settings.
async fn session(shared: &Shared) -> Result<SendRequest<Bytes>, Failure> {
    let within = shared.config.connect_timeout;
    let stream = open_stream(&shared.config.target, within, true).await?;
    let handshake = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(SESSION_WINDOW)
        .handshake::<_, Bytes>(stream);
    let (send, connection) = match timeout(within, handshake).await {
        Err(_) => return Err(FailureKind::ConnectTimeout.into()),
        Ok(Err(e)) => return Err(Failure::new(FailureKind::Http2Error, e)),
        Ok(Ok(pair)) => pair,
    };
    // The session's I/O runs on its own; it ends when every handle is dropped.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    shared.tally().connections += 1;
    Ok(send)
}

/// One replay connection carrying a recorded HTTP/2 connection: opened ahead of its first
/// job, each job a stream of its own, a new session when the target ended the last one.
/// Streams open in job order; a request recorded after every earlier one was answered waits
/// for their answers here too.
pub(super) async fn http2_connection_task(
    shared: Arc<Shared>,
    mut jobs: Jobs,
    mut stop: watch::Receiver<Option<String>>,
) {
    let mut streams = JoinSet::new();
    let mut session_now = tokio::select! {
        attempt = session(&shared) => Some(attempt),
        _ = stopped(&mut stop) => return,
    };
    loop {
        let job = tokio::select! {
            biased;
            job = jobs.next() => match job { Some(job) => job, None => break },
            _ = stopped(&mut stop) => break,
        };
        if job.request.after_earlier_answers {
            tokio::select! {
                () = async { while streams.join_next().await.is_some() {} } => {}
                _ = stopped(&mut stop) => break,
            }
        }
        if stop.borrow().is_some() {
            break;
        }
        while streams.try_join_next().is_some() {}
        let ready = match session_now.take() {
            Some(Ok(send)) => match send.ready().await {
                Ok(ready) => Ok(ready),
                // The target ended the session (GOAWAY, close): a new one for this job.
                Err(_) => ready_session(&shared).await,
            },
            Some(Err(failure)) => Err(failure),
            None => ready_session(&shared).await,
        };
        match ready {
            Ok(mut send) => {
                if let Some(stream) = open_stream_for(&shared, job, &mut send) {
                    streams.spawn(finish_stream(shared.clone(), stream));
                }
                session_now = Some(Ok(send));
            }
            Err(failure) => {
                let lag = Instant::now().saturating_duration_since(job.due_at);
                let at = shared.since_start();
                shared.tally().not_sent(job.copy, at, lag, failure);
            }
        }
    }
    // The answers of streams still open (after a stop, the replay's grace bounds this).
    while streams.join_next().await.is_some() {}
}

/// A new session, ready for a stream.
async fn ready_session(shared: &Shared) -> Result<SendRequest<Bytes>, Failure> {
    session(shared)
        .await?
        .ready()
        .await
        .map_err(|e| Failure::new(FailureKind::Http2Error, e))
}

/// A stream whose HEADERS are on their way: the rest of the request and the answer follow.
struct OpenStream {
    job: Job,
    response: ResponseFuture,
    /// The body and trailers still to send, when there are any.
    rest: Option<(SendStream<Bytes>, Bytes, Option<HeaderMap>)>,
    sent_at: Instant,
}

/// Opens the job's stream (in the connection task, so streams open in job order) and counts
/// it as sent; None when it could not be sent (counted).
fn open_stream_for(shared: &Shared, job: Job, send: &mut SendRequest<Bytes>) -> Option<OpenStream> {
    let lag = Instant::now().saturating_duration_since(job.due_at);
    let request = &job.request;
    let bytes = shared.bytes_for(request, job.copy);
    let target = &shared.config.target;
    let authority = target.address.to_string();
    let over_tls = target.tls.is_some();
    let h2 = h2_request(
        &bytes,
        request.version,
        request.body_len,
        &authority,
        over_tls,
    );
    let Some(h2) = h2 else {
        let at = shared.since_start();
        let failure = FailureKind::UnsendableRequest;
        shared.tally().not_sent(job.copy, at, lag, failure);
        return None;
    };
    let sent_at = Instant::now();
    shared.count_sent(job.copy, lag, sent_at);
    let ends_at_head = h2.body.is_empty() && h2.trailers.is_none();
    match send.send_request(h2.head, ends_at_head) {
        Ok((response, out)) => Some(OpenStream {
            rest: (!ends_at_head).then_some((out, h2.body, h2.trailers)),
            job,
            response,
            sent_at,
        }),
        Err(e) => {
            let at = shared.since_start();
            let failure = Failure::new(FailureKind::WriteError, e);
            shared.tally().failed(job.copy, at, failure);
            None
        }
    }
}

/// Sends the rest of the request, reads the whole answer, and tallies it.
async fn finish_stream(shared: Arc<Shared>, stream: OpenStream) {
    let OpenStream {
        job,
        response,
        rest,
        sent_at,
    } = stream;
    let exchange = async {
        if let Some((mut out, body, trailers)) = rest {
            send_body(&mut out, body, trailers).await?;
        }
        read_answer(response).await
    };
    let outcome = timeout(shared.config.response_timeout, exchange).await;
    let latency = sent_at.elapsed();
    let at = shared.since_start();
    let mut tally = shared.tally();
    match outcome {
        Ok(Ok(answer)) => {
            let recorded = job.request.recorded_status;
            tally.completed(
                job.copy,
                at,
                answer.status,
                recorded,
                answer.body_len,
                latency,
            );
            if let Some(code) = answer.grpc_status {
                *tally.grpc_statuses.entry(code).or_default() += 1;
            }
        }
        Ok(Err(failure)) => tally.failed(job.copy, at, failure),
        Err(_) => tally.failed(job.copy, at, FailureKind::ResponseTimeout),
    }
}

/// Reads the answer: status, body (returning flow-control capacity), trailers.
async fn read_answer(response: ResponseFuture) -> Result<Answer, Failure> {
    let response = response.await.map_err(|e| failure_of(&e))?;
    let status = response.status().as_u16();
    let grpc = grpc_status(response.headers());
    let is_grpc = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let mut body = response.into_body();
    let mut body_len = 0u64;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| failure_of(&e))?;
        body_len += chunk.len() as u64;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.map_err(|e| failure_of(&e))?;
    let grpc_status = trailers
        .as_ref()
        .and_then(grpc_status)
        .or(grpc)
        .or_else(|| is_grpc.then(|| "missing".to_string()));
    Ok(Answer {
        status,
        body_len,
        grpc_status,
    })
}

/// Writes the body as the flow-control windows allow, then the trailers.
async fn send_body(
    out: &mut SendStream<Bytes>,
    mut body: Bytes,
    trailers: Option<HeaderMap>,
) -> Result<(), Failure> {
    let write_error = |e: h2::Error| Failure::new(FailureKind::WriteError, e);
    while !body.is_empty() {
        out.reserve_capacity(body.len());
        let granted = std::future::poll_fn(|cx| out.poll_capacity(cx)).await;
        let n = match granted {
            Some(Ok(n)) => n.min(body.len()),
            Some(Err(e)) => return Err(write_error(e)),
            None => {
                let why = "the stream ended before the request's body was sent";
                return Err(Failure::new(FailureKind::WriteError, why));
            }
        };
        if n == 0 {
            continue;
        }
        let chunk = body.split_to(n);
        let last = body.is_empty() && trailers.is_none();
        out.send_data(chunk, last).map_err(write_error)?;
    }
    if let Some(trailers) = trailers {
        out.send_trailers(trailers).map_err(write_error)?;
    }
    Ok(())
}

fn grpc_status(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("grpc-status")?;
    Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
}

/// An h2 error: the connection went away, or the session broke (h2 says how: a GOAWAY or
/// RST_STREAM and its reason, or the frame it could not take).
fn failure_of(e: &h2::Error) -> Failure {
    let kind = if e.is_io() {
        FailureKind::ClosedBeforeResponse
    } else {
        FailureKind::Http2Error
    };
    Failure::new(kind, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http1_upgrade_request_becomes_an_http2_request_without_its_connection_headers() {
        let bytes =
            b"GET /a?x=1 HTTP/1.1\r\nHost: svc:8080\r\nConnection: Upgrade, HTTP2-Settings\r\n\
            Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nAccept: */*\r\n\r\n";
        let request =
            h2_request(bytes, HttpVersion::Http11, 0, "127.0.0.1:1", false).expect("request");
        assert_eq!(request.head.method(), Method::GET);
        assert_eq!(request.head.uri().to_string(), "http://svc:8080/a?x=1");
        let names: Vec<&str> = request.head.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["accept"]);
        assert!(request.body.is_empty() && request.trailers.is_none());
    }

    #[test]
    fn an_http2_request_keeps_its_fields_and_trailers_and_takes_a_host_rewrite_as_authority() {
        let stored = b"POST /pkg.S/M HTTP/2\r\n:scheme: http\r\n:authority: svc:50051\r\n\
            content-type: application/grpc\r\nte: trailers\r\n\r\nBODYx-t: 1\r\n\r\n";
        let request = h2_request(stored, HttpVersion::Http2, 4, "h:1", false).expect("request");
        assert_eq!(request.head.uri().to_string(), "http://svc:50051/pkg.S/M");
        let names: Vec<&str> = request.head.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "te"]);
        assert_eq!(&request.body[..], b"BODY");
        let trailers = request.trailers.expect("trailers");
        assert_eq!(trailers.get("x-t").map(|v| v.as_bytes()), Some(&b"1"[..]));
        // As `--host other:1` leaves it: a Host line at the end of the head.
        let rewritten = b"POST /pkg.S/M HTTP/2\r\n:scheme: http\r\n:authority: svc:50051\r\n\
            content-type: application/grpc\r\nHost: other:1\r\n\r\nBODY";
        let request = h2_request(rewritten, HttpVersion::Http2, 4, "h:1", false).expect("request");
        assert_eq!(
            request.head.uri().authority().map(|a| a.as_str()),
            Some("other:1")
        );
        // Replayed inside TLS, the scheme is https whatever was recorded.
        let request = h2_request(stored, HttpVersion::Http2, 4, "h:1", true).expect("request");
        assert_eq!(request.head.uri().to_string(), "https://svc:50051/pkg.S/M");
    }

    #[test]
    fn bytes_that_are_no_request_are_not_sent() {
        assert!(h2_request(b"garbage", HttpVersion::Http11, 0, "h:1", false).is_none());
        assert!(h2_request(b"garbage", HttpVersion::Http2, 0, "h:1", false).is_none());
    }
}
