//! The tokens a writer keeps in memory, keyed by the id inside each entry: a `HashMap` would
//! keep a second copy of every id, and its slack (a table is at most 7/8 full, and doubles)
//! would hold whole entries rather than pointers.

use crate::domain::state::TokenState;
use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher;
use std::sync::Arc;

/// What a table entry is keyed by.
pub trait Keyed {
    /// The token's id.
    fn id(&self) -> &str;
}

impl Keyed for Arc<TokenState> {
    fn id(&self) -> &str {
        &self.id
    }
}

/// Token entries by id.
pub struct Tokens<V> {
    table: HashTable<V>,
    hasher: DefaultHashBuilder,
}

impl<V> Default for Tokens<V> {
    fn default() -> Self {
        Tokens {
            table: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
        }
    }
}

impl<V: Keyed> Tokens<V> {
    fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    /// The entry of `id`.
    pub fn get(&self, id: &str) -> Option<&V> {
        self.table.find(self.hash(id), |v| v.id() == id)
    }

    /// The entry of `id`, to change in place.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut V> {
        let hash = self.hash(id);
        self.table.find_mut(hash, |v| v.id() == id)
    }

    /// Adds `v` unless its id has an entry already (which is kept: it may hold calls not yet
    /// written). Whether it was added.
    pub fn insert_new(&mut self, v: V) -> bool {
        let hash = self.hash(v.id());
        let hasher = &self.hasher;
        match self
            .table
            .entry(hash, |e| e.id() == v.id(), |e| hasher.hash_one(e.id()))
        {
            hashbrown::hash_table::Entry::Occupied(_) => false,
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert(v);
                true
            }
        }
    }

    /// Takes the entry of `id` out.
    pub fn remove(&mut self, id: &str) -> Option<V> {
        let hash = self.hash(id);
        match self.table.find_entry(hash, |v| v.id() == id) {
            Ok(e) => Some(e.remove().0),
            Err(_) => None,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Drops every entry, and the table's memory with them.
    pub fn clear(&mut self) {
        self.table = HashTable::new();
    }

    /// Keeps the entries `keep` says yes to.
    pub fn retain(&mut self, keep: impl FnMut(&mut V) -> bool) {
        self.table.retain(keep);
    }

    /// Drops entries `spare` says no to, in the table's order (which follows the hash of the
    /// ids, so it is no order of use or of age), until at most `target` are left; the memory
    /// of a table that shrank to a quarter is given back.
    pub fn shrink_to(&mut self, target: usize, mut spare: impl FnMut(&V) -> bool) {
        let mut over = self.table.len().saturating_sub(target);
        if over == 0 {
            return;
        }
        self.table.retain(|v| {
            if over > 0 && !spare(v) {
                over -= 1;
                false
            } else {
                true
            }
        });
        if self.table.len() < self.table.capacity() / 4 {
            let hasher = &self.hasher;
            self.table.shrink_to_fit(|e| hasher.hash_one(e.id()));
        }
    }

    /// Every entry.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.table.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct E(String, u32);
    impl Keyed for E {
        fn id(&self) -> &str {
            &self.0
        }
    }

    #[test]
    fn entries_are_found_by_the_id_inside_them_and_an_existing_one_is_kept() {
        let mut t = Tokens::default();
        assert!(t.insert_new(E("a".into(), 1)));
        assert!(!t.insert_new(E("a".into(), 2)), "the entry held is kept");
        assert!(t.insert_new(E("b".into(), 3)));
        assert_eq!(t.get("a"), Some(&E("a".into(), 1)));
        t.get_mut("b").unwrap().1 = 4;
        assert_eq!(t.remove("b"), Some(E("b".into(), 4)));
        assert_eq!((t.get("b"), t.len()), (None, 1));
    }

    #[test]
    fn shrinking_keeps_the_spared_entries_and_stops_at_the_target() {
        let mut t = Tokens::default();
        for i in 0..1000 {
            t.insert_new(E(format!("t{i}"), i));
        }
        // Every even entry must stay.
        t.shrink_to(600, |e| e.1 % 2 == 0);
        assert_eq!(t.len(), 600);
        assert!((0..1000)
            .step_by(2)
            .all(|i| t.get(&format!("t{i}")).is_some()));
        // Nothing to drop but spared entries: it stops above the target.
        t.shrink_to(10, |e| e.1 % 2 == 0);
        assert_eq!(t.len(), 500);
        t.shrink_to(10, |_| false);
        assert_eq!(t.len(), 10);
    }
}
