//! The lifecycle of one tunneled stream: which ends have closed it, and who is writing the
//! peer's data to the local socket. Pure: the caller keeps the inbox, the socket and the
//! wake-ups, asks this type what a frame or an event means, and acts on the answer.
//!
//! A peer can send frames in any order; each transition a peer cannot legitimately cause is
//! a typed error, which the caller treats as "drop it" (a stream's misbehaviour never fails
//! the whole tunnel, as with CLOSE payloads).

use thiserror::Error;

use crate::protocol::frame::{CloseKind, ResetReason};

/// Where the two directions of a stream stand, as frames were sent and received (a received
/// close counts from its arrival, though the inbox still delivers it after the data before it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Both directions carry data.
    Open,
    /// We sent our FIN; the peer's data still comes.
    LocalHalfClosed,
    /// The peer's FIN arrived; ours is still to come.
    RemoteHalfClosed,
    /// Both FINs: no more data either way. A reset may still follow (an end whose socket
    /// fails while it delivers the last bytes resets the stream).
    Closed,
    /// Aborted; both directions end now.
    Reset(ResetBy),
}

/// Which end aborted a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResetBy {
    Peer(ResetReason),
    /// Our local socket failed, and a reset went to the peer.
    Local,
}

/// Who holds the local socket's write side while a payload is being written: the next payload
/// must wait behind it, so bytes reach the socket in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Writer {
    /// The stream's pump, with a payload it took from the inbox.
    Pump,
    /// The tunnel reader, writing a small payload itself.
    Reader,
}

#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub(crate) enum StreamStateError {
    #[error("DATA after the peer's FIN")]
    DataAfterClose,
    #[error("DATA after a reset")]
    DataAfterReset,
    #[error("a second FIN in the same direction")]
    CloseTwice,
    #[error("FIN after a reset")]
    CloseAfterReset,
    #[error("a second reset")]
    ResetTwice,
    #[error("{wanted:?} cannot write: {holder:?} is writing")]
    WriterBusy { wanted: Writer, holder: Writer },
    #[error("{by:?} ends a write it does not hold (holder: {holder:?})")]
    NotWriting { by: Writer, holder: Option<Writer> },
}

/// One stream's phase and its socket writer; every combination of the two is meaningful (the
/// writer may still drain data that arrived before a close).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StreamState {
    phase: Phase,
    writer: Option<Writer>,
}

impl Default for StreamState {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamState {
    pub(crate) const fn new() -> Self {
        Self {
            phase: Phase::Open,
            writer: None,
        }
    }

    #[cfg(test)]
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Who is writing to the local socket now, if anyone.
    pub(crate) fn writer(&self) -> Option<Writer> {
        self.writer
    }

    /// A DATA frame from the peer: Ok when its direction is still open, so the payload is
    /// delivered; an error means it is dropped.
    pub(crate) fn on_remote_data(&self) -> Result<(), StreamStateError> {
        match self.phase {
            Phase::Open | Phase::LocalHalfClosed => Ok(()),
            Phase::RemoteHalfClosed | Phase::Closed => Err(StreamStateError::DataAfterClose),
            Phase::Reset(_) => Err(StreamStateError::DataAfterReset),
        }
    }

    /// A CLOSE frame from the peer (FIN or reset): Ok when it changes the stream, so it is
    /// delivered after the data before it; an error means it is dropped.
    pub(crate) fn on_remote_close(&mut self, kind: CloseKind) -> Result<(), StreamStateError> {
        self.phase = match (kind, self.phase) {
            (CloseKind::HalfClose, Phase::Open) => Phase::RemoteHalfClosed,
            (CloseKind::HalfClose, Phase::LocalHalfClosed) => Phase::Closed,
            (CloseKind::HalfClose, Phase::RemoteHalfClosed | Phase::Closed) => {
                return Err(StreamStateError::CloseTwice)
            }
            (CloseKind::HalfClose, Phase::Reset(_)) => {
                return Err(StreamStateError::CloseAfterReset)
            }
            (CloseKind::Reset(_), Phase::Reset(_)) => return Err(StreamStateError::ResetTwice),
            (CloseKind::Reset(reason), _) => Phase::Reset(ResetBy::Peer(reason)),
        };
        Ok(())
    }

