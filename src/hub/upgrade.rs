//! The server side of the opening handshake (RFC 6455 §4.2): TLS, reading the request under
//! the absolute deadline, the checks, admission, and the `101` or the refusal.
//!
//! Everything here runs on the new connection's own thread, so a slow client or a slow
//! admission callback holds up nobody else. The request head is bounded
//! ([`max_request_head`](super::HubConfig::max_request_head), `431` past it); bytes the client sent
//! after its request (a first frame in the same segment) are kept for the connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use rustls::{Connection, ServerConnection};
use tungstenite::handshake::derive_accept_key;

use crate::deflate::DeflateParams;
use crate::guard;
use crate::handshake::check_header;
use crate::hub::HubShared;
use crate::hub::conn::Identity;
use crate::hub::handler::{Admission, Request, Response};
use crate::opening::OpeningIo;
use crate::transport::Stream;

const MAX_HEADERS: usize = 64;

/// A connection that passed the handshake.
pub(crate) struct Opened {
    pub stream: Stream,
    pub leftover: Vec<u8>,
    pub identity: Identity,
    pub path: String,
    pub protocol: Option<String>,
    /// permessage-deflate, when the client offered it and the hub accepts it.
    pub deflate: Option<DeflateParams>,
}

/// Runs the opening handshake. `None` when the connection was answered with something other
/// than a `101` (a refusal, a page) or failed; the caller then drops it.
pub(crate) fn open(
    hub: &HubShared,
    sock: Arc<TcpStream>,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<Opened> {
    let config = &hub.config;
    if let Err(e) = sock.set_nodelay(config.nodelay) {
        log::debug!("{peer}: TCP_NODELAY failed: {e}");
    }
    let tls = match &config.tls {
        Some(tls) => match ServerConnection::new(tls.clone()) {
            Ok(c) => Some(Connection::Server(c)),
            Err(e) => {
                log::warn!("{peer}: TLS session not created: {e}");
                return None;
            }
        },
        None => None,
    };
    let mut stream = Stream {
        sock,
        tls,
        under: None,
    };
    let mut io = OpeningIo::new(&mut stream, deadline);
    if let Err(e) = io.complete_tls_handshake() {
        log::debug!("{peer}: TLS handshake failed: {e}");
        hub.counters.handshake_failures.fetch_add(1, Relaxed);
        return None;
    }
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = match io.read(&mut chunk) {
            Ok(0) => {
                log::debug!("{peer}: closed during the request");
                hub.counters.handshake_failures.fetch_add(1, Relaxed);
                return None;
            }
            Ok(n) => n,
            Err(e) => {
                log::debug!("{peer}: request not received: {e}");
                hub.counters.handshake_failures.fetch_add(1, Relaxed);
                return None;
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        let head_len = match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) if len <= config.max_request_head => len,
            Ok(httparse::Status::Partial) if buf.len() <= config.max_request_head => continue,
            Ok(_) => {
                hub.counters.refused_admission.fetch_add(1, Relaxed);
                respond(&mut io, &Response::new(431, "request head too large"));
                return None;
            }
            Err(e) => {
                hub.counters.handshake_failures.fetch_add(1, Relaxed);
                respond(
                    &mut io,
                    &Response::new(400, format!("malformed request: {e}")),
                );
                return None;
            }
        };
        let request = Request {
            peer,
            method: parsed.method.unwrap_or(""),
            target: parsed.path.unwrap_or(""),
            headers: parsed.headers,
            upgrade: is_upgrade(parsed.headers),
        };
        let verdict = match check_upgrade(hub, &request) {
            Err(refusal) => Admission::Respond(refusal),
            Ok(()) => match guard::catch("admission", || hub.handler.admit(&request)) {
                Ok(verdict) => verdict,
                Err(_) => {
                    hub.counters.callback_panics.fetch_add(1, Relaxed);
                    Admission::Respond(Response::new(500, "internal error"))
                }
            },
        };
        let identity = match verdict {
            Admission::Respond(response) => {
                if request.upgrade || response.status >= 400 {
                    hub.counters.refused_admission.fetch_add(1, Relaxed);
                }
                respond(&mut io, &response);
                return None;
            }
            Admission::Accept(_) if !request.upgrade => {
                respond(
                    &mut io,
                    &Response::new(426, "this resource speaks WebSocket only")
                        .header("Upgrade", "websocket"),
                );
                return None;
            }
            Admission::Accept(identity) => identity,
        };
        let protocol = choose_protocol(
            &config.subprotocols,
            request.header("Sec-WebSocket-Protocol"),
        );
        let key = request.header("Sec-WebSocket-Key").unwrap_or("");
        let mut head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
            derive_accept_key(key.as_bytes())
        );
        if let Some(p) = &protocol {
            head.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
        }
        let deflate = if config.deflate {
            request
                .header("Sec-WebSocket-Extensions")
                .and_then(crate::deflate::answer)
        } else {
            None
        };
        if let Some((_, reply)) = &deflate {
            head.push_str(&format!("Sec-WebSocket-Extensions: {reply}\r\n"));
        }
        head.push_str("\r\n");
        let path = request.path().to_string();
        if let Err(e) = io.write_all(head.as_bytes()).and_then(|()| io.flush()) {
            log::debug!("{peer}: 101 not sent: {e}");
            hub.counters.handshake_failures.fetch_add(1, Relaxed);
            return None;
        }
        let leftover = buf[head_len..].to_vec();
        return Some(Opened {
            stream,
            leftover,
            identity,
            path,
            protocol,
            deflate: deflate.map(|(p, _)| p),
        });
    }
}

