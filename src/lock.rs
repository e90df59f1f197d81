//! Locks taken without regard to poisoning. No critical section in this crate can leave its
//! data half-changed, so a lock a panicking task held is still used as it is, rather than
//! spreading that panic to every later caller.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub(crate) trait Locked<T> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> Locked<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) trait ReadWriteLocked<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T> ReadWriteLocked<T> for RwLock<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_held_by_a_panicking_thread_is_still_usable() {
        let shared = std::sync::Arc::new((Mutex::new(1), RwLock::new(2)));
        let held = shared.clone();
        let _ = std::thread::spawn(move || {
            let _mutex = held.0.lock().unwrap();
            let _rw = held.1.write().unwrap();
            panic!("poisons both locks");
        })
        .join();
        assert!(shared.0.is_poisoned() && shared.1.is_poisoned());
        *shared.0.locked() += 1;
        *shared.1.write_locked() += 1;
        assert_eq!((*shared.0.locked(), *shared.1.read_locked()), (2, 3));
    }
}
