//! What travels on a client's user data lane: owned frames, prepared frames, and the frames of
//! requests in their caller's order among the others.

use crate::client::claim::RequestFrame;
use crate::frame::{Frame, PreparedFrame};

/// What travels on the user data lane.
#[derive(Debug)]
pub(crate) enum Outbound {
    Owned(Frame),
    Prepared(PreparedFrame),
    /// A `send_and_confirm` frame, in its caller's order among its other frames.
    Request(Box<RequestFrame>),
}

impl Outbound {
    /// `(is_text, payload)` for a data frame; `None` for anything else.
    pub(crate) fn data(&self) -> Option<(bool, &[u8])> {
        match self {
            Outbound::Owned(frame) => frame.data_payload(),
            Outbound::Prepared(p) => Some((p.is_text(), p.payload())),
            Outbound::Request(r) => r.frame.data_payload(),
        }
    }
}
