//! The two fan-out servers, speaking the same tiny protocol: a client's first message is the
//! text `sub` (answered `ok`, then it receives every publication) or `pub` (answered `ok`, then
//! every binary message it sends is published to all subscribers).
//!
//! - **syncws**: the hub, one room, [`HubHandle::publish`] from the publisher's `on_message`.
//! - **tokio**: tokio-tungstenite on the multi-thread runtime with a `tokio::sync::broadcast`
//!   channel, one task per connection: the way its users write a broadcast server.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use futures_util::{SinkExt, StreamExt};
use syncws::Data;
use syncws::hub::{Conn, Handler, Hub, HubConfig, Message, Publication};
use tokio::sync::broadcast;
use tungstenite::Message as TMessage;

/// The syncws side.
struct Fanout;

impl Handler for Fanout {
    fn on_message(&self, conn: &Conn, message: Data<'_>) {
        match message {
            Data::Text("sub") => {
                let _ = conn
                    .hub()
                    .join(conn, "bench", None, |_| Some(Message::text("ok")));
            }
            Data::Text("pub") => {
                let _ = conn.send(&Message::text("ok"));
            }
            Data::Binary(payload) => {
                let _ = conn.hub().publish("bench", payload.to_vec());
            }
            Data::Text(_) => {}
        }
    }

    fn encode(&self, publication: &Publication) -> Message {
        Message::binary(&publication.data)
    }
}

fn config() -> HubConfig {
    HubConfig {
        max_connections: 50_000,
        max_per_ip: 50_000,
        ping_interval: None,
        rate_limit: None,
        ..HubConfig::default()
    }
}

pub fn start_syncws() -> Hub {
    Hub::bind("127.0.0.1:0", config(), Fanout).expect("hub binds")
}

/// A hub node sharing its rooms through the Redis at `url`.
pub fn start_redis_node(url: &str) -> Hub {
    use syncws::hub::redis::{RedisBroker, RedisConfig};
    let broker = RedisBroker::new(RedisConfig {
        url: url.to_string(),
        ..RedisConfig::default()
    })
    .expect("redis broker");
    Hub::bind_with_broker("127.0.0.1:0", config(), Fanout, std::sync::Arc::new(broker))
        .expect("hub binds")
}

/// A running tokio broadcast server (its runtime runs until the process ends).
pub struct TokioServer {
    pub addr: SocketAddr,
    _thread: JoinHandle<()>,
}

pub fn start_tokio() -> TokioServer {
    let (tx, rx) = mpsc::channel();
    let thread = thread::Builder::new()
        .name("tokio-fanout".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_io()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let (fanout, _) = broadcast::channel::<TMessage>(1024);
                loop {
                    let Ok((sock, _)) = listener.accept().await else {
                        continue;
                    };
                    let fanout = fanout.clone();
                    tokio::spawn(async move {
                        let _ = sock.set_nodelay(true);
                        if let Ok(ws) = tokio_tungstenite::accept_async(sock).await {
                            serve(ws, fanout).await;
                        }
                    });
                }
            });
        })
        .expect("tokio server thread");
    TokioServer {
        addr: rx.recv().expect("tokio server address"),
        _thread: thread,
    }
}

async fn serve(
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    fanout: broadcast::Sender<TMessage>,
) {
    let (mut write, mut read) = ws.split();
    let Some(Ok(TMessage::Text(role))) = read.next().await else {
        return;
    };
    if write.send(TMessage::text("ok")).await.is_err() {
        return;
    }
    if role.as_str() == "pub" {
        while let Some(Ok(m)) = read.next().await {
            if m.is_binary() {
                let _ = fanout.send(m);
            }
        }
        return;
    }
    let mut rx = fanout.subscribe();
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Ok(m) => {
                    if write.send(m).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            m = read.next() => match m {
                Some(Ok(TMessage::Close(_))) | Some(Err(_)) | None => return,
                _ => {}
            },
        }
    }
}
