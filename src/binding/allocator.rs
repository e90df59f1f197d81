//! glibc's malloc hands freed memory at the top of a heap back to the kernel once more than
//! 128 KiB is free there, and every page of it faults in again when it is used next. A tunnel
//! allocates a 64 KiB buffer per read and frees it once its bytes are written, so bulk traffic
//! crossed that threshold over and over; keeping 4 MiB cuts those page faults and the CPU time
//! per byte. Measured: docs/PERFORMANCE.md, "Allocator trim threshold".
//!
//! The setting is process-wide, so the addon leaves it alone when the process was started with
//! one of its own (`MALLOC_TRIM_THRESHOLD_`, or `glibc.malloc.trim_threshold` in
//! `GLIBC_TUNABLES`).

/// Free memory a heap keeps at its top before returning it: room for the read buffers of a
/// few busy connections (each stream has up to a 4 MiB window in flight).
const KEPT_FREE_HEAP_BYTES: i32 = 4 * 1024 * 1024;

/// Whether the environment already sets glibc's trim threshold.
fn trim_threshold_chosen(trim_env: Option<&str>, tunables: Option<&str>) -> bool {
    trim_env.is_some() || tunables.is_some_and(|t| t.contains("glibc.malloc.trim_threshold"))
}

#[napi_derive::module_init]
fn keep_freed_heap_for_reuse() {
    let trim_env = std::env::var("MALLOC_TRIM_THRESHOLD_").ok();
    let tunables = std::env::var("GLIBC_TUNABLES").ok();
    if trim_threshold_chosen(trim_env.as_deref(), tunables.as_deref()) {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEPT_FREE_HEAP_BYTES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threshold_from_the_environment_is_left_alone() {
        assert!(!trim_threshold_chosen(None, None));
        assert!(!trim_threshold_chosen(
            None,
            Some("glibc.malloc.arena_max=2")
        ));
        assert!(trim_threshold_chosen(Some("131072"), None));
        assert!(trim_threshold_chosen(
            None,
            Some("glibc.malloc.arena_max=2:glibc.malloc.trim_threshold=131072")
        ));
    }
}