/// True when the headers ask for a WebSocket upgrade.
fn is_upgrade(headers: &[httparse::Header<'_>]) -> bool {
    let has_token = |name: &str, token: &str| {
        headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case(name)
                && std::str::from_utf8(h.value)
                    .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has_token("Upgrade", "websocket") && has_token("Connection", "upgrade")
}

/// The checks of RFC 6455 §4.2.1 and the origin allow-list; the refusal to send if one fails.
fn check_upgrade(hub: &HubShared, request: &Request<'_>) -> Result<(), Response> {
    if !request.upgrade {
        return Ok(());
    }
    if request.method != "GET" {
        return Err(Response::new(405, "an upgrade must be a GET").header("Allow", "GET"));
    }
    if request.header("Sec-WebSocket-Version") != Some("13") {
        return Err(
            Response::new(426, "WebSocket version 13 only").header("Sec-WebSocket-Version", "13")
        );
    }
    // A base64-encoded 16-byte value is 24 characters ending in "==".
    let key_ok = request.header("Sec-WebSocket-Key").is_some_and(|k| {
        k.len() == 24
            && k.ends_with("==")
            && k[..22]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    });
    if !key_ok {
        return Err(Response::new(400, "missing or malformed Sec-WebSocket-Key"));
    }
    if let Some(allowed) = &hub.config.allowed_origins {
        let origin = request.header("Origin");
        if !origin.is_some_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o))) {
            return Err(Response::new(403, "origin not allowed"));
        }
    }
    Ok(())
}

/// The first of our subprotocols (in our order of preference) that the client offers.
fn choose_protocol(ours: &[String], offered: Option<&str>) -> Option<String> {
    let offered = offered?;
    ours.iter()
        .find(|p| offered.split(',').any(|o| o.trim() == p.as_str()))
        .cloned()
}

/// Writes an HTTP response and half-closes; failures are only logged (the client is gone).
pub(crate) fn respond(io: &mut impl Write, response: &Response) {
    let bytes = response_bytes(response);
    if let Err(e) = io.write_all(&bytes).and_then(|()| io.flush()) {
        log::debug!("response {} not sent: {e}", response.status);
    }
}

/// The bytes of a response (headers that could not be sent safely are left out, logged).
pub(crate) fn response_bytes(response: &Response) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        reason(response.status),
        response.body.len()
    );
    for (name, value) in &response.headers {
        match check_header(name, value) {
            Ok(()) => head.push_str(&format!("{name}: {value}\r\n")),
            Err(e) => log::warn!("response header left out: {e}"),
        }
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&response.body);
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_our_protocols_that_the_client_offers_wins() {
        let ours = vec!["v2".to_string(), "v1".to_string()];
        assert_eq!(choose_protocol(&ours, Some("v1, v2")), Some("v2".into()));
        assert_eq!(choose_protocol(&ours, Some("v1")), Some("v1".into()));
        assert_eq!(choose_protocol(&ours, Some("v3")), None);
        assert_eq!(choose_protocol(&ours, None), None);
    }

    #[test]
    fn a_response_leaves_out_headers_that_could_smuggle() {
        let r = Response::new(401, "no").header("X-Bad", "a\r\nSet-Cookie: x");
        let text = String::from_utf8(response_bytes(&r)).unwrap();
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n"));
        assert!(!text.contains("Set-Cookie"));
        assert!(text.ends_with("\r\n\r\nno"));
    }
}
