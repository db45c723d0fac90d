//! The turns recorded this second. Every first turn and every moved turn records which key
//! served its conversation, under the session table's one lock; when many clients continue the
//! same conversations at once, that lock and the entry's line of memory go from core to core on
//! every request (c64 bench: SESSION_AFFINITY=on cost ~2 % more rps than the same build without
//! the record). A turn served by the key its conversation was recorded with earlier in the same
//! second changes nothing but the entry's last use, so it is not written again: a look at one
//! slot that no one writes to, instead of a lock.
//!
//! A slot holds a 32-bit tag of the last (conversation, key) noted in it and the second it was
//! noted in. Two pairs racing for a slot can leave the older one's tag there for up to a
//! second, and a record from another instance (the shared store) clears its conversation's
//! slot: at worst a turn is not recorded again within that second, and its conversation keeps
//! the key the table holds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Slots (8 bytes each): conversations seen within one second beyond this share slots, and a
/// shared slot only means more writes, never a wrong answer.
const SLOTS: usize = 1024;

/// The (conversation, key) pairs noted in the current second.
#[derive(Debug)]
pub struct Recent {
    slots: Box<[AtomicU64]>,
    started: Instant,
}

impl Recent {
    pub fn new() -> Recent {
        Recent {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            started: Instant::now(),
        }
    }

    /// Whether `key` serving `conversation` was noted earlier in `now`'s second.
    pub fn seen(&self, conversation: u64, key: u64, now: Instant) -> bool {
        let (slot, tag) = self.slot_and_tag(conversation, key, now);
        slot.load(Ordering::Relaxed) == tag
    }

    /// Notes that `key` served `conversation` in `now`'s second.
    pub fn note(&self, conversation: u64, key: u64, now: Instant) {
        let (slot, tag) = self.slot_and_tag(conversation, key, now);
        slot.store(tag, Ordering::Relaxed);
    }

    /// Clears what was noted for `conversation`'s slot (the table changed under it).
    pub fn forget(&self, conversation: u64) {
        self.slots[(conversation % SLOTS as u64) as usize].store(0, Ordering::Relaxed);
    }

    fn slot_and_tag(&self, conversation: u64, key: u64, now: Instant) -> (&AtomicU64, u64) {
        let second = now.saturating_duration_since(self.started).as_secs();
        let mixed = (conversation ^ key.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // Second 0 with a zero hash would match an empty slot: the second counts from 1.
        let tag = (mixed & !0xffff_ffff) | ((second + 1) & 0xffff_ffff);
        (&self.slots[(conversation % SLOTS as u64) as usize], tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_pair_is_seen_within_its_second_only() {
        let recent = Recent::new();
        let now = recent.started + Duration::from_millis(10);
        assert!(!recent.seen(7, 1, now), "nothing noted yet");
        recent.note(7, 1, now);
        assert!(recent.seen(7, 1, now + Duration::from_millis(500)));
        assert!(!recent.seen(7, 2, now), "another key");
        assert!(!recent.seen(8, 1, now), "another conversation");
        assert!(
            !recent.seen(7, 1, now + Duration::from_secs(1)),
            "the next second"
        );
        recent.note(7, 2, now);
        assert!(!recent.seen(7, 1, now), "the slot now holds the newer pair");
        assert!(recent.seen(7, 2, now));
        recent.forget(7);
        assert!(!recent.seen(7, 2, now), "forgotten");
    }
}
