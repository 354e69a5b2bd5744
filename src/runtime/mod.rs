//! Process plumbing: logs, metrics, the HTTP endpoints, leader election and shutdown.

pub mod heap;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;
