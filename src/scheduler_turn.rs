//! Giving tokio's scheduler one turn. A task that wakes itself during its poll goes to the back
//! of tokio's run queue, so every task that is runnable at that moment runs before it goes on.
//! That is how the TCP+TLS writer lets the frames of other connections join its next write,
//! and how quinn's drivers gather what several streams wrote into one packet
//! (`transport::quic_runtime`): a task woken by another task would otherwise run right after
//! it, in tokio's LIFO slot, ahead of everything already runnable.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Lets every task that is runnable now run before this one continues. `tokio::task::yield_now`
/// would also wait for a poll of the I/O driver, an extra `epoll_wait` each time.
pub(crate) async fn runnable_tasks_first() {
    AfterOneTurn::new(std::future::ready(())).await
}

/// A future whose every wake-up first gives the scheduler one turn: woken, it wakes itself
/// and returns, which tokio treats as a yield (to the back of the run queue); the next poll
/// runs the inner future.
pub(crate) struct AfterOneTurn<F> {
    inner: F,
    turn_given: bool,
}

impl<F> AfterOneTurn<F> {
    pub(crate) fn new(inner: F) -> Self {
        Self {
            inner,
            turn_given: false,
        }
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
    use std::sync::{Arc, Mutex};
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
