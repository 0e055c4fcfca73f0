//! Thread hygiene: threads are named after the connection and their role, and after `shutdown`
//! or `Drop` — mid-transfer, with a peer that never answers the close, with an application that
//! stopped consuming events — the process's thread count is back where it was.
//!
//! One test function runs every scenario in sequence so that no other test's threads disturb the
//! count (each file under `tests/` is its own process).

mod support;

use std::io::Write;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{
    Pki, TestServer, accept_ws, echo_server, frame, raw_accept, read_client_frame, thread_count,
    thread_names,
};
use syncws::{Client, Frame};
use tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

fn back_to(baseline: usize, scenario: &str) {
    support::wait_until(
        &format!("thread count back to {baseline} after {scenario}"),
        WAIT,
        || (thread_count() == baseline).then_some(()),
    );
}

fn named_threads_and_clean_shutdown(baseline: usize) {
    let pki = Pki::new("threads CA");
    for tls in [false, true] {
        let server = echo_server(tls.then(|| pki.server_config(&["localhost"])));
        let client = Client::builder(&server.url("/"))
            .name("lk")
            .add_root_certificate(pki.ca_der())
            .connect()
            .unwrap();
        client.send(Frame::text("x")).unwrap();
        client.events().recv_timeout(WAIT).unwrap();
        // A new thread takes its name when it first runs: wait for all three.
        support::wait_until("named client threads", WAIT, || {
            let names = thread_names();
            ["lk-reader", "lk-writer", "lk-coord"]
                .iter()
                .all(|role| names.iter().any(|n| n == role))
                .then_some(())
        });
        assert_eq!(
            thread_count(),
            baseline + 4,
            "3 client threads + 1 server thread"
        );
        client.shutdown(WAIT);
        server.join();
        back_to(
            baseline,
            if tls {
                "TLS shutdown"
            } else {
                "plain shutdown"
            },
        );
    }
}

fn drop_mid_transfer(baseline: usize) {
    let pki = Pki::new("threads CA");
    for tls in [false, true] {
        let server = TestServer::start(
            tls.then(|| pki.server_config(&["localhost"])),
            1,
            |_, conn| {
                // Floods the client while echoing whatever it gets, until the connection breaks.
                let mut ws = accept_ws(conn);
                let blob = vec![3u8; 32 * 1024];
                for _ in 0..100_000 {
                    if ws.send(Message::binary(blob.clone())).is_err() {
                        return;
                    }
                }
            },
        );
        let client = Client::builder(&server.url("/"))
            .add_root_certificate(pki.ca_der())
            .event_queue(8)
            .connect()
            .unwrap();
        for _ in 0..200 {
            let _ = client.try_send(Frame::binary(vec![1u8; 32 * 1024]));
        }
        client.events().recv_timeout(WAIT).unwrap();
        let started = Instant::now();
        drop(client); // mid-transfer in both directions, events not consumed
        assert!(
            started.elapsed() < WAIT,
            "drop took {:?}",
            started.elapsed()
        );
        server.join();
        back_to(baseline, "drop mid-transfer");
    }
}

fn peer_never_answers_close(baseline: usize) {
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let server = TestServer::start(None, 1, move |_, mut conn| {
        raw_accept(&mut conn, &frame(0x81, b"hi"));
        // Read the client's close but never answer it, and keep the socket open.
        let _ = read_client_frame(&mut conn);
        let _ = release_rx.recv_timeout(WAIT);
        let _ = conn.flush();
    });
    let client = Client::builder(&server.url("/")).connect().unwrap();
    client.events().recv_timeout(WAIT).unwrap();
    let started = Instant::now();
    client.shutdown(Duration::from_millis(300));
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "shutdown bounded by its timeout, took {took:?}"
    );
    release_tx.send(()).unwrap();
    server.join();
    back_to(baseline, "shutdown with a silent peer");
}

#[test]
fn no_thread_leaks() {
    let baseline = thread_count();
    named_threads_and_clean_shutdown(baseline);
    drop_mid_transfer(baseline);
    peer_never_answers_close(baseline);
}
