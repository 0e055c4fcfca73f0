//! The HTTP/1.1 upgrade (RFC 6455 §4): writing the request, reading and checking the response.
//!
//! The response is read into a buffer and parsed with `httparse`; whatever follows the end of the
//! headers in that buffer is already WebSocket data (venues often send a welcome frame in the same
//! segment as the `101`) and is handed to the reader instead of being lost.

use std::io::{self, Read, Write};
use std::time::Duration;

use tungstenite::handshake::derive_accept_key;

use crate::client::target::Target;
use crate::deflate::DeflateParams;
use crate::error::{Error, MAX_RETRY_AFTER, Result};

/// Upper bound on the size of the response head.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// How much of a refusal's headers and body is kept in the error.
const EXCERPT: usize = 1024;
const MAX_HEADERS: usize = 64;
/// How much of a clamped `Retry-After` value is kept in the error.
const RAW_RETRY_AFTER: usize = 64;

/// What a successful upgrade yields.
#[derive(Debug)]
pub(crate) struct Upgraded {
    /// Bytes received after the response head: the start of the WebSocket stream.
    pub leftover: Vec<u8>,
    /// The subprotocol the server selected, if any.
    pub protocol: Option<String>,
    /// permessage-deflate, when offered and accepted.
    pub deflate: Option<DeflateParams>,
}

/// Checks a header before it is written: the name must be an HTTP token (RFC 9110 §5.1) and the
/// value may only hold visible ASCII, spaces, tabs and non-ASCII UTF-8 (`field-vchar`,
/// `obs-text`; RFC 9110 §5.5). Anything else (CR and LF above all) could end the header early
/// and smuggle a header or a request of the caller's input's choosing.
pub(crate) fn check_header(name: &str, value: &str) -> Result<()> {
    let invalid = |reason: String| Error::InvalidHeader {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("the name is empty".into()));
    }
    if let Some((at, b)) = name.bytes().enumerate().find(|&(_, b)| !is_tchar(b)) {
        return Err(invalid(format!(
            "the name has {} at offset {at}; names are HTTP tokens (letters, digits and              !#$%&'*+-.^_`|~)",
            describe(b)
        )));
    }
    let allowed = |b: u8| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80;
    if let Some((at, b)) = value.bytes().enumerate().find(|&(_, b)| !allowed(b)) {
        return Err(invalid(format!(
            "the value has {} at offset {at}, which no HTTP field value may hold",
            describe(b)
        )));
    }
    Ok(())
}

/// Checks a subprotocol: an HTTP token (RFC 6455 §4.1).
pub(crate) fn check_subprotocol(protocol: &str) -> Result<()> {
    if !protocol.is_empty() && protocol.bytes().all(is_tchar) {
        return Ok(());
    }
    Err(Error::InvalidHeader {
        name: "Sec-WebSocket-Protocol".into(),
        reason: format!("subprotocol {protocol:?} is not an HTTP token"),
    })
}

