//! One async lock per key, made on first use and forgotten once nobody holds or waits for it: one build per
//! venv on an agent, one GMS write at a time per task in the controller's reporter. Decides nothing itself.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Cheap to clone; clones share the locks.
#[derive(Debug)]
pub struct KeyedLocks<K>(Arc<Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>>);

impl<K> Clone for KeyedLocks<K> {
    fn clone(&self) -> Self {
        KeyedLocks(self.0.clone())
    }
}

impl<K> Default for KeyedLocks<K> {
    fn default() -> Self {
        KeyedLocks(Arc::default())
    }
}

impl<K: Eq + Hash + Clone> KeyedLocks<K> {
    /// The lock of `key` (lock it to hold it).
    pub fn of(&self, key: &K) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Forget locks nobody holds or waits for.
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(key.clone()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_per_key_and_idle_locks_are_forgotten() {
        let locks = KeyedLocks::default();
        let a = locks.of(&"a");
        let held = a.lock().await;
        assert!(locks.of(&"a").try_lock().is_err(), "the same key waits");
        assert!(locks.of(&"b").try_lock().is_ok(), "another key does not");
        drop(held);
        drop(a);
        let _c = locks.of(&"c");
        let kept: Vec<&str> = locks.0.lock().unwrap().keys().copied().collect();
        assert_eq!(kept, ["c"], "a and b were idle: forgotten at the next look-up");
    }
}
