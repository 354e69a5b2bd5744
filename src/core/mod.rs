//! The pure decision core: no client, no I/O. Every function here is deterministic and tested
//! beside its code.

pub mod budget;
pub mod build;
pub mod capacity;
pub mod decide;
pub mod drift;
pub mod fair;
pub mod graph;
pub mod plan;
pub mod policy;
pub mod settings;
pub mod sidecar;
pub mod signal;
pub mod slots;
pub mod status;
pub mod teardown;

/// Longest message the operator writes into a status (a condition, a `blockedBy` entry): a user's
/// string can reach a message (quoted, or inside an API server refusal), and a status over what
/// etcd stores would fail on every retry.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Longest part of a user's value quoted in a message: enough to recognise it.
pub const MAX_QUOTED_BYTES: usize = 64;

/// A message as written into a status: at most [`MAX_MESSAGE_BYTES`] (plus the cut marker).
pub fn bounded_message(text: &str) -> String {
    shorten(text, MAX_MESSAGE_BYTES)
}

/// A user's value quoted for a message, shortened when long and then saying how long it was.
pub fn quoted(value: &str) -> String {
    if value.len() <= MAX_QUOTED_BYTES {
        format!("{value:?}")
    } else {
        format!(
            "{:?} ({} bytes)",
            shorten(value, MAX_QUOTED_BYTES),
            value.len()
        )
    }
}

/// `text` cut to at most `max_bytes` on a character boundary, with `…` appended when cut (for
/// messages the API server limits in size).
pub fn shorten(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_string();
    }
    let mut cut = max_bytes;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shortens_on_a_character_boundary() {
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("abcd", 3), "abc…");
        // "é" is two bytes: a cut inside it backs off to before it.
        assert_eq!(shorten("aéb", 2), "a…");
    }

    #[test]
    fn long_values_are_quoted_shortened_with_their_size() {
        assert_eq!(quoted("half a core"), "\"half a core\"");
        let long = "x".repeat(600 * 1024);
        let q = quoted(&long);
        assert!(q.len() < MAX_QUOTED_BYTES + 40, "{q}");
        assert!(q.ends_with("(614400 bytes)"), "{q}");
    }

    proptest! {
        #[test]
        fn messages_stay_bounded(text in "\\PC{0,3000}") {
            let m = bounded_message(&text);
            prop_assert!(m.len() <= MAX_MESSAGE_BYTES + '…'.len_utf8());
            prop_assert!(text.starts_with(m.trim_end_matches('…')));
        }
    }
}
