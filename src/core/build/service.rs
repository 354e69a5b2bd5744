use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{owned_meta, selector_labels};
use crate::api::PremiumFeature;
use crate::core::sidecar::ENVOY_INBOUND_PORT;

/// The Service `<name>`: the feature's port, answered by the sidecar's inbound listener so every
/// request passes the local circuit breaker.
pub fn service(feature: &PremiumFeature) -> Service {
    Service {
        metadata: owned_meta(feature, feature.name_any()),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(feature)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: feature.spec.port,
                target_port: Some(IntOrString::Int(i32::from(ENVOY_INBOUND_PORT))),
                protocol: Some("TCP".into()),
                app_protocol: Some("http".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::build::testing;

    #[test]
    fn points_at_the_sidecar() {
        let s = service(&testing::feature());
        let spec = s.spec.unwrap();
        let port = &spec.ports.unwrap()[0];
        assert_eq!(port.port, 9898);
        assert_eq!(port.target_port, Some(IntOrString::Int(15006)));
        assert_eq!(spec.selector.unwrap()["premium.dev/feature"], "aika");
    }
}
