//! The tokio runtime napi runs hubs and edges on, with fewer worker threads than cores.
//!
//! Most of a tunnel's CPU is the kernel's, on the same cores as the workers, and a tunnel's own
//! work is serial (one reader task, one writer task), so a worker per core mostly adds threads
//! that wake each other. Measured: docs/PERFORMANCE.md, "Worker threads".
//!
//! `TOKIO_WORKER_THREADS` still decides when it is set, as it does for tokio's own default.

/// Worker threads for a machine with `cores` cores: half of them, at least one, unless
/// `env_choice` (the value of `TOKIO_WORKER_THREADS`) names a positive number.
fn worker_threads(cores: usize, env_choice: Option<&str>) -> usize {
    if let Some(chosen) = env_choice.and_then(|value| value.trim().parse::<usize>().ok()) {
        if chosen > 0 {
            return chosen;
        }
    }
    cores.div_ceil(2).max(1)
}

// Unit tests load the library without Node: no runtime for napi to take there.
#[cfg(not(test))]
#[napi_derive::module_init]
fn runtime_with_half_the_cores() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let env_choice = std::env::var("TOKIO_WORKER_THREADS").ok();
    let workers = worker_threads(cores, env_choice.as_deref());
    // Should the runtime fail to build, napi builds its default one: a worker per core.
    if let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        napi::bindgen_prelude::create_custom_tokio_runtime(runtime);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_the_cores_unless_the_environment_chooses() {
        assert_eq!(worker_threads(1, None), 1);
        assert_eq!(worker_threads(2, None), 1);
        assert_eq!(worker_threads(3, None), 2);
        assert_eq!(worker_threads(8, None), 4);
        assert_eq!(worker_threads(2, Some("3")), 3);
        assert_eq!(worker_threads(8, Some(" 1 ")), 1);
        // Not a positive number: the default stands.
        assert_eq!(worker_threads(8, Some("0")), 4);
        assert_eq!(worker_threads(8, Some("many")), 4);
    }
}
