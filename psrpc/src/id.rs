//! Identifiers, as Go psrpc makes them: a prefix and 12 characters from a
//! 62-symbol alphabet.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

const ALPHABET: &[u8; 62] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// A table keyed by ids (pending calls, claims, streams, acks, clients):
/// hashed with foldhash, several times cheaper than the standard library's
/// SipHash on these short keys, and seeded per process and per table, so
/// that ids a peer chooses cannot be made to collide on purpose.
pub(crate) type IdMap<V> = std::collections::HashMap<String, V, foldhash::fast::RandomState>;

/// A table keyed by ids as bytes ([`IdKey`]), for the tables a call or a
/// stream message touches: ids read in place off the wire are looked up
/// without checking that they are UTF-8 (an id that is not matches no key,
/// all of which are), and a key costs no allocation.
pub(crate) type IdBytesMap<V> = std::collections::HashMap<IdKey, V, foldhash::fast::RandomState>;

/// How many bytes of an id an [`IdKey`] holds inline: every id psrpc
/// makes (and Go's) has 16.
const INLINE_ID: usize = 30;

/// An id as a table key: held inline up to [`INLINE_ID`] bytes, on the
/// heap beyond (a peer may choose any id). Looked up by `&[u8]`.
#[derive(Clone)]
pub(crate) enum IdKey {
    Inline { len: u8, bytes: [u8; INLINE_ID] },
    Heap(Box<[u8]>),
}

impl IdKey {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            IdKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            IdKey::Heap(b) => b,
        }
    }
}

impl From<&[u8]> for IdKey {
    fn from(id: &[u8]) -> Self {
        if id.len() <= INLINE_ID {
            let mut bytes = [0; INLINE_ID];
            bytes[..id.len()].copy_from_slice(id);
            IdKey::Inline {
                len: id.len() as u8,
                bytes,
            }
        } else {
            IdKey::Heap(id.into())
        }
    }
}

impl From<&str> for IdKey {
    fn from(id: &str) -> Self {
        id.as_bytes().into()
    }
}

impl std::borrow::Borrow<[u8]> for IdKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

// Hashed and compared as the bytes are, as `Borrow` requires.
impl std::hash::Hash for IdKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

impl PartialEq for IdKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for IdKey {}

impl std::fmt::Debug for IdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// Prefix of client ids.
pub const CLIENT_PREFIX: &str = "CLI_";
/// Prefix of server ids.
pub const SERVER_PREFIX: &str = "SRV_";
/// Prefix of request ids.
pub const REQUEST_PREFIX: &str = "REQ_";
/// Prefix of stream ids.
pub const STREAM_PREFIX: &str = "STR_";

thread_local! {
    // Seeded per thread from the process's random hasher keys (which the
    // standard library draws from the OS), the thread and the clock.
    static STATE: Cell<u64> = Cell::new({
        let mut h = RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        h.write(format!("{:?}", std::thread::current().id()).as_bytes());
        h.finish() | 1
    });
}

/// The next number of a per-thread wyrand generator: fast, not for secrets.
/// Ids only need to be unique; 62^12 (about 3 * 10^21) makes a collision
/// practically impossible.
pub(crate) fn next_u64() -> u64 {
    STATE.with(|s| {
        let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

/// A new id: `prefix` followed by 12 random alphanumeric characters.
pub fn new_id(prefix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 12);
    s.push_str(prefix);
    let mut n = 0;
    while n < 12 {
        let mut bits = next_u64();
        // Take 6-bit slices, keep those below 62 (no modulo bias).
        for _ in 0..10 {
            let v = (bits & 63) as usize;
            bits >>= 6;
            if v < 62 {
                s.push(ALPHABET[v] as char);
                n += 1;
                if n == 12 {
                    break;
                }
            }
        }
    }
    s
}

/// A new request id (`REQ_...`).
pub fn new_request_id() -> String {
    new_id(REQUEST_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn format_and_uniqueness() {
        let mut seen = HashSet::new();
        for p in [
            CLIENT_PREFIX,
            SERVER_PREFIX,
            REQUEST_PREFIX,
            STREAM_PREFIX,
            "",
        ] {
            for _ in 0..10_000 {
                let id = new_id(p);
                assert_eq!(id.len(), p.len() + 12);
                assert!(id.starts_with(p));
                assert!(id[p.len()..].bytes().all(|b| b.is_ascii_alphanumeric()));
                assert!(seen.insert(id));
            }
        }
        // every symbol of the alphabet shows up
        let all: HashSet<char> = (0..2000)
            .flat_map(|_| new_id("").chars().collect::<Vec<_>>())
            .collect();
        assert_eq!(all.len(), 62);
    }

    #[test]
    fn id_keys_are_their_bytes() {
        let mut t: IdBytesMap<usize> = IdBytesMap::default();
        let long = "L".repeat(INLINE_ID + 1);
        let ids = [
            "",
            "REQ_abcdefghijkl",
            &long[..INLINE_ID],
            &long,
            "\u{e9}t\u{e9}",
        ];
        for (i, id) in ids.iter().enumerate() {
            assert!(t.insert(IdKey::from(*id), i).is_none());
        }
        assert!(matches!(
            IdKey::from(&long[..INLINE_ID]),
            IdKey::Inline { .. }
        ));
        assert!(matches!(IdKey::from(long.as_str()), IdKey::Heap(_)));
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(t.get(id.as_bytes()), Some(&i), "{id:?}");
            assert_eq!(IdKey::from(*id).as_bytes(), id.as_bytes());
        }
        // A prefix, or the same bytes one longer, is another key.
        assert_eq!(t.get(&b"REQ_abcdefghijk"[..]), None);
        assert_eq!(t.get(&b"REQ_abcdefghijkl\0"[..]), None);
        assert_eq!(t.remove(long.as_bytes()), Some(3));
        assert_eq!(t.len(), ids.len() - 1);
    }
}
