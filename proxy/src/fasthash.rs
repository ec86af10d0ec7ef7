//! Hashers for the proxy's hot maps: a multiply-rotate hasher (FxHash's) for keys the
//! proxy itself makes (addresses, small numbers, interned labels), a seeded one for
//! keys clients choose: both a fraction of SipHash's cost per request.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// FxHash's hasher: one rotate, xor and multiply per word.
#[derive(Clone, Copy, Default)]
pub struct FastHasher(u64);

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }
    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map hashed with [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// A map whose keys clients choose (authorities, label values): hashed with a seed
/// drawn per process (foldhash's quality hasher, as hashbrown's default), so collisions
/// cannot be aimed at, at a fraction of SipHash's cost for short strings. Such maps are
/// bounded besides.
pub type SeededMap<K, V> = HashMap<K, V, foldhash::quality::RandomState>;

/// A set of keys clients choose, as [`SeededMap`].
pub type SeededSet<K> = std::collections::HashSet<K, foldhash::quality::RandomState>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, BuildHasherDefault};

    #[test]
    fn equal_keys_hash_alike_and_neighbours_apart() {
        let build = BuildHasherDefault::<FastHasher>::default();
        let a: std::net::SocketAddr = "10.0.0.1:80".parse().expect("addr");
        let b: std::net::SocketAddr = "10.0.0.2:80".parse().expect("addr");
        assert_eq!(build.hash_one(a), build.hash_one(a));
        assert_ne!(build.hash_one(a), build.hash_one(b));
        // Bytes are hashed whole, the tail past the last full word included.
        assert_ne!(build.hash_one("abcdefghi"), build.hash_one("abcdefghj"));
        let mut map: FastMap<std::net::SocketAddr, u8> = FastMap::default();
        map.insert(a, 1);
        map.insert(b, 2);
        assert_eq!((map.get(&a), map.get(&b)), (Some(&1), Some(&2)));
    }
}
