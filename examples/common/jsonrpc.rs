//! The client half of the Deribit-style JSON-RPC 2.0 dialect (see `venue.rs` for the server
//! half): a syncws [`Endpoint`] that authenticates and subscribes, request builders for orders,
//! and an [`Ingress`] that decodes subscription notifications on the reader thread.
//!
//! Request ids: the caller owns ids below [`SESSION_ID_BASE`] (orders); the endpoint numbers its
//! own session requests (`public/auth`, `public/subscribe`, `public/unsubscribe`) from
//! [`SESSION_ID_BASE`] up, so an answer's id alone says whether it belongs to the session or is a
//! [`Reply::Response`] to an order.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use syncws::{
    Data, Endpoint, Frame, Ingress, Outcome, Precheck, Reply, Request, Response, Verdict,
};

/// First id the endpoint uses for its own requests; order ids must stay below it.
pub const SESSION_ID_BASE: u64 = 1 << 52;

/// The venue dialect as a syncws [`Endpoint`].
#[derive(Debug)]
pub struct JsonRpc {
    credentials: Option<(String, String)>,
    next_id: u64,
    /// Ids of `public/auth` requests sent on the current connection.
    auth: HashSet<u64>,
    /// Ids of `public/subscribe` requests sent on the current connection, with their channel.
    subscribe: HashMap<u64, String>,
}

impl JsonRpc {
    /// A public session: no authentication, subscriptions only.
    pub fn public() -> JsonRpc {
        JsonRpc {
            credentials: None,
            next_id: SESSION_ID_BASE,
            auth: HashSet::new(),
            subscribe: HashMap::new(),
        }
    }

    /// A private session: `public/auth` with client credentials first on every connection, and
    /// subscriptions only once it succeeded.
    pub fn private(client_id: &str, client_secret: &str) -> JsonRpc {
        JsonRpc {
            credentials: Some((client_id.to_string(), client_secret.to_string())),
            ..JsonRpc::public()
        }
    }

    fn session_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// The text of a JSON-RPC request.
pub fn request_text(id: u64, method: &str, params: &Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
}

/// A fingerprint of a request's payload: a hash of its method and params (serde_json keeps
/// object keys sorted, so equal params give equal text).
pub fn fingerprint(method: &str, params: &Value) -> u64 {
    let mut h = DefaultHasher::new();
    method.hash(&mut h);
    params.to_string().hash(&mut h);
    h.finish()
}

/// A [`Request`] for `method` with `params` and JSON-RPC id `id` (mode `Confirmed`, 5 s).
pub fn rpc_request(id: u64, method: &str, params: &Value) -> Request {
    assert!(
        id < SESSION_ID_BASE,
        "order ids must stay below SESSION_ID_BASE"
    );
    Request::new(
        id,
        fingerprint(method, params),
        Frame::text(request_text(id, method, params)),
    )
}

/// Buy or sell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// `private/buy`.
    Buy,
    /// `private/sell`.
    Sell,
}

/// A limit order.
#[derive(Clone, Debug)]
pub struct Order {
    /// Buy or sell.
    pub side: Side,
    /// For example `BTC-PERPETUAL`.
    pub instrument: String,
    /// Contracts (USD for inverse perpetuals).
    pub amount: f64,
    /// Limit price.
    pub price: f64,
    /// Free-text label.
    pub label: String,
}

impl Order {
    /// The method and params of this order.
    pub fn method_params(&self) -> (&'static str, Value) {
        let method = match self.side {
            Side::Buy => "private/buy",
            Side::Sell => "private/sell",
        };
        let params = json!({
            "instrument_name": self.instrument,
            "amount": self.amount,
            "type": "limit",
            "price": self.price,
            "post_only": true,
            "label": self.label,
        });
        (method, params)
    }

    /// The [`Request`] placing this order under JSON-RPC id `id`.
    pub fn request(&self, id: u64) -> Request {
        let (method, params) = self.method_params();
        rpc_request(id, method, &params)
    }
}

/// A small test order: `side` 10 BTC-PERPETUAL at a price that depends on `n`.
pub fn sample_order(n: u64) -> Order {
    Order {
        side: if n.is_multiple_of(2) {
            Side::Sell
        } else {
            Side::Buy
        },
        instrument: "BTC-PERPETUAL".into(),
        amount: 10.0,
        price: 30_000.0 + (n % 100) as f64,
        label: format!("syncws-{n}"),
    }
}

/// The name of an outcome's variant (`Confirmed`, `NotDelivered`, ...).
pub fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Confirmed { .. } => "Confirmed",
        Outcome::Sent => "Sent",
        Outcome::NotDelivered(_) => "NotDelivered",
        Outcome::Unconfirmed(_) => "Unconfirmed",
        Outcome::EndpointRejected { .. } => "EndpointRejected",
        Outcome::PayloadMismatch => "PayloadMismatch",
        Outcome::TooManyPending => "TooManyPending",
        _ => "Other",
    }
}

