//! Maps whose keys are few and bounded (models counted per key, routes and providers in the
//! metrics, key ids), hashed with a fast unkeyed hash instead of std's SipHash. SipHash's
//! random key guards a map that a client can fill with colliding keys; here a client can add
//! at most the bound (`MAX_MODELS`, `MAX_ROUTES`) whatever it sends, so a collision costs a
//! few comparisons at worst. SipHash was ~180 instructions per look-up of a model name, and a
//! request made nine (callgrind). Tables a client can grow without bound (learned ids,
//! conversations) keep SipHash.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::scan::for_each_word;

/// A `HashMap` with [`FoldHasher`]: only for keys bounded in number (see the module's comment).
pub type SmallMap<K, V> = HashMap<K, V, BuildHasherDefault<FoldHasher>>;

/// An empty [`SmallMap`].
pub fn small_map<K, V>() -> SmallMap<K, V> {
    HashMap::with_hasher(BuildHasherDefault::default())
}

/// Eight bytes a step: rotate, xor in, multiply (the FxHash of rustc), with the high bits,
/// which the multiply mixes best, folded down at the end for the bucket index.
#[derive(Debug, Default, Clone, Copy)]
pub struct FoldHasher(u64);

const SEED: u64 = 0xf135_7aea_2e62_a9c5;

impl FoldHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FoldHasher {
    fn write(&mut self, bytes: &[u8]) {
        // `str` hashing writes a 0xff after the bytes, so zero padding is unambiguous.
        for_each_word(bytes, |word| self.add(word));
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn names_that_differ_hash_apart_and_the_map_works() {
        let build = BuildHasherDefault::<FoldHasher>::default();
        let names = [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4o-mini-2024",
            "-",
            "o3",
            "o3 ",
            "claude-x",
        ];
        let hashes: Vec<u64> = names.iter().map(|n| build.hash_one(n)).collect();
        for (i, a) in hashes.iter().enumerate() {
            for b in &hashes[i + 1..] {
                assert_ne!(a, b);
            }
            // The bucket index (low bits) differs too.
            assert_eq!(hashes.iter().filter(|h| *h & 0xff == a & 0xff).count(), 1);
        }
        let mut map: SmallMap<String, u32> = small_map();
        for (i, name) in names.iter().enumerate() {
            map.insert(name.to_string(), i as u32);
        }
        for (i, name) in names.iter().enumerate() {
            assert_eq!(map.get(*name), Some(&(i as u32)));
        }
    }
}
