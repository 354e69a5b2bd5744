//! The thin I/O shell: watches, caches, reconcilers that call the core and apply its result.
//!
//! `run` is the process (client, leader election, endpoints, shutdown), `controllers` the two
//! controllers and their tasks, `watches` what fills the caches, `error` and `error_policy`
//! what a failure is and what follows it; `feature` and `policy` are the reconcilers.

pub mod apply;
pub mod capacity;
pub mod context;
pub mod controllers;
pub mod deletion;
pub mod echoes;
pub mod error;
pub mod error_policy;
pub mod feature;
pub mod graph;
pub mod index;
pub mod lane;
pub mod memory;
pub mod owned;
pub mod policy;
pub mod retry;
pub mod run;
pub mod sync;
pub mod union;
pub mod watches;

use std::sync::atomic::Ordering;

use kube::Resource;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use tracing::warn;

use crate::runtime::metrics::{ControllerLabels, ErrorLabels};
use context::Context;
pub use error::{Error, ErrorKind};
pub use run::{RunArgs, main, run};

/// Finalizer that lets dependents be torn down before their dependencies.
pub const FINALIZER: &str = "premium.dev/teardown";

/// The object inside a guard; a malformed one is logged and counted instead, so it never
/// stalls the others.
fn valid_or_report<'a, K>(
    guard: &'a DeserializeGuard<K>,
    ctx: &Context,
    controller: &'static str,
) -> Option<&'a K>
where
    K: Resource<DynamicType = ()>,
{
    match &guard.0 {
        Ok(k) => Some(k),
        Err(invalid) => {
            warn!(
                kind = %K::kind(&()),
                name = invalid.metadata.name.as_deref().unwrap_or(""),
                namespace = invalid.metadata.namespace.as_deref().unwrap_or(""),
                error = %invalid.error,
                "skipping an object that does not match the schema"
            );
            ctx.metrics
                .reconcile_errors
                .get_or_create(&ErrorLabels::new(controller, ErrorKind::InvalidObject))
                .inc();
            None
        }
    }
}

/// Counts a running feature reconcile until dropped (also when the reconcile is cancelled):
/// the back lane feeds new features only while few run.
struct InFlight<'a>(&'a Context);

impl<'a> InFlight<'a> {
    fn enter(ctx: &'a Context) -> Self {
        ctx.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(ctx)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs one reconcile, counting it and timing it.
async fn measured(
    ctx: &Context,
    controller: &'static str,
    reconcile: impl std::future::Future<Output = Result<Action, Error>>,
) -> Result<Action, Error> {
    let labels = ControllerLabels { controller };
    ctx.metrics.reconciles.get_or_create(&labels).inc();
    let started = std::time::Instant::now();
    let counted = (controller == "feature").then(|| InFlight::enter(ctx));
    let result = reconcile.await;
    drop(counted);
    ctx.metrics
        .reconcile_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
}
