//! How many of something each key holds, a key that holds none forgotten, so the map's size
//! is what is held now.

use std::collections::HashMap;
use std::hash::Hash;

#[derive(Debug)]
pub(crate) struct Counts<K>(HashMap<K, usize>);

impl<K> Default for Counts<K> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

impl<K: Eq + Hash> Counts<K> {
    pub(crate) fn get(&self, key: &K) -> usize {
        self.0.get(key).copied().unwrap_or(0)
    }

    pub(crate) fn add(&mut self, key: K) {
        *self.0.entry(key).or_default() += 1;
    }

    /// One less for `key`; a key whose count falls to zero is forgotten.
    pub(crate) fn remove(&mut self, key: &K) {
        if let Some(count) = self.0.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                self.0.remove(key);
            }
        }
    }

    /// Keys holding something now.
    #[cfg(test)]
    pub(crate) fn keys(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_forgotten_when_it_holds_nothing() {
        let mut counts = Counts::default();
        counts.add("a");
        counts.add("a");
        counts.add("b");
        assert_eq!(
            (counts.get(&"a"), counts.get(&"b"), counts.keys()),
            (2, 1, 2)
        );
        counts.remove(&"a");
        counts.remove(&"b");
        assert_eq!(
            (counts.get(&"a"), counts.get(&"b"), counts.keys()),
            (1, 0, 1)
        );
        counts.remove(&"a");
        counts.remove(&"c");
        assert_eq!(counts.keys(), 0);
    }
}
