//! Per-stream credit accounting, one struct per direction, no I/O.
//!
//! The sender may only put `available` bytes of DATA on the wire; the receiver hands credit
//! back (WINDOW_UPDATE) as its socket drains, so a stream never buffers more than its window
//! however slow the reader at the far end is.

use thiserror::Error;

/// Credit a stream starts with in each direction. The performance work makes this adaptive.
pub const INITIAL_STREAM_WINDOW: u32 = 4 * 1024 * 1024;

/// Largest credit a sender may accumulate (h2 uses the same bound). A peer that grants past it
/// is broken or hostile.
pub const MAX_STREAM_WINDOW: u32 = (1 << 31) - 1;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FlowError {
    #[error("window update of {credit} bytes overflows the send window ({available} available)")]
    CreditOverflow { available: u32, credit: u32 },
    #[error("peer sent {len} bytes with only {remaining} bytes of window left")]
    WindowExceeded { remaining: u32, len: u32 },
}

/// What this side may still send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendWindow {
    available: u32,
}

impl SendWindow {
    pub fn new(initial: u32) -> Self {
        Self { available: initial }
    }

    pub fn available(&self) -> u32 {
        self.available
    }

    /// Takes up to `wanted` bytes of credit and returns how much was taken.
    pub fn take(&mut self, wanted: u32) -> u32 {
        let taken = wanted.min(self.available);
        self.available -= taken;
        taken
    }

    /// Gives back credit taken by `take` that was not used (a short read).
    pub fn give_back(&mut self, unused: u32) {
        self.available = self.available.saturating_add(unused).min(MAX_STREAM_WINDOW);
    }

    /// Applies a WINDOW_UPDATE from the peer.
    pub fn grant(&mut self, credit: u32) -> Result<(), FlowError> {
        match self.available.checked_add(credit) {
            Some(sum) if sum <= MAX_STREAM_WINDOW => {
                self.available = sum;
                Ok(())
            }
            _ => Err(FlowError::CreditOverflow {
                available: self.available,
                credit,
            }),
        }
    }
}

/// What the peer may still send us, and the credit we owe it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvWindow {
    window: u32,
    /// Received and not yet given back as credit: buffered here or written but not granted.
    outstanding: u32,
    /// Written to the local socket but not yet granted (granted in batches).
    consumed_ungranted: u32,
}

impl RecvWindow {
    pub fn new(window: u32) -> Self {
        Self {
            window,
            outstanding: 0,
            consumed_ungranted: 0,
        }
    }

    /// Accounts for a DATA frame from the peer; a peer that overruns the window is an error.
    pub fn on_data(&mut self, len: u32) -> Result<(), FlowError> {
        let remaining = self.window - self.outstanding;
        if len > remaining {
            return Err(FlowError::WindowExceeded { remaining, len });
        }
        self.outstanding += len;
        Ok(())
    }

    /// Accounts for bytes written to the local socket. Returns the credit to send back once
    /// enough has piled up: a quarter window keeps the pipe full without a frame per write.
    pub fn on_consumed(&mut self, len: u32) -> Option<u32> {
        // Saturating: `len` comes from our own writes of data already counted by `on_data`.
        self.consumed_ungranted = self.consumed_ungranted.saturating_add(len);
        if self.consumed_ungranted >= self.window / 4 {
            let credit = self.consumed_ungranted;
            self.outstanding = self.outstanding.saturating_sub(credit);
            self.consumed_ungranted = 0;
            Some(credit)
        } else {
            None
        }
    }

    /// Bytes the peer may still send before it must wait for credit.
    pub fn remaining(&self) -> u32 {
        self.window - self.outstanding
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_window_takes_at_most_what_is_available() {
        let mut w = SendWindow::new(10);
        assert_eq!(w.take(4), 4);
        assert_eq!(w.take(100), 6);
        assert_eq!(w.take(1), 0);
        w.give_back(3);
        assert_eq!(w.available(), 3);
    }

    #[test]
    fn grant_past_the_maximum_is_an_error_and_changes_nothing() {
        let mut w = SendWindow::new(MAX_STREAM_WINDOW - 5);
        assert_eq!(
            w.grant(6),
            Err(FlowError::CreditOverflow {
                available: MAX_STREAM_WINDOW - 5,
                credit: 6
            })
        );
        assert_eq!(w.available(), MAX_STREAM_WINDOW - 5);
        assert_eq!(w.grant(5), Ok(()));
        assert_eq!(w.available(), MAX_STREAM_WINDOW);
        assert!(SendWindow::new(1).grant(u32::MAX).is_err());
    }

    #[test]
    fn receiver_rejects_data_past_its_window() {
        let mut r = RecvWindow::new(100);
        assert_eq!(r.on_data(60), Ok(()));
        assert_eq!(r.on_data(40), Ok(()));
        assert_eq!(
            r.on_data(1),
            Err(FlowError::WindowExceeded {
                remaining: 0,
                len: 1
            })
        );
    }

    #[test]
    fn credit_is_returned_in_quarter_window_batches() {
        let mut r = RecvWindow::new(100);
        r.on_data(100).unwrap();
        assert_eq!(r.on_consumed(10), None);
        assert_eq!(r.on_consumed(14), None);
        assert_eq!(r.on_consumed(1), Some(25));
        assert_eq!(r.remaining(), 25);
        assert_eq!(r.on_consumed(75), Some(75));
        assert_eq!(r.remaining(), 100);
    }

    #[test]
    fn sender_and_receiver_agree_over_a_long_exchange() {
        let mut s = SendWindow::new(1000);
        let mut r = RecvWindow::new(1000);
        let mut delivered = 0u64;
        for round in 0..10_000u32 {
            let chunk = s.take(1 + round % 377);
            if chunk > 0 {
                r.on_data(chunk).unwrap();
                delivered += u64::from(chunk);
            }
            if let Some(credit) = r.on_consumed(chunk) {
                s.grant(credit).unwrap();
            }
        }
        assert!(delivered > 1_000_000);
        assert!(s.available() + (1000 - r.remaining()) <= 1000);
    }
}
