//! Gives the heap that closed streams freed back to the kernel. glibc keeps freed memory for
//! reuse (the addon raises its trim threshold for speed, `binding/allocator.rs`), so after a
//! thousand streams with full windows close, the process would keep their hundreds of
//! megabytes. A second after many streams have closed, one `malloc_trim` returns it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Streams that must close before a trim is scheduled: a busy tunnel's steady churn of small
/// requests frees little, and a trim costs milliseconds.
pub(crate) const TRIM_AFTER_CLOSED_STREAMS: usize = 256;
/// How long after the threshold the trim runs, so a burst of closes is trimmed once.
pub(crate) const TRIM_DELAY: Duration = Duration::from_secs(1);

static CLOSED_SINCE_TRIM: AtomicUsize = AtomicUsize::new(0);
static TRIM_SCHEDULED: AtomicBool = AtomicBool::new(false);

/// A tunneled stream closed and freed its buffers.
pub(crate) fn stream_closed() {
    if CLOSED_SINCE_TRIM.fetch_add(1, Ordering::Relaxed) + 1 < TRIM_AFTER_CLOSED_STREAMS {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if TRIM_SCHEDULED.swap(true, Ordering::AcqRel) {
        return;
    }
    runtime.spawn(async {
        tokio::time::sleep(TRIM_DELAY).await;
        CLOSED_SINCE_TRIM.store(0, Ordering::Relaxed);
        TRIM_SCHEDULED.store(false, Ordering::Release);
        let _ = tokio::task::spawn_blocking(trim).await;
    });
}

/// Returns every free page of the heap to the kernel.
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_closes_schedules_one_trim_after_the_delay() {
        for _ in 0..TRIM_AFTER_CLOSED_STREAMS * 3 {
            stream_closed();
        }
        assert!(TRIM_SCHEDULED.load(Ordering::Acquire));
        tokio::time::sleep(TRIM_DELAY * 2).await;
        // The trim ran: the count starts over and the next burst may schedule another.
        assert!(!TRIM_SCHEDULED.load(Ordering::Acquire));
        assert_eq!(CLOSED_SINCE_TRIM.load(Ordering::Relaxed), 0);
    }
}
