//! Starts a local WebSocket echo server, connects a syncws client to it, and shows sends,
//! receives, a ping and a close. Exits 0 when everything behaved as expected.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use syncws::{Client, CloseCode, Event, Frame};
use tungstenite::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. A tiny echo server on a free loopback port (plain tungstenite, one connection).
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("ws://{}/echo", listener.local_addr()?);
    let server = thread::Builder::new()
        .name("echo-server".into())
        .spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut ws = tungstenite::accept(stream).expect("server handshake");
            ws.send(Message::text("welcome")).expect("welcome");
            loop {
                match ws.read() {
                    Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                        ws.send(msg).expect("echo")
                    }
                    Ok(Message::Close(frame)) => {
                        println!("server: client closed with {frame:?}");
                        let _ = ws.flush();
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        println!("server: {e}");
                        break;
                    }
                }
            }
        })?;

    // 2. Connect. This blocks until the upgrade is done; three named threads now serve it.
    let client = Client::builder(&url).name("quickstart").connect()?;
    println!("client: connected to {url}");

    // 3. Send text and binary; the echoes come back as events.
    client.send(Frame::text("hello from syncws"))?;
    client.send(Frame::binary(vec![0xde, 0xad, 0xbe, 0xef]))?;
    client.ping(b"are you there?".to_vec())?;

    let timeout = Duration::from_secs(5);
    let (mut texts, mut binaries, mut pongs) = (0, 0, 0);
    while texts < 2 || binaries < 1 || pongs < 1 {
        match client.events().recv_timeout(timeout)? {
            Event::Frame {
                frame: Frame::Text(t),
                epoch,
            } => {
                println!("client: text {t:?} (epoch {epoch})");
                texts += 1;
            }
            Event::Frame {
                frame: Frame::Binary(b),
                ..
            } => {
                println!("client: binary {b:02x?}");
                binaries += 1;
            }
            Event::Pong { payload, .. } => {
                println!("client: pong {:?}", String::from_utf8_lossy(&payload));
                pongs += 1;
            }
            Event::Connected { epoch, .. } => println!("client: connection {epoch} open"),
            Event::SessionReady { epoch } => println!("client: session {epoch} ready"),
            other => return Err(format!("unexpected event {other:?}").into()),
        }
    }

    // 4. Close with a code; the Closed event says who initiated and whether it was clean.
    client.close(CloseCode::NORMAL, "bye")?;
    loop {
        if let Event::Closed { info, .. } = client.events().recv_timeout(timeout)? {
            println!(
                "client: closed by {:?} with {} {:?} (clean: {})",
                info.initiator, info.code.0, info.reason, info.clean
            );
            break;
        }
    }
    println!("client: stats {:?}", client.stats());

    // 5. Shut down: joins the reader, writer and coordinator threads.
    client.shutdown(Duration::from_secs(1));
    server.join().map_err(|_| "server thread panicked")?;
    println!("done");
    Ok(())
}
