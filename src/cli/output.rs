//! Writing a command's report to standard output.
//!
//! `print!` panics when the reader has gone away (`premium-operator check dir | head`): Rust
//! ignores SIGPIPE, so the write fails with `BrokenPipe` and `print!` turns that into a panic and
//! exit code 101. A reader that stopped reading has taken what it wanted; that is not an error
//! of ours, so the rest of the output is dropped and the command keeps its own exit code.

use std::io::{self, Write};

/// Writes `text` to standard output and flushes it. A closed pipe counts as success; any other
/// failure (a full disk behind a redirect) is returned so the caller can say so.
pub fn emit(text: &str) -> io::Result<()> {
    emit_to(&mut io::stdout().lock(), text)
}

fn emit_to(out: &mut impl Write, text: &str) -> io::Result<()> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// [`emit`] for a command whose report is all it prints: a write error other than a closed pipe
/// goes to standard error and turns the exit code into a failure.
pub fn emit_report(text: &str, code: std::process::ExitCode) -> std::process::ExitCode {
    match emit(text) {
        Ok(()) => code,
        Err(e) => {
            eprintln!("error: cannot write to standard output: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader has gone, or that fails in another way.
    struct Failing(io::ErrorKind);

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(self.0))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_is_not_an_error() {
        assert!(emit_to(&mut Failing(io::ErrorKind::BrokenPipe), "plan\n").is_ok());
    }

    #[test]
    fn other_write_errors_are_reported() {
        let err = emit_to(&mut Failing(io::ErrorKind::StorageFull), "plan\n").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    }

    #[test]
    fn text_is_written_whole() {
        let mut out = Vec::new();
        emit_to(&mut out, "a\nb\n").unwrap();
        assert_eq!(out, b"a\nb\n");
    }
}
