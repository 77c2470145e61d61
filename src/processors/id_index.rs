//! [`IdIndex`]: a small map from token id to entry number, laid out so that a batch of lookups
//! over many rows can touch its memory first and overlap the cache misses.

/// A map `token → u32` (open addressing, linear probing, at most half full). Each slot is one
/// `u64`: `(token + 1) << 32 | value`, 0 when empty.
///
/// Unlike a `HashMap`, the slot a lookup will read first is known without reading the map
/// ([`slot_hint`](Self::slot_hint)), so a caller updating many rows can load those slots in one
/// tight loop (the loads overlap) before doing the lookups.
#[derive(Debug, Clone)]
pub(crate) struct IdIndex {
    slots: Vec<u64>,
    len: usize,
    /// `64 - log2(slots.len())`.
    shift: u32,
}

const MUL: u64 = 0x9E37_79B9_7F4A_7C15;

impl Default for IdIndex {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl IdIndex {
    /// An empty map that holds `n` ids without growing.
    pub(crate) fn with_capacity(n: usize) -> Self {
        let size = (2 * n).next_power_of_two().max(16);
        Self {
            slots: vec![0; size],
            len: 0,
            shift: 64 - size.trailing_zeros(),
        }
    }

    fn home(&self, token: u32) -> usize {
        ((u64::from(token) + 1).wrapping_mul(MUL) >> self.shift) as usize
    }

    /// The first slot a lookup of `token` reads; load it ahead to warm the cache.
    pub(crate) fn slot_hint(&self, token: u32) -> u64 {
        self.slots[self.home(token)]
    }

    /// The value of `token`, if present.
    pub(crate) fn get(&self, token: u32) -> Option<u32> {
        let key = u64::from(token) + 1;
        let mask = self.slots.len() - 1;
        let mut i = self.home(token);
        loop {
            let s = self.slots[i];
            if s == 0 {
                return None;
            }
            if s >> 32 == key {
                return Some(s as u32);
            }
            i = (i + 1) & mask;
        }
    }

    /// Whether `token` is present.
    pub(crate) fn contains(&self, token: u32) -> bool {
        self.get(token).is_some()
    }

    /// Maps `token` (not present yet) to `value`. Amortised O(1).
    pub(crate) fn insert_new(&mut self, token: u32, value: u32) {
        if 2 * (self.len + 1) > self.slots.len() {
            self.grow();
        }
        self.put(token, value);
        self.len += 1;
    }

    fn put(&mut self, token: u32, value: u32) {
        let key = u64::from(token) + 1;
        let mask = self.slots.len() - 1;
        let mut i = self.home(token);
        while self.slots[i] != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = key << 32 | u64::from(value);
    }

    fn grow(&mut self) {
        let size = self.slots.len() * 2;
        let old = std::mem::replace(&mut self.slots, vec![0; size]);
        self.shift -= 1;
        for s in old.into_iter().filter(|&s| s != 0) {
            self.put(((s >> 32) - 1) as u32, s as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn agrees_with_a_hashmap() {
        let mut ours = IdIndex::default();
        let mut std_map = HashMap::new();
        let mut x = 12345u64;
        for i in 0..5000u32 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let t = (x >> 33) as u32 % 3000 + if i % 7 == 0 { u32::MAX - 10 } else { 0 };
            let t = t.min(u32::MAX - 1);
            assert_eq!(ours.get(t), std_map.get(&t).copied(), "token {t}");
            if let std::collections::hash_map::Entry::Vacant(e) = std_map.entry(t) {
                ours.insert_new(t, i);
                e.insert(i);
            }
            assert!(ours.contains(t));
        }
        for t in 0..3000 {
            assert_eq!(ours.get(t), std_map.get(&t).copied());
        }
    }
}
