//! JSON logs through `tracing`.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber: JSON lines on stderr, level from `RUST_LOG` (default info).
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
    // A subscriber already installed (tests) is fine.
    let _ = result;
}
