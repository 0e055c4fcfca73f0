//! Parsing a `ws://` / `wss://` URL into what the connector needs.

use tungstenite::http::Uri;

use crate::error::{Error, Result};

/// Where to connect and what to ask for, taken from the URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// True for `wss://`.
    pub tls: bool,
    /// Host name or IP literal, without IPv6 brackets.
    pub host: String,
    /// Port, defaulting to 80 / 443.
    pub port: u16,
    /// Path and query for the request line (at least `/`).
    pub resource: String,
    /// Value of the `Host` header (`host` or `host:port` for non-default ports).
    pub host_header: String,
}

impl Target {
    /// Parses and checks a WebSocket URL.
    pub(crate) fn parse(url: &str) -> Result<Target> {
        let uri: Uri = url
            .parse()
            .map_err(|e| Error::Url(format!("{url:?}: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            Some(other) => {
                return Err(Error::Url(format!("scheme {other:?} is not ws or wss")));
            }
            None => {
                return Err(Error::Url(format!(
                    "{url:?} has no scheme (ws:// or wss://)"
                )));
            }
        };
        let raw_host = uri.host().filter(|h| !h.is_empty());
        let raw_host = raw_host.ok_or_else(|| Error::Url(format!("{url:?} has no host")))?;
        let default_port = if tls { 443 } else { 80 };
        // `Uri::port` silently drops a port that does not fit in u16; read it from the authority.
        let authority = uri.authority().map_or("", |a| a.as_str());
        let authority = authority.rsplit('@').next().unwrap_or(authority);
        let port = match authority.rsplit_once(':').filter(|(_, p)| !p.contains(']')) {
            None => default_port,
            Some((_, p)) => p
                .parse()
                .map_err(|_| Error::Url(format!("bad port in {url:?}")))?,
        };
        let host = raw_host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let host_header = if port == default_port {
            raw_host.to_string()
        } else {
            format!("{raw_host}:{port}")
        };
        let resource = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let resource = if resource.is_empty() { "/" } else { resource }.to_string();
        Ok(Target {
            tls,
            host,
            port,
            resource,
            host_header,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        let t = Target::parse("wss://stream.example.com/ws/v2?x=1").unwrap();
        assert_eq!(
            (t.tls, t.port, t.host.as_str()),
            (true, 443, "stream.example.com")
        );
        assert_eq!(t.resource, "/ws/v2?x=1");
        assert_eq!(t.host_header, "stream.example.com");

        let t = Target::parse("ws://127.0.0.1:9001").unwrap();
        assert_eq!((t.tls, t.port, t.resource.as_str()), (false, 9001, "/"));
        assert_eq!(t.host_header, "127.0.0.1:9001");

        let t = Target::parse("ws://[::1]:8080/a").unwrap();
        assert_eq!(
            (t.host.as_str(), t.host_header.as_str()),
            ("::1", "[::1]:8080")
        );
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "http://x/",
            "x.com/path",
            "ws://",
            "ws://host:99999/",
            "not a url",
        ] {
            assert!(matches!(Target::parse(bad), Err(Error::Url(_))), "{bad}");
        }
    }
}
