//! Leader election on a Lease (kube-lease-manager): only the holder reconciles and writes.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub lease_name: String,
    pub namespace: String,
    pub identity: String,
    /// A holder that has not renewed for this long loses the lease.
    pub duration: Duration,
    /// The holder renews this long before expiry.
    pub grace: Duration,
}

/// A running election: `is_leader` flips as the lease is won or lost.
pub struct Election {
    pub is_leader: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

impl Election {
    pub async fn start(client: Client, cfg: &LeaderConfig) -> kube_lease_manager::Result<Self> {
        let manager = LeaseManagerBuilder::new(client, &cfg.lease_name)
            .with_namespace(&cfg.namespace)
            .with_identity(&cfg.identity)
            .with_duration(cfg.duration.as_secs().max(2))
            .with_grace(cfg.grace.as_secs().max(1))
            .with_field_manager(format!("premium-operator-lease-{}", cfg.identity))
            .build()
            .await?;
        let (is_leader, task) = manager.watch().await;
        Ok(Self { is_leader, task })
    }

    /// Waits until this instance holds the lease.
    pub async fn acquired(&mut self) -> bool {
        loop {
            if *self.is_leader.borrow_and_update() {
                return true;
            }
            if self.is_leader.changed().await.is_err() {
                return false;
            }
        }
    }

    /// Stops renewing and hands the lease back so a standby takes over at once.
    pub async fn release(self) {
        drop(self.is_leader);
        match self.task.await {
            Ok(Ok(manager)) => {
                if let Err(e) = manager.release().await {
                    tracing::warn!(error = %e, "could not release the leader lease; it expires by itself");
                } else {
                    tracing::info!("released the leader lease");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "lease manager failed"),
            Err(e) => tracing::warn!(error = %e, "lease manager task failed"),
        }
    }
}