/// Checks everything [`request`] will write from the caller's input.
pub(crate) fn check_request(headers: &[(String, String)], subprotocols: &[String]) -> Result<()> {
    for (name, value) in headers {
        check_header(name, value)?;
    }
    subprotocols.iter().try_for_each(|p| check_subprotocol(p))
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte for an error message, naming the usual suspects.
fn describe(b: u8) -> String {
    match b {
        b'\r' => "a carriage return (CR, 0x0d)".into(),
        b'\n' => "a line feed (LF, 0x0a)".into(),
        0 => "a NUL byte (0x00)".into(),
        0x80.. => format!("the non-ASCII byte {b:#04x}"),
        b if b.is_ascii_graphic() => format!("the character {:?} ({b:#04x})", b as char),
        b => format!("the byte {b:#04x}"),
    }
}

/// Builds the upgrade request. The headers and subprotocols must have passed
/// [`check_request`].
pub(crate) fn request(
    target: &Target,
    key: &str,
    headers: &[(String, String)],
    subprotocols: &[String],
) -> Vec<u8> {
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n",
        target.resource, target.host_header
    );
    if !subprotocols.is_empty() {
        req.push_str(&format!(
            "Sec-WebSocket-Protocol: {}\r\n",
            subprotocols.join(", ")
        ));
    }
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Writes the request and reads the response; errors map I/O timeouts to
/// [`Error::Timeout`]`("handshake")`. Headers that fail [`check_request`] are refused before
/// anything is written.
///
/// Every read and write blocks for as long as `stream` lets it: the caller bounds the whole
/// exchange (see `connect.rs`, which arms each socket call with what is left of the deadline).
pub(crate) fn upgrade<S: Read + Write>(
    stream: &mut S,
    target: &Target,
    headers: &[(String, String)],
    subprotocols: &[String],
    deflate: Option<&DeflateParams>,
) -> Result<Upgraded> {
    check_request(headers, subprotocols)?;
    let key = tungstenite::handshake::client::generate_key();
    let mut headers = headers.to_vec();
    if let Some(offer) = deflate {
        headers.push(("Sec-WebSocket-Extensions".into(), offer.offer()));
    }
    let req = request(target, &key, &headers, subprotocols);
    stream
        .write_all(&req)
        .and_then(|()| stream.flush())
        .map_err(io_error)?;

    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).map_err(io_error)?;
        if n == 0 {
            // A network failure (server restarting, balancer dropping the flow), not a bad
            // handshake: transient, so reconnect policies retry it.
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the upgrade response was complete",
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut parsed);
        let head_len = match response.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return Err(Error::InvalidHandshake("response head too large".into()));
            }
            Err(e) => {
                return Err(Error::InvalidHandshake(format!(
                    "malformed HTTP response: {e}"
                )));
            }
        };
        let status = response.code.unwrap_or(0);
        if status != 101 {
            let mut body = buf[head_len..].to_vec();
            // Peer-supplied: only ever an upper bound on a small excerpt.
            let wanted = header_u64(response.headers, "Content-Length")
                .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
                .min(EXCERPT);
            read_body_excerpt(stream, &mut body, wanted);
            let (retry_after, retry_after_clamped_from) = retry_after(response.headers);
            return Err(Error::HandshakeRejected {
                status,
                headers: excerpt(&headers_text(response.headers)),
                body: excerpt(&String::from_utf8_lossy(&body)),
                retry_after,
                retry_after_clamped_from,
            });
        }
        let (protocol, deflate) = check_101(response.headers, &key, subprotocols, deflate)?;
        let leftover = buf[head_len..].to_vec();
        return Ok(Upgraded {
            leftover,
            protocol,
            deflate,
        });
    }
}