/// `"id":` somewhere in the message: a byte search, no parsing, on the reader thread.
fn has_id(bytes: &[u8]) -> bool {
    bytes.windows(5).any(|w| w == b"\"id\":")
}

fn error_message(e: &Value) -> String {
    let message = e.get("message").and_then(Value::as_str).unwrap_or("error");
    match e.get("code").and_then(Value::as_i64) {
        Some(code) => format!("{message} ({code})"),
        None => message.to_string(),
    }
}

impl Endpoint for JsonRpc {
    fn on_open(&mut self, _epoch: u64) -> Vec<Frame> {
        // Answers to the previous connection's session requests will never come.
        self.auth.clear();
        self.subscribe.clear();
        let Some((client_id, secret)) = self.credentials.clone() else {
            return Vec::new();
        };
        let id = self.session_id();
        self.auth.insert(id);
        let params = json!({
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": secret,
        });
        vec![Frame::text(request_text(id, "public/auth", &params))]
    }

    fn auth_gated(&self) -> bool {
        self.credentials.is_some()
    }

    fn subscribe(&mut self, topic: &str) -> Option<Frame> {
        let id = self.session_id();
        self.subscribe.insert(id, topic.to_string());
        let params = json!({"channels": [topic]});
        Some(Frame::text(request_text(id, "public/subscribe", &params)))
    }

    fn unsubscribe(&mut self, topic: &str) -> Option<Frame> {
        let id = self.session_id();
        let params = json!({"channels": [topic]});
        Some(Frame::text(request_text(id, "public/unsubscribe", &params)))
    }

    fn precheck(&self) -> Option<Precheck> {
        Some(Arc::new(|d: Data<'_>| has_id(d.as_bytes())))
    }

    fn parse_reply(&mut self, msg: Data<'_>) -> Option<Reply> {
        let Data::Text(text) = msg else { return None };
        let v: Value = serde_json::from_str(text).ok()?;
        let id = v.get("id")?.as_u64()?;
        let answer = match (v.get("result"), v.get("error")) {
            (Some(result), _) => Ok(result),
            (None, Some(error)) => Err(error),
            (None, None) => return None,
        };
        if self.auth.remove(&id) {
            return Some(match answer {
                Ok(_) => Reply::AuthOk,
                Err(e) => Reply::AuthFailed(error_message(e)),
            });
        }
        if let Some(topic) = self.subscribe.remove(&id) {
            return Some(match answer {
                Ok(r)
                    if r.as_array()
                        .is_some_and(|a| a.iter().any(|c| c.as_str() == Some(topic.as_str()))) =>
                {
                    Reply::Subscribed(topic)
                }
                Ok(_) => Reply::SubscribeRejected {
                    topic,
                    reason: "not in the venue's list of subscribed channels".into(),
                },
                Err(e) => Reply::SubscribeRejected {
                    topic,
                    reason: error_message(e),
                },
            });
        }
        if id >= SESSION_ID_BASE {
            return None; // An unsubscribe, or a session request of an earlier connection.
        }
        let response = match answer {
            Ok(result) => Response::Ok {
                retry_after: None,
                hint: result
                    .pointer("/order/order_id")
                    .and_then(Value::as_str)
                    .map(|o| format!("order_id={o}")),
            },
            Err(e) => Response::Err {
                message: error_message(e),
                retry_after: e
                    .pointer("/data/retry_after_ms")
                    .and_then(Value::as_u64)
                    .map(Duration::from_millis),
            },
        };
        Some(Reply::Response { id, response })
    }
}

/// A subscription notification, decoded on the reader thread.
#[derive(Clone, Debug)]
pub struct Notification {
    /// The channel, for example `ticker.BTC-PERPETUAL.100ms`.
    pub channel: String,
    /// The data.
    pub data: Value,
}

/// Emits subscription notifications; ignores everything else (answers reach the coordinator
/// through the endpoint's precheck, not through the application).
#[derive(Clone, Copy, Debug, Default)]
pub struct Notifications;

impl Ingress for Notifications {
    type Output = Notification;

    fn on_message(&mut self, msg: Data<'_>) -> Verdict<Notification> {
        let Data::Text(text) = msg else {
            return Verdict::Ignore;
        };
        if !text.contains(r#""method":"subscription""#) {
            return Verdict::Ignore;
        }
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return Verdict::Ignore;
        };
        let channel = v.pointer("/params/channel").and_then(Value::as_str);
        match (channel, v.pointer("/params/data")) {
            (Some(channel), Some(data)) => Verdict::Emit(Notification {
                channel: channel.to_string(),
                data: data.clone(),
            }),
            _ => Verdict::Ignore,
        }
    }
}
