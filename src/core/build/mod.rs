//! Builders of the objects a feature owns: Deployment, Service, ConfigMap and HPA, and of the
//! Events it records.
//!
//! Each builder returns the complete object the operator applies with server-side apply, from
//! the feature and a [`FeaturePlan`] of already-decided values; nothing here reads the cluster.

mod configmap;
mod deployment;
mod event;
mod hpa;
mod service;

pub use configmap::sidecar_configmap;
pub use deployment::{deployment, env_clashes, is_reserved_env_name};
pub use event::{EventSource, event};
pub use hpa::hpa;
pub use service::service;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::api::{FEATURE_LABEL, MANAGED_BY, MANAGED_BY_LABEL, PremiumFeature};
use crate::core::settings::PoolSettings;
use crate::core::sidecar::{RenderedSidecar, Upstream};

/// Annotation on the pod template carrying the hash of the Envoy listeners: pods roll only when
/// listeners change, cluster and route changes reload in place.
pub const LISTENERS_HASH_ANNOTATION: &str = "premium.dev/listeners-hash";
/// Annotation on the pod template set by an automatic recovery restart.
pub const RESTARTED_AT_ANNOTATION: &str = "premium.dev/restartedAt";
/// Default Envoy image; an operator setting (`--sidecar-image`).
pub const DEFAULT_SIDECAR_IMAGE: &str = "envoyproxy/envoy:v1.36.2";
/// Name of the application container.
pub const APP_CONTAINER: &str = "app";
/// Name of the Envoy sidecar container.
pub const SIDECAR_CONTAINER: &str = "envoy";

/// Values decided by the controller for one feature, from the graph, policies and budget.
#[derive(Debug, Clone, PartialEq)]
pub struct FeaturePlan {
    /// Replicas the Deployment asks for: 0 while gated.
    pub replicas: i32,
    /// Whether an HPA should exist (not while gated, suspended or waiting for budget).
    pub autoscale: bool,
    /// Pool bounds after defaults.
    pub pool: PoolSettings,
    /// HPA maximum after the shared budget.
    pub hpa_max_replicas: u32,
    /// The rendered Envoy configuration.
    pub sidecar: RenderedSidecar,
    /// Dependencies in `dependsOn` order, as handed to the sidecar renderer.
    pub upstreams: Vec<Upstream>,
    /// Envoy image.
    pub sidecar_image: String,
    /// Value for [`RESTARTED_AT_ANNOTATION`], once a recovery restart happened.
    pub restarted_at: Option<String>,
}

/// Labels on every owned object.
pub fn labels(feature: &PremiumFeature) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (FEATURE_LABEL.to_string(), feature.name_any()),
    ])
}

/// Labels that select the feature's pods.
pub fn selector_labels(feature: &PremiumFeature) -> BTreeMap<String, String> {
    BTreeMap::from([(FEATURE_LABEL.to_string(), feature.name_any())])
}

/// Metadata of an owned object: name, namespace, labels and a controller owner reference.
fn owned_meta(feature: &PremiumFeature, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: feature.namespace(),
        labels: Some(labels(feature)),
        owner_references: feature.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    }
}

/// Name of the sidecar ConfigMap.
pub fn sidecar_configmap_name(feature_name: &str) -> String {
    format!("{feature_name}-sidecar")
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::api::{Dependency, HealthCheck, PremiumFeatureSpec};
    use crate::core::sidecar::{SidecarSpec, TrafficPolicy, render};

    pub fn feature() -> PremiumFeature {
        let mut f = PremiumFeature::new(
            "aika",
            PremiumFeatureSpec {
                image: "ghcr.io/stefanprodan/podinfo:6.7.1".into(),
                port: 9898,
                health_check: Some(HealthCheck {
                    path: "/readyz".into(),
                    ..Default::default()
                }),
                depends_on: vec![
                    Dependency {
                        name: "catalog".into(),
                        ..Default::default()
                    },
                    Dependency {
                        name: "skill-exchange".into(),
                        optional: true,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
        );
        f.metadata.namespace = Some("portal".into());
        f.metadata.uid = Some("1234".into());
        f
    }

    pub fn plan(feature: &PremiumFeature, replicas: i32) -> FeaturePlan {
        let upstreams: Vec<Upstream> = feature
            .spec
            .depends_on
            .iter()
            .map(|d| Upstream {
                name: d.name.clone(),
                namespace: "portal".into(),
                port: Some(9898),
                capacity: Default::default(),
            })
            .collect();
        let sidecar = render(&SidecarSpec {
            feature: feature.name_any(),
            namespace: "portal".into(),
            app_port: 9898,
            upstreams: upstreams.clone(),
            traffic: TrafficPolicy::default(),
        });
        FeaturePlan {
            replicas,
            autoscale: replicas > 0,
            pool: PoolSettings {
                min_replicas: 1,
                max_replicas: 6,
                target_cpu_utilization_percentage: 70,
                weight: 2,
                scale_down_stabilization_seconds: Some(300),
            },
            hpa_max_replicas: 4,
            sidecar,
            upstreams,
            sidecar_image: DEFAULT_SIDECAR_IMAGE.into(),
            restarted_at: None,
        }
    }
}
