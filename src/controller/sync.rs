//! Locking shared maps from synchronous code: every module of the shell uses the same rule, so
//! it lives below all of them and none has to import another to get it.

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, recovering the data if a panicking thread poisoned it: every critical
/// section in the shell leaves the data consistent, so one panicked reconcile must not stop
/// every later one.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_mutex_still_hands_out_its_data() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let poisoner = m.clone();
        let panicked = std::thread::spawn(move || {
            let mut guard = poisoner.lock().expect("not poisoned yet");
            *guard = 2;
            panic!("a reconcile panicked while holding the lock");
        })
        .join();
        assert!(panicked.is_err() && m.is_poisoned());
        assert_eq!(*lock(&m), 2);
    }
}
