//! Subjects: naming a channel's subject and checking it against what
//! nats-server takes (its control line, tokens, wildcards).

use psrpc::bus::Channel;
use psrpc::drops::Truncated;

use crate::error::{Error, Result};

/// nats-server's default `max_control_line`: the longest protocol line
/// (`PUB <subject> <size>`, `SUB <subject> <queue> <sid>`) it accepts before
/// closing the connection.
pub const DEFAULT_MAX_CONTROL_LINE: usize = 4096;

/// What a `PUB` or `SUB` line needs besides its subject (operation, queue
/// group, sizes, ids, separators), rounded up.
pub(crate) const CONTROL_LINE_OVERHEAD: usize = 64;

/// The longest subject (prefix included) the bus uses by default.
pub const DEFAULT_MAX_SUBJECT_LEN: usize = DEFAULT_MAX_CONTROL_LINE - CONTROL_LINE_OVERHEAD;

/// The longest subject a server with this `max_control_line` takes.
pub(crate) fn max_subject_for(max_control_line: usize) -> usize {
    max_control_line.saturating_sub(CONTROL_LINE_OVERHEAD)
}

/// The NATS subject of `channel` under `prefix` (empty for none).
pub(crate) fn subject(prefix: &str, channel: &Channel) -> String {
    if prefix.is_empty() {
        channel.server.clone()
    } else {
        format!("{prefix}.{}", channel.server)
    }
}

/// Checks that `subject` is one nats-server takes from this bus: at most
/// `max` bytes, non-empty dot-separated tokens, none of them a wildcard
/// (`*`, `>`), no whitespace or control characters.
pub(crate) fn check_subject(subject: &str, max: usize) -> Result<()> {
    let invalid = |why: String| {
        Err(Error::InvalidSubject {
            subject: Truncated(subject).to_string(),
            why,
        })
    };
    if subject.len() > max {
        return invalid(format!(
            "of {} bytes is longer than the bus's limit of {max} bytes \
             (nats-server's max_control_line, {DEFAULT_MAX_CONTROL_LINE} by default, \
             less protocol overhead)",
            subject.len()
        ));
    }
    // Every publish checks its subject: a quick scan of the bytes (see
    // `plain_subject`) finds whether anything needs a closer look (a byte that is not printable
    // ASCII, a dot next to a dot or an end, a wildcard character), and
    // subjects without any (nearly all) are accepted without the
    // character-by-character and token-by-token checks below.
    if plain_subject(subject.as_bytes()) {
        return Ok(());
    }
    if let Some(c) = subject
        .chars()
        .find(|c| c.is_whitespace() || c.is_control())
    {
        return invalid(format!("contains {c:?}"));
    }
    for token in subject.split('.') {
        match token {
            "" => return invalid("has an empty token".into()),
            "*" | ">" => return invalid(format!("has the wildcard token {token:?}")),
            _ => {}
        }
    }
    Ok(())
}

/// Whether `s` is a subject that passes [`check_subject`] (length aside) on
/// sight: non-empty, printable ASCII only (no whitespace or control
/// character), no `*` or `>` at all, no empty token. `false` means only
/// that the full check must decide.
fn plain_subject(s: &[u8]) -> bool {
    let (Some(&first), Some(&last)) = (s.first(), s.last()) else {
        return false;
    };
    if first == b'.' || last == b'.' {
        return false;
    }
    // Two passes without early exits or a carried byte, which the compiler
    // can vectorise (a subject is checked at every publish): no byte outside printable ASCII or a wildcard, then no dot
    // next to a dot.
    let odd = s.iter().fold(false, |acc, &b| {
        acc | !(0x21..0x7f).contains(&b) | (b == b'*') | (b == b'>')
    });
    let dots = s
        .iter()
        .zip(&s[1..])
        .fold(false, |acc, (&a, &b)| acc | ((a == b'.') & (b == b'.')));
    !(odd | dots)
}

#[cfg(test)]
mod tests {
    use super::check_subject;

    /// The vectorised scan agrees with a byte-by-byte reading of the rule
    /// on every subject of up to 4 bytes over the interesting bytes, and on
    /// long ones with one odd byte anywhere.
    #[test]
    fn plain_subject_agrees_with_the_rule() {
        fn rule(s: &[u8]) -> bool {
            !s.is_empty()
                && s.split(|&b| b == b'.').all(|t| !t.is_empty())
                && s.iter()
                    .all(|&b| (0x21..0x7f).contains(&b) && b != b'*' && b != b'>')
        }
        let alphabet = [b'a', b'.', b'*', b'>', b' ', 0x7f, 0x80, 0x21, 0x7e, 0x00];
        let mut cases: Vec<Vec<u8>> = vec![Vec::new()];
        for len in 1..=4 {
            let mut idx = vec![0usize; len];
            loop {
                cases.push(idx.iter().map(|&i| alphabet[i]).collect());
                let mut k = 0;
                while k < len {
                    idx[k] += 1;
                    if idx[k] < alphabet.len() {
                        break;
                    }
                    idx[k] = 0;
                    k += 1;
                }
                if k == len {
                    break;
                }
            }
        }
        let long = b"SRV.Service.Method.client-0123456789.RES.topic-a.b.c".to_vec();
        for i in 0..long.len() {
            for &odd in &alphabet {
                let mut c = long.clone();
                c[i] = odd;
                cases.push(c);
            }
        }
        for c in cases {
            assert_eq!(super::plain_subject(&c), rule(&c), "{c:?}");
        }
    }

    #[test]
    fn subjects_checked() {
        assert!(check_subject("SRV.a.b", 100).is_ok());
        for bad in ["", "a..b", "a.*", "a.>", "a b", "a\tb", ".a", "a."] {
            let e = check_subject(bad, 100).unwrap_err();
            assert_eq!(e.code(), psrpc::ErrorCode::InvalidArgument, "{bad:?}");
        }
        // The quick pass and the full check agree.
        for ok in ["a", "SRV.Bench", "CLI.Bench.c-1_x|y.RES", "a*b.c>d", "ü.b"] {
            assert!(check_subject(ok, 100).is_ok(), "{ok:?}");
        }
        for bad in ["a.*.b", ">", "a. b", "a.\u{7f}", "a.\u{a0}b"] {
            assert!(check_subject(bad, 100).is_err(), "{bad:?}");
        }
        let e = check_subject(&"a".repeat(101), 100).unwrap_err();
        assert!(e.to_string().contains("101 bytes"), "{e}");
    }
}
