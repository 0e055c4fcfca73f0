//! The hub's threads: named, one per connection, and all gone after shutdown. Its own test
//! binary, so no other test's threads are counted.

mod support;

use std::net::TcpStream;
use std::time::Duration;

use support::{thread_names, wait_until};
use syncws::Data;
use syncws::hub::{Hub, HubConfig, Message};

struct Echo;

impl syncws::hub::Handler for Echo {
    fn on_message(&self, conn: &syncws::hub::Conn, message: Data<'_>) {
        let _ = conn.send(&Message::binary(message.as_bytes()));
    }
}

fn hub_threads() -> Vec<String> {
    thread_names()
        .into_iter()
        .filter(|n| n.starts_with("syncws-hub"))
        .collect()
}

#[test]
fn one_named_thread_per_connection_and_none_left_after_shutdown() {
    assert!(hub_threads().is_empty());
    let hub = Hub::bind("127.0.0.1:0", HubConfig::default(), Echo).unwrap();
    let addr = hub.local_addr();
    let mut clients: Vec<_> = (0..25)
        .map(|_| {
            let sock = TcpStream::connect(addr).unwrap();
            tungstenite::client(format!("ws://{addr}/"), sock)
                .unwrap()
                .0
        })
        .collect();
    for c in &mut clients {
        c.send(tungstenite::Message::binary(vec![1, 2, 3])).unwrap();
        assert_eq!(
            c.read().unwrap(),
            tungstenite::Message::binary(vec![1, 2, 3])
        );
    }
    // The acceptor, the flusher and one thread per connection; nothing else.
    let names = hub_threads();
    assert_eq!(names.len(), 27, "{names:?}");
    assert_eq!(
        names
            .iter()
            .filter(|n| n.starts_with("syncws-hub-conn"))
            .count(),
        25
    );
    // Clients that drop their connections: the threads end and are reaped.
    clients.truncate(5);
    wait_until(
        "20 connection threads to end",
        Duration::from_secs(10),
        || (hub_threads().len() == 7).then_some(()),
    );
    let report = hub.shutdown(Duration::from_secs(5));
    assert_eq!(report.stuck, 0);
    // Every thread is joined by now; a joined thread's task can still be listed in /proc for a
    // moment after it has exited, so the listing is read until it is empty (bounded).
    wait_until("no hub thread listed", Duration::from_secs(2), || {
        hub_threads().is_empty().then_some(())
    });
    drop(clients);
}
