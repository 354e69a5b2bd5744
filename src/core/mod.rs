//! The pure decision core: no client, no I/O. Every function here is deterministic and tested
//! beside its code.

pub mod budget;
pub mod build;
pub mod drift;
pub mod fair;
pub mod graph;
pub mod plan;
pub mod policy;
pub mod settings;
pub mod sidecar;
pub mod signal;
pub mod status;

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
    use super::shorten;

    #[test]
    fn shortens_on_a_character_boundary() {
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("abcd", 3), "abc…");
        // "é" is two bytes: a cut inside it backs off to before it.
        assert_eq!(shorten("aéb", 2), "a…");
    }
}
