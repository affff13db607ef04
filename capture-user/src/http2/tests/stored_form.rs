//! Round trips of the stored form.

use super::super::{Field, parse_stored, render_stored};

#[test]
fn request_round_trip() {
    let pseudo: Vec<Field> = vec![
        (b":method", b"POST"),
        (b":path", b"/a b?c"),
        (b":scheme", b"http"),
        (b":authority", b"h"),
    ];
    let headers: Vec<Field> = vec![(b"x", b" spaced "), (b"empty", b""), (b"colon", b": odd")];
    let trailers: Vec<Field> = vec![(b"grpc-status", b"0")];
    let bytes = render_stored(&pseudo, &headers, b"body\r\n\r\n", Some(&trailers)).unwrap();
    let stored = parse_stored(&bytes, 8).unwrap();
    assert_eq!(stored.start_line, b"POST /a b?c HTTP/2");
    assert_eq!(stored.pseudo, pseudo);
    assert_eq!(stored.headers, headers);
    assert_eq!(stored.body, b"body\r\n\r\n");
    assert_eq!(stored.trailers, trailers);
}

#[test]
fn response_round_trip_without_trailers() {
    let pseudo: Vec<Field> = vec![(b":status", b"404")];
    let bytes = render_stored(&pseudo, &[], b"", None).unwrap();
    assert_eq!(bytes, b"HTTP/2 404\r\n\r\n");
    let stored = parse_stored(&bytes, 0).unwrap();
    assert_eq!(stored.pseudo, pseudo);
    assert!(stored.headers.is_empty() && stored.trailers.is_empty());
}

#[test]
fn connect_uses_authority() {
    let pseudo: Vec<Field> = vec![
        (b":method", b"CONNECT"),
        (b":authority", b"example.com:443"),
    ];
    let bytes = render_stored(&pseudo, &[], b"", None).unwrap();
    assert!(
        bytes.starts_with(b"CONNECT example.com:443 HTTP/2\r\n:authority: example.com:443\r\n")
    );
    assert_eq!(parse_stored(&bytes, 0).unwrap().pseudo, pseudo);
    let extended: Vec<Field> = vec![
        (b":method", b"CONNECT"),
        (b":path", b"/chat"),
        (b":protocol", b"websocket"),
        (b":authority", b"h"),
    ];
    let bytes = render_stored(&extended, &[], b"", None).unwrap();
    assert_eq!(parse_stored(&bytes, 0).unwrap().pseudo, extended);
}

#[test]
fn cut_body_parses_without_trailers() {
    let pseudo: Vec<Field> = vec![(b":status", b"200")];
    let bytes = render_stored(&pseudo, &[], b"abc", None).unwrap();
    let stored = parse_stored(&bytes, 1000).unwrap();
    assert_eq!(stored.body, b"abc");
}

#[test]
fn invalid_inputs() {
    assert!(render_stored(&[(b":path", b"/")], &[], b"", None).is_none());
    assert!(render_stored(&[(b":status", b"20")], &[], b"", None).is_none());
    assert!(render_stored(&[(b":status", b"099")], &[], b"", None).is_none());
    assert!(
        render_stored(
            &[(b":method", b"GET"), (b":method", b"GET"), (b":path", b"/")],
            &[],
            b"",
            None
        )
        .is_none()
    );
    assert!(parse_stored(b"garbage", 0).is_none());
    assert!(parse_stored(b"HTTP/2 200\r\nno-colon\r\n\r\n", 0).is_none());
    assert!(parse_stored(b"HTTP/2 200\r\n\r\nbodyx: y\r\n", 4).is_none());
}
