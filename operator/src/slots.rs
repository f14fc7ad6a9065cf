//! A bounded count per key (connections per client address, heavy requests per owner): a [`Slot`] holds one place
//! of its key and gives it back when dropped, so an answer that ends in any way (an error, a dropped future) frees
//! it.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex},
};

/// How many places each key holds.
pub struct Slots<K> {
    held: Mutex<HashMap<K, usize>>,
}

impl<K> Default for Slots<K> {
    fn default() -> Self {
        Slots { held: Mutex::new(HashMap::new()) }
    }
}

impl<K: Eq + Hash + Clone> Slots<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, usize>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One more place for `key`, unless it holds `max` already.
    pub fn take(self: &Arc<Self>, key: K, max: usize) -> Option<Slot<K>> {
        let mut held = self.lock();
        let n = held.entry(key.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot { table: self.clone(), key })
    }
}

/// One place of a key; given back when dropped.
pub struct Slot<K: Eq + Hash + Clone> {
    table: Arc<Slots<K>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut held = self.table.lock();
        if let Some(n) = held.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}
