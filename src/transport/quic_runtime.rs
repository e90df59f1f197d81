//! quinn on tokio, with each of quinn's driver tasks waiting one scheduler turn before it runs.
//!
//! A connection's driver is woken by every stream write. tokio runs a task woken by another
//! task next (its LIFO slot), so with ten requests read in one turn the driver ran after each
//! and sent each request in a packet of its own. Made to wait a turn, it runs after the other
//! runnable tasks and sends what they wrote together: the same coalescing the TCP+TLS writer
//! gets from its own wait (`tunnel::writer`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use quinn::{AsyncTimer, AsyncUdpSocket, Runtime, TokioRuntime};

use crate::scheduler_turn::AfterOneTurn;

/// [`TokioRuntime`], but quinn's tasks are spawned as [`AfterOneTurn`].
#[derive(Debug)]
pub(crate) struct TurnSharingRuntime;

impl Runtime for TurnSharingRuntime {
    fn new_timer(&self, at: Instant) -> Pin<Box<dyn AsyncTimer>> {
        TokioRuntime.new_timer(at)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        tokio::spawn(AfterOneTurn::new(future));
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        TokioRuntime.wrap_udp_socket(socket)
    }

    fn now(&self) -> Instant {
        TokioRuntime.now()
    }
}