/// Validates the headers of a `101` response; returns the selected subprotocol and the
/// accepted permessage-deflate parameters.
fn check_101(
    headers: &[httparse::Header<'_>],
    key: &str,
    subprotocols: &[String],
    deflate: Option<&DeflateParams>,
) -> Result<(Option<String>, Option<DeflateParams>)> {
    let get = |name: &str| {
        headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let upgrade = get("Upgrade").unwrap_or_default();
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return Err(Error::InvalidHandshake(format!(
            "Upgrade header is {upgrade:?}"
        )));
    }
    let connection = get("Connection").unwrap_or_default();
    if !connection
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    {
        return Err(Error::InvalidHandshake(format!(
            "Connection header is {connection:?}"
        )));
    }
    let expected = derive_accept_key(key.as_bytes());
    match get("Sec-WebSocket-Accept") {
        Some(accept) if accept == expected => {}
        other => {
            return Err(Error::InvalidHandshake(format!(
                "Sec-WebSocket-Accept is {other:?}, expected {expected:?}"
            )));
        }
    }
    let protocol = get("Sec-WebSocket-Protocol");
    if let Some(p) = &protocol
        && !subprotocols.iter().any(|s| s == p)
    {
        return Err(Error::InvalidHandshake(format!(
            "server chose unrequested subprotocol {p:?}"
        )));
    }
    let extensions = match (get("Sec-WebSocket-Extensions"), deflate) {
        (None, _) => None,
        (Some(answer), Some(offer)) => {
            Some(DeflateParams::accept(&answer, offer).map_err(|e| {
                Error::InvalidHandshake(format!("server's permessage-deflate answer: {e}"))
            })?)
        }
        (Some(_), None) => {
            return Err(Error::InvalidHandshake(
                "server enabled an extension we did not offer".into(),
            ));
        }
    };
    Ok((protocol, extensions))
}

/// A numeric header value (`Content-Length`).
fn header_u64(headers: &[httparse::Header<'_>], name: &str) -> Option<u64> {
    let h = headers.iter().find(|h| h.name.eq_ignore_ascii_case(name))?;
    std::str::from_utf8(h.value).ok()?.trim().parse().ok()
}

/// The `Retry-After` delay in seconds (RFC 9110 §10.2.3), clamped to [`MAX_RETRY_AFTER`]; the
/// second value is the raw header when it was clamped. Any run of digits is a number of seconds,
/// however long (one too large for a `u64` is clamped too). An HTTP-date is not interpreted.
fn retry_after(headers: &[httparse::Header<'_>]) -> (Option<Duration>, Option<String>) {
    let Some(h) = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("Retry-After"))
    else {
        return (None, None);
    };
    let Ok(text) = std::str::from_utf8(h.value) else {
        return (None, None);
    };
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return (None, None);
    }
    // Only digits: parsing fails on overflow alone.
    let secs = text.parse::<u64>().unwrap_or(u64::MAX);
    if secs > MAX_RETRY_AFTER.as_secs() {
        let raw = crate::codec::truncate_utf8(text, RAW_RETRY_AFTER).to_string();
        log::debug!("server asked to retry after {raw} s; clamped to {MAX_RETRY_AFTER:?}");
        return (Some(MAX_RETRY_AFTER), Some(raw));
    }
    (Some(Duration::from_secs(secs)), None)
}

/// Best effort: read up to `wanted` body bytes for the error message; failures are ignored
/// because the refusal itself is the error being reported.
fn read_body_excerpt<S: Read>(stream: &mut S, body: &mut Vec<u8>, wanted: usize) {
    let mut chunk = [0u8; 1024];
    while body.len() < wanted {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
}

fn headers_text(headers: &[httparse::Header<'_>]) -> String {
    headers
        .iter()
        .map(|h| format!("{}: {}", h.name, String::from_utf8_lossy(h.value)))
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn excerpt(s: &str) -> String {
    crate::codec::truncate_utf8(s, EXCERPT).to_string()
}

pub(crate) fn io_error(e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout("handshake"),
        _ => crate::error::from_io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A fake peer: reads are served from `input`, writes are recorded.
    struct Fake {
        input: Cursor<Vec<u8>>,
        written: Vec<u8>,
    }

    impl Read for Fake {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Fake {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn target() -> Target {
        Target::parse("ws://example.com:8080/feed?x=1").unwrap()
    }

    #[test]
    fn request_carries_required_and_custom_headers() {
        let req = request(
            &target(),
            "dGhlIHNhbXBsZSBub25jZQ==",
            &[("Authorization".into(), "Bearer t".into())],
            &["v1.json".into(), "v2.json".into()],
        );
        let req = String::from_utf8(req).unwrap();
        assert!(req.starts_with("GET /feed?x=1 HTTP/1.1\r\nHost: example.com:8080\r\n"));
        assert!(req.contains("Sec-WebSocket-Protocol: v1.json, v2.json\r\n"));
        assert!(req.contains("Authorization: Bearer t\r\n"));
        assert!(req.ends_with("\r\n\r\n"));
    }

    #[test]
    fn refusal_carries_status_headers_and_body() {
        let mut fake = Fake {
            input: Cursor::new(
                b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 12\r\nX-Why: token\r\nRetry-After: 30\r\n\r\nbad token!!\n"
                    .to_vec(),
            ),
            written: Vec::new(),
        };
        match upgrade(&mut fake, &target(), &[], &[], None) {
            Err(Error::HandshakeRejected {
                status,
                headers,
                body,
                retry_after,
                retry_after_clamped_from,
            }) => {
                assert_eq!(retry_after, Some(Duration::from_secs(30)));
                assert_eq!(retry_after_clamped_from, None);
                assert_eq!(status, 401);
                assert!(headers.contains("X-Why: token"));
                assert_eq!(body, "bad token!!\n");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    fn refusal(head: &str) -> Error {
        let mut fake = Fake {
            input: Cursor::new(head.as_bytes().to_vec()),
            written: Vec::new(),
        };
        upgrade(&mut fake, &target(), &[], &[], None).unwrap_err()
    }

    #[test]
    fn retry_after_overflow_is_clamped_and_reported_as_clamped() {
        // Finding 1: `Retry-After: 18446744073709551615` became a `Duration` that overflowed
        // the coordinator's clock.
        for raw in ["18446744073709551615", "99999999999999999999999999", "3601"] {
            let head = format!("HTTP/1.1 503 Busy\r\nRetry-After: {raw}\r\n\r\n");
            match refusal(&head) {
                Error::HandshakeRejected {
                    retry_after,
                    retry_after_clamped_from,
                    ..
                } => {
                    assert_eq!(retry_after, Some(MAX_RETRY_AFTER));
                    assert_eq!(retry_after_clamped_from.as_deref(), Some(raw));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let at_ceiling = format!(
            "HTTP/1.1 503 Busy\r\nRetry-After: {}\r\n\r\n",
            MAX_RETRY_AFTER.as_secs()
        );
        assert!(matches!(
            refusal(&at_ceiling),
            Error::HandshakeRejected { retry_after: Some(d), retry_after_clamped_from: None, .. }
                if d == MAX_RETRY_AFTER
        ));
        for odd in ["-5", "+5", "Wed, 21 Oct 2015 07:28:00 GMT", ""] {
            let head = format!("HTTP/1.1 503 Busy\r\nRetry-After: {odd}\r\n\r\n");
            assert!(matches!(
                refusal(&head),
                Error::HandshakeRejected {
                    retry_after: None,
                    retry_after_clamped_from: None,
                    ..
                }
            ));
        }
    }

    #[test]
    fn huge_content_length_reads_only_a_bounded_excerpt() {
        let head = "HTTP/1.1 500 Oops\r\nContent-Length: 18446744073709551615\r\n\r\nshort";
        match refusal(head) {
            Error::HandshakeRejected { body, .. } => assert_eq!(body, "short"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn header_values_are_validated_and_refused_unwritten() {
        // Finding 4: only CR, LF and NUL were refused, and only in the builder.
        let bad: &[(&str, &str)] = &[
            ("X-A", "v\r\nX-Evil: 1"),
            ("X-A", "v\nX-Evil: 1"),
            ("X-A", "v\rX"),
            ("X-A", "nul\0"),
            ("X-A", "bell\x07"),
            ("X-A", "del\x7f"),
            ("X-A", "esc\x1b[0m"),
            ("", "v"),
            ("X A", "v"),
            ("X-A:", "v"),
            ("X-A\r\nX-Evil", "v"),
            ("Ünï", "v"),
        ];
        for (name, value) in bad {
            assert!(
                matches!(check_header(name, value), Err(Error::InvalidHeader { .. })),
                "{name:?}: {value:?}"
            );
            let mut fake = Fake {
                input: Cursor::new(Vec::new()),
                written: Vec::new(),
            };
            let headers = [(name.to_string(), value.to_string())];
            let result = upgrade(&mut fake, &target(), &headers, &[], None);
            assert!(
                matches!(result, Err(Error::InvalidHeader { .. })),
                "{result:?}"
            );
            assert!(fake.written.is_empty(), "{name:?}: bytes were written");
        }
        for (name, value) in [
            ("Authorization", "Bearer a.b-c_d~e+f/g="),
            ("X-Tab", "a\tb c"),
            ("X-Utf8", "caf\u{e9}"),
            ("X-Empty", ""),
        ] {
            assert!(check_header(name, value).is_ok(), "{name:?}: {value:?}");
        }
        assert!(check_subprotocol("v2.json").is_ok());
        for bad in ["", "a b", "v1\r\nX-Evil: 1", "a,b"] {
            assert!(check_subprotocol(bad).is_err(), "{bad:?}");
        }
        // The message names the byte, never the value (it may be a secret).
        let err = check_header("Authorization", "Bearer s3cret\r\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("carriage return") && !text.contains("s3cret"),
            "{text}"
        );
    }

    #[test]
    fn wrong_accept_key_is_invalid() {
        let mut fake = Fake {
            input: Cursor::new(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Accept: nope\r\n\r\n"
                    .to_vec(),
            ),
            written: Vec::new(),
        };
        assert!(matches!(
            upgrade(&mut fake, &target(), &[], &[], None),
            Err(Error::InvalidHandshake(_))
        ));
    }
}
