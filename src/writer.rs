//! The writer thread: the only thread that writes to the socket.
//!
//! It blocks until the control lane or the data lane has something, then builds one batch:
//! every queued control frame first (pongs, pings, close), then data frames until the batch
//! reaches [`BATCH_BYTES`] or the data lane is empty, checking the control lane again before each
//! data frame. The batch is written with one `write_all` (one TLS encryption pass, one syscall
//! for small frames). So a pong never waits behind more than one batch of data, and many small
//! frames cost one syscall.
//!
//! After the close frame is written nothing else is: later frames are discarded and counted.
//! The thread ends when its link is released or a write fails (reported to the coordinator).

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, select};

use crate::codec::{self, OP_BINARY, OP_PING, OP_PONG, OP_TEXT};
use crate::coordinator::{Control, Input};
use crate::error::Error;
use crate::frame::Frame;
use crate::stats::Counters;
use crate::transport::WriteHalf;

/// Target size of one write batch.
pub(crate) const BATCH_BYTES: usize = 64 * 1024;

/// Masks for client frames, drawn from the crypto provider's secure RNG in blocks.
struct Masks {
    pool: [u8; 1024],
    pos: usize,
}

impl Masks {
    fn new() -> Self {
        Masks {
            pool: [0; 1024],
            pos: 1024,
        }
    }

    fn next(&mut self) -> Result<[u8; 4], Error> {
        if self.pos + 4 > self.pool.len() {
            rustls::crypto::ring::default_provider()
                .secure_random
                .fill(&mut self.pool)
                .map_err(|_| Error::Io(std::io::Error::other("secure random source failed")))?;
            self.pos = 0;
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&self.pool[self.pos..self.pos + 4]);
        self.pos += 4;
        Ok(mask)
    }
}

pub(crate) struct Writer {
    pub half: WriteHalf,
    pub control: Receiver<Control>,
    pub data: Receiver<Frame>,
    /// Disconnected when the link is released.
    pub stop: Receiver<()>,
    pub coord: Sender<Input>,
    pub counters: Arc<Counters>,
}

enum Item {
    Control(Control),
    Data(Frame),
}

impl Writer {
    pub(crate) fn run(mut self) {
        let mut state = State {
            masks: Masks::new(),
            batch: Vec::new(),
            close_sent: false,
        };
        loop {
            let first = select! {
                recv(self.control) -> c => match c { Ok(c) => Item::Control(c), Err(_) => return },
                recv(self.data) -> d => match d { Ok(d) => Item::Data(d), Err(_) => return },
                recv(self.stop) -> _ => return,
            };
            if let Err(e) = self.write_batch(&mut state, first) {
                log::debug!("writer stopping: {e}");
                crate::driver::report(&self.coord, &self.stop, Input::WriteFailed(e));
                return;
            }
        }
    }

    fn write_batch(&mut self, st: &mut State, first: Item) -> Result<(), Error> {
        st.batch.clear();
        let mut flush_tls = false;
        let mut wrote_close = false;
        let mut held = None;
        let (mut messages, mut bytes) = (0u64, 0u64);
        match first {
            Item::Control(c) => st.encode_control(c, &mut flush_tls, &mut wrote_close)?,
            Item::Data(d) => held = Some(d),
        }
        loop {
            while let Ok(c) = self.control.try_recv() {
                st.encode_control(c, &mut flush_tls, &mut wrote_close)?;
            }
            let next = match held.take() {
                Some(d) => d,
                None if st.batch.len() >= BATCH_BYTES => break,
                None => match self.data.try_recv() {
                    Ok(d) => d,
                    Err(_) => break,
                },
            };
            if let Some(len) = st.encode_data(&next, &self.counters)? {
                messages += 1;
                bytes += len as u64;
            }
        }
        if !st.batch.is_empty() {
            self.half
                .write_all(&st.batch)
                .map_err(crate::error::from_io)?;
        } else if flush_tls {
            self.half.flush_tls().map_err(crate::error::from_io)?;
        }
        Counters::bump(&self.counters.messages_out, messages);
        Counters::bump(&self.counters.bytes_out, bytes);
        if wrote_close {
            crate::driver::report(&self.coord, &self.stop, Input::CloseWritten);
        }
        Ok(())
    }
}

struct State {
    masks: Masks,
    batch: Vec<u8>,
    close_sent: bool,
}

impl State {
    fn encode_control(
        &mut self,
        c: Control,
        flush_tls: &mut bool,
        wrote_close: &mut bool,
    ) -> Result<(), Error> {
        if self.close_sent {
            return Ok(());
        }
        let mask = self.masks.next()?;
        match c {
            Control::Ping(p) => codec::encode(OP_PING, truncated(&p), mask, &mut self.batch),
            Control::Pong(p) => codec::encode(OP_PONG, truncated(&p), mask, &mut self.batch),
            Control::Close(close) => {
                let close = close
                    .as_ref()
                    .map(|(code, reason)| (*code, reason.as_str()));
                codec::encode_close(close, mask, &mut self.batch);
                self.close_sent = true;
                *wrote_close = true;
            }
            Control::FlushTls => *flush_tls = true,
        }
        Ok(())
    }

    /// Encodes a data frame into the batch; returns its payload length, or `None` if discarded.
    fn encode_data(&mut self, frame: &Frame, counters: &Counters) -> Result<Option<usize>, Error> {
        if self.close_sent {
            Counters::bump(&counters.discarded_after_close, 1);
            return Ok(None);
        }
        let (opcode, payload) = match frame {
            Frame::Text(s) => (OP_TEXT, s.as_bytes()),
            Frame::Binary(b) => (OP_BINARY, b.as_slice()),
            // The client only queues data frames on the data lane.
            _ => return Ok(None),
        };
        let mask = self.masks.next()?;
        codec::encode(opcode, payload, mask, &mut self.batch);
        Ok(Some(payload.len()))
    }
}

fn truncated(payload: &[u8]) -> &[u8] {
    &payload[..payload.len().min(codec::MAX_CONTROL_PAYLOAD)]
}
