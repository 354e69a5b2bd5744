//! Stopping: one flag that SIGTERM, Ctrl-C or a lost lease raises, and that every part of the
//! process (the HTTP server, the controllers) waits on.

use futures::FutureExt;
use tokio::sync::watch;
use tracing::info;

/// A stop request, shared by everything that must end with the process. Raised once, it stays
/// raised: whoever starts waiting later sees it at once.
#[derive(Debug, Clone)]
pub struct Stop(watch::Sender<bool>);

impl Default for Stop {
    fn default() -> Self {
        Self(watch::Sender::new(false))
    }
}

impl Stop {
    /// Asks everything waiting on [`Stop::requested`] to stop.
    pub fn request(&self) {
        self.0.send_replace(true);
    }

    /// Resolves once a stop is requested (at once if it already was).
    pub fn requested(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    /// Requests a stop on SIGTERM or Ctrl-C, from a task of its own.
    pub fn on_signal(&self) {
        let stop = self.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            info!("shutdown requested");
            stop.request();
        });
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c().map(|_| ());
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => ctrl_c.await,
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stop_reaches_waiters_from_before_and_after_it() {
        let stop = Stop::default();
        let early = stop.requested();
        let mut early = std::pin::pin!(early);
        assert!(
            futures::poll!(early.as_mut()).is_pending(),
            "nothing asked to stop yet"
        );
        stop.clone().request();
        assert!(futures::poll!(early.as_mut()).is_ready());
        // Whoever starts waiting after the request does not wait.
        assert!(futures::poll!(std::pin::pin!(stop.requested())).is_ready());
    }
}