    /// Our FIN went to the peer (the local client will send no more).
    pub(crate) fn on_local_half_close(&mut self) -> Result<(), StreamStateError> {
        self.phase = match self.phase {
            Phase::Open => Phase::LocalHalfClosed,
            Phase::RemoteHalfClosed => Phase::Closed,
            Phase::LocalHalfClosed | Phase::Closed => return Err(StreamStateError::CloseTwice),
            Phase::Reset(_) => return Err(StreamStateError::CloseAfterReset),
        };
        Ok(())
    }

    /// Our reset went to the peer (the local socket failed).
    pub(crate) fn on_local_reset(&mut self) -> Result<(), StreamStateError> {
        if let Phase::Reset(_) = self.phase {
            return Err(StreamStateError::ResetTwice);
        }
        self.phase = Phase::Reset(ResetBy::Local);
        Ok(())
    }

    /// `by` starts writing a payload to the local socket; an error when someone else is.
    pub(crate) fn begin_write(&mut self, by: Writer) -> Result<(), StreamStateError> {
        match self.writer {
            Some(holder) => Err(StreamStateError::WriterBusy { wanted: by, holder }),
            None => {
                self.writer = Some(by);
                Ok(())
            }
        }
    }

    /// `by` has finished its write (whatever reached the socket).
    pub(crate) fn end_write(&mut self, by: Writer) -> Result<(), StreamStateError> {
        if self.writer != Some(by) {
            return Err(StreamStateError::NotWriting {
                by,
                holder: self.writer,
            });
        }
        self.writer = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::StreamStateError::*;
    use super::*;

    const PEER_RESET: Phase = Phase::Reset(ResetBy::Peer(ResetReason::Aborted));
    const LOCAL_RESET: Phase = Phase::Reset(ResetBy::Local);
    const PHASES: [Phase; 6] = [
        Phase::Open,
        Phase::LocalHalfClosed,
        Phase::RemoteHalfClosed,
        Phase::Closed,
        PEER_RESET,
        LOCAL_RESET,
    ];

    #[derive(Clone, Copy, Debug)]
    enum Event {
        RemoteData,
        RemoteFin,
        RemoteReset(ResetReason),
        LocalFin,
        LocalReset,
    }

    fn at(phase: Phase) -> StreamState {
        StreamState {
            phase,
            writer: None,
        }
    }

    fn apply(state: &mut StreamState, event: Event) -> Result<(), StreamStateError> {
        match event {
            Event::RemoteData => state.on_remote_data(),
            Event::RemoteFin => state.on_remote_close(CloseKind::HalfClose),
            Event::RemoteReset(reason) => state.on_remote_close(CloseKind::Reset(reason)),
            Event::LocalFin => state.on_local_half_close(),
            Event::LocalReset => state.on_local_reset(),
        }
    }

    /// Every phase against every event: the phase afterwards, or the error (which leaves the
    /// phase as it was).
    #[test]
    fn every_transition() {
        use Event::*;
        let refused = Phase::Reset(ResetBy::Peer(ResetReason::Refused));
        let expected: [(Event, [Result<Phase, StreamStateError>; 6]); 5] = [
            (
                RemoteData,
                [
                    Ok(Phase::Open),
                    Ok(Phase::LocalHalfClosed),
                    Err(DataAfterClose),
                    Err(DataAfterClose),
                    Err(DataAfterReset),
                    Err(DataAfterReset),
                ],
            ),
            (
                RemoteFin,
                [
                    Ok(Phase::RemoteHalfClosed),
                    Ok(Phase::Closed),
                    Err(CloseTwice),
                    Err(CloseTwice),
                    Err(CloseAfterReset),
                    Err(CloseAfterReset),
                ],
            ),
            (
                RemoteReset(ResetReason::Refused),
                [
                    Ok(refused),
                    Ok(refused),
                    Ok(refused),
                    Ok(refused),
                    Err(ResetTwice),
                    Err(ResetTwice),
                ],
            ),
            (
                LocalFin,
                [
                    Ok(Phase::LocalHalfClosed),
                    Err(CloseTwice),
                    Ok(Phase::Closed),
                    Err(CloseTwice),
                    Err(CloseAfterReset),
                    Err(CloseAfterReset),
                ],
            ),
            (
                LocalReset,
                [
                    Ok(LOCAL_RESET),
                    Ok(LOCAL_RESET),
                    Ok(LOCAL_RESET),
                    Ok(LOCAL_RESET),
                    Err(ResetTwice),
                    Err(ResetTwice),
                ],
            ),
        ];
        for (event, outcomes) in expected {
            for (phase, outcome) in PHASES.into_iter().zip(outcomes) {
                let mut state = at(phase);
                let result = apply(&mut state, event).map(|()| state.phase());
                assert_eq!(result, outcome, "{event:?} in {phase:?}");
                if result.is_err() {
                    assert_eq!(state, at(phase), "a refused {event:?} changed {phase:?}");
                }
            }
        }
    }

    #[test]
    fn a_stream_closes_in_either_order() {
        let mut state = StreamState::new();
        assert_eq!(state.on_remote_data(), Ok(()));
        assert_eq!(state.on_local_half_close(), Ok(()));
        assert_eq!(state.on_remote_data(), Ok(()));
        assert_eq!(state.on_remote_close(CloseKind::HalfClose), Ok(()));
        assert_eq!(state.phase(), Phase::Closed);

        let mut state = StreamState::new();
        assert_eq!(state.on_remote_close(CloseKind::HalfClose), Ok(()));
        assert_eq!(state.on_remote_data(), Err(DataAfterClose));
        assert_eq!(state.on_local_half_close(), Ok(()));
        assert_eq!(state.phase(), Phase::Closed);
    }

    /// What a misbehaving peer can send after each close, in a row, with the reason of the
    /// first reset kept.
    #[test]
    fn a_peer_repeating_or_reordering_closes_gets_errors_not_panics() {
        let mut state = StreamState::new();
        assert_eq!(state.on_remote_close(CloseKind::HalfClose), Ok(()));
        assert_eq!(state.on_remote_close(CloseKind::HalfClose), Err(CloseTwice));
        assert_eq!(state.on_remote_data(), Err(DataAfterClose));
        let limit = CloseKind::Reset(ResetReason::Limit);
        assert_eq!(state.on_remote_close(limit), Ok(()));
        assert_eq!(state.on_remote_close(limit), Err(ResetTwice));
        let aborted = CloseKind::Reset(ResetReason::Aborted);
        assert_eq!(state.on_remote_close(aborted), Err(ResetTwice));
        assert_eq!(
            state.on_remote_close(CloseKind::HalfClose),
            Err(CloseAfterReset)
        );
        assert_eq!(state.on_remote_data(), Err(DataAfterReset));
        assert_eq!(state.on_local_half_close(), Err(CloseAfterReset));
        assert_eq!(state.on_local_reset(), Err(ResetTwice));
        assert_eq!(
            state.phase(),
            Phase::Reset(ResetBy::Peer(ResetReason::Limit))
        );
    }

    #[test]
    fn one_writer_at_a_time_and_only_the_holder_ends_its_write() {
        let mut state = StreamState::new();
        assert_eq!(
            state.end_write(Writer::Pump),
            Err(NotWriting {
                by: Writer::Pump,
                holder: None
            })
        );
        assert_eq!(state.begin_write(Writer::Reader), Ok(()));
        assert_eq!(
            state.begin_write(Writer::Pump),
            Err(WriterBusy {
                wanted: Writer::Pump,
                holder: Writer::Reader
            })
        );
        assert_eq!(
            state.begin_write(Writer::Reader),
            Err(WriterBusy {
                wanted: Writer::Reader,
                holder: Writer::Reader
            })
        );
        assert_eq!(
            state.end_write(Writer::Pump),
            Err(NotWriting {
                by: Writer::Pump,
                holder: Some(Writer::Reader)
            })
        );
        assert_eq!(state.writer(), Some(Writer::Reader));
        assert_eq!(state.end_write(Writer::Reader), Ok(()));
        assert_eq!(state.writer(), None);
        assert_eq!(state.begin_write(Writer::Pump), Ok(()));
        assert_eq!(state.end_write(Writer::Pump), Ok(()));
    }

    /// The writer drains data that came before a close: closes do not touch it.
    #[test]
    fn closes_leave_a_write_in_progress_alone() {
        let mut state = StreamState::new();
        state.begin_write(Writer::Pump).unwrap();
        state.on_remote_close(CloseKind::HalfClose).unwrap();
        state.on_local_half_close().unwrap();
        assert_eq!(state.writer(), Some(Writer::Pump));
        state
            .on_remote_close(CloseKind::Reset(ResetReason::Aborted))
            .unwrap();
        assert_eq!(state.writer(), Some(Writer::Pump));
        assert_eq!(state.end_write(Writer::Pump), Ok(()));
        assert_eq!(state.phase(), PEER_RESET);
    }
}
