//! quinn on tokio, with each of quinn's driver tasks waiting one scheduler turn before it runs.
//!
//! A connection's driver is woken by every stream write. tokio runs a task woken by another
//! task next (its LIFO slot), so with ten requests read in one turn the driver ran after each
//! and sent each request in a packet of its own. Made to wait a turn, it runs after the other
//! runnable tasks and sends what they wrote together: the same coalescing the TCP+TLS writer
//! gets from its own wait (`tunnel::writer`).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use quinn::{AsyncTimer, AsyncUdpSocket, Runtime, TokioRuntime};

/// [`TokioRuntime`], but quinn's tasks are spawned as [`AfterOneTurn`].
#[derive(Debug)]
pub struct TurnSharingRuntime;

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

/// A future whose every wake-up first gives the scheduler one turn: woken, it wakes itself
/// and returns, which tokio treats as a yield (to the back of the run queue); the next poll
/// runs the inner future.
pub struct AfterOneTurn<F> {
    inner: F,
    turn_given: bool,
}

impl<F> AfterOneTurn<F> {
    pub fn new(inner: F) -> Self {
        Self {
            inner,
            turn_given: false,
        }
    }
}

impl<F> fmt::Debug for AfterOneTurn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AfterOneTurn")
            .field("turn_given", &self.turn_given)
            .finish_non_exhaustive()
    }
}

impl<F: Future + Unpin> Future for AfterOneTurn<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if !self.turn_given {
            self.turn_given = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.turn_given = false;
        Pin::new(&mut self.inner).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::sync::oneshot;

    /// Tasks `woken_first` and `woken_last` wait; one task wakes them in that order. tokio
    /// would run the task woken last first (its LIFO slot); wrapped, it runs after the other.
    async fn run_order(wrap_woken_last: bool) -> Vec<&'static str> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (wake_first, first_woken) = oneshot::channel::<()>();
        let (wake_last, last_woken) = oneshot::channel::<()>();
        let first_log = log.clone();
        let first = tokio::spawn(async move {
            let _ = first_woken.await;
            first_log.lock().unwrap().push("woken first");
        });
        let last_log = log.clone();
        let last_task = Box::pin(async move {
            let _ = last_woken.await;
            last_log.lock().unwrap().push("woken last");
        });
        let last = if wrap_woken_last {
            tokio::spawn(AfterOneTurn::new(last_task))
        } else {
            tokio::spawn(last_task)
        };
        // Both reach their wait before the wake-ups (a yielded task runs after the others).
        tokio::task::yield_now().await;
        wake_first.send(()).unwrap();
        wake_last.send(()).unwrap();
        first.await.unwrap();
        last.await.unwrap();
        let order = log.lock().unwrap().clone();
        order
    }

    #[test]
    fn a_task_woken_by_another_runs_after_the_tasks_already_runnable() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let (plain, wrapped) = runtime.block_on(async {
            let plain = tokio::spawn(run_order(false)).await.unwrap();
            let wrapped = tokio::spawn(run_order(true)).await.unwrap();
            (plain, wrapped)
        });
        // What the wrapper is for: unwrapped, the task woken last jumps the queue.
        assert_eq!(plain, ["woken last", "woken first"]);
        assert_eq!(wrapped, ["woken first", "woken last"]);
    }
}
