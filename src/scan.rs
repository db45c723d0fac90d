//! Finding a byte in a body eight bytes at a time. The request path looks through every body
//! for quotes (ids, usage, a conversation's messages); `iter().position` compiles to a loop of
//! one byte per step, and these scans were ~20 % of keyrelay's instructions per request
//! (callgrind, 2026-12-07). std's own word-at-a-time search is not public for `[u8]`.

const LOW: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The index of the first `a` in `haystack`.
pub fn find_byte(haystack: &[u8], a: u8) -> Option<usize> {
    find_where(
        haystack,
        |word| zero_byte(word ^ LOW.wrapping_mul(a as u64)),
        |b| b == a,
    )
}

/// The index of the first `a` or `b` in `haystack`.
pub fn find_either(haystack: &[u8], a: u8, b: u8) -> Option<usize> {
    let (wa, wb) = (LOW.wrapping_mul(a as u64), LOW.wrapping_mul(b as u64));
    find_where(
        haystack,
        |word| zero_byte(word ^ wa) | zero_byte(word ^ wb),
        |x| x == a || x == b,
    )
}

/// Where `needle` first is in `haystack`: a jump from one of its first byte to the next (fast
/// when that byte is rare, as a `j` in a content type), not a comparison at every byte.
pub fn find_bytes(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    find_bytes_by(haystack, needle, 0)
}

/// [`find_bytes`], jumping between the occurrences of `needle[anchor]` instead: the needle's
/// rarest byte (the `g` of `"usage`, where JSON holds a quote every few bytes). The rest of the
/// needle is compared in place (a `starts_with` was a `memcmp` call at every stop, and
/// `str::contains` sets up a two-way search for a 4-byte needle).
pub fn find_bytes_by(haystack: &[u8], needle: &[u8], anchor: usize) -> Option<usize> {
    let &rare = needle.get(anchor)?;
    let mut at = anchor;
    while let Some(pos) = find_byte(haystack.get(at..)?, rare) {
        let start = at + pos - anchor;
        let window = haystack.get(start..start + needle.len());
        if window.is_some_and(|window| window.iter().zip(needle).all(|(a, b)| a == b)) {
            return Some(start);
        }
        at += pos + 1;
    }
    None
}

/// `bytes` as little-endian 64-bit words, in order, the last one zero-padded (for hashes that
/// take eight bytes a step; a caller whose inputs differ only in trailing zeros mixes in their
/// lengths).
pub fn for_each_word(bytes: &[u8], mut each: impl FnMut(u64)) {
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(word);
        each(u64::from_le_bytes(eight));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut eight = [0u8; 8];
        eight[..rest.len()].copy_from_slice(rest);
        each(u64::from_le_bytes(eight));
    }
}

/// Word by word while `hit` says no eight bytes hold a match, then, in the word that does,
/// the lowest flagged byte (`hit` may flag a byte falsely only above a true match, never below
/// one, so the lowest is a true match); the last few bytes one by one.
fn find_where(haystack: &[u8], hit: impl Fn(u64) -> u64, is: impl Fn(u8) -> bool) -> Option<usize> {
    let mut at = 0;
    while at + 8 <= haystack.len() {
        let word = u64::from_le_bytes(haystack[at..at + 8].try_into().unwrap());
        let flagged = hit(word);
        if flagged != 0 {
            return Some(at + (flagged.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    haystack[at..]
        .iter()
        .position(|&x| is(x))
        .map(|pos| at + pos)
}

/// Non-zero when some byte of `word` is zero: the high bit of each byte that is zero is set,
/// and a byte above a zero byte may be flagged falsely, a byte below one never.
fn zero_byte(word: u64) -> u64 {
    word.wrapping_sub(LOW) & !word & HIGH
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_match_at_every_offset_and_length() {
        for len in 0..40 {
            for pos in 0..=len {
                let mut hay: Vec<u8> = (0..len).map(|i| b'a' + (i % 20) as u8).collect();
                // Bytes next to the target that trip naive bit tricks (0x80, 0x21, 0x23).
                hay.iter_mut().step_by(3).for_each(|b| *b = 0x80);
                hay.iter_mut().skip(1).step_by(5).for_each(|b| *b = b'#');
                if pos < len {
                    hay[pos] = b'"';
                    // Above a match: a second one, or a byte one more than the target (`#`
                    // after `"`, `]` after `\`), which a borrow flags falsely.
                    if pos + 1 < len {
                        hay[pos + 1] = [b'"', b'#', b']'][pos % 3];
                    }
                }
                let want = hay.iter().position(|&b| b == b'"');
                assert_eq!(find_byte(&hay, b'"'), want, "len {len} pos {pos}");
                let want = hay.iter().position(|&b| b == b'"' || b == b'\\');
                assert_eq!(find_either(&hay, b'"', b'\\'), want, "len {len} pos {pos}");
            }
        }
        assert_eq!(find_either(b"abcdefghij\\k\"", b'"', b'\\'), Some(10));
        assert_eq!(find_byte(&[0u8; 17], 0), Some(0));
        assert_eq!(
            find_bytes(br#"{"st":1,"store":true}"#, br#""store""#),
            Some(8)
        );
        assert_eq!(find_bytes(br#"{"stored":1}"#, br#""store""#), None);
        assert_eq!(
            find_bytes(b"application/json; charset=utf-8", b"json"),
            Some(12)
        );
        assert_eq!(find_bytes(b"application/jso", b"json"), None);
        assert_eq!(find_bytes(b"jjjson", b"json"), Some(2));
        // By the needle's rarest byte: the same first match, at every offset.
        let needle = br#""usage"#;
        for at in 0..24 {
            let mut hay = br#"{"u":"g","usa":"usage ug"}"#.to_vec();
            hay.extend_from_slice(&hay.clone());
            hay.splice(at..at, needle.iter().copied());
            let want = hay.windows(needle.len()).position(|w| w == needle);
            assert_eq!(find_bytes_by(&hay, needle, 4), want, "at {at}");
            assert_eq!(find_bytes(&hay, needle), want, "at {at}");
        }
        assert_eq!(find_bytes_by(b"usage", needle, 4), None);
        assert_eq!(find_bytes_by(b"\"usag", needle, 4), None);
        assert_eq!(find_byte(&[1u8; 17], 0), None);
        let mut words = Vec::new();
        for_each_word(b"abcdefghij", |w| words.push(w));
        assert_eq!(
            words,
            [
                u64::from_le_bytes(*b"abcdefgh"),
                u64::from_le_bytes(*b"ij\0\0\0\0\0\0")
            ]
        );
    }
}
