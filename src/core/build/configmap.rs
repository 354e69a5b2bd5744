use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;

use super::{FeaturePlan, owned_meta, sidecar_configmap_name};
use crate::api::PremiumFeature;

/// The ConfigMap `<name>-sidecar` with the Envoy bootstrap, clusters and routes.
pub fn sidecar_configmap(feature: &PremiumFeature, plan: &FeaturePlan) -> ConfigMap {
    ConfigMap {
        metadata: owned_meta(feature, sidecar_configmap_name(&feature.name_any())),
        data: Some(plan.sidecar.files()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::build::testing;
    use crate::core::sidecar::{FILE_BOOTSTRAP, FILE_CLUSTERS};

    #[test]
    fn holds_every_sidecar_file_and_is_owned() {
        let f = testing::feature();
        let cm = sidecar_configmap(&f, &testing::plan(&f, 1));
        assert_eq!(cm.metadata.name.as_deref(), Some("aika-sidecar"));
        let data = cm.data.unwrap();
        assert!(data.contains_key(FILE_BOOTSTRAP) && data.contains_key(FILE_CLUSTERS));
        assert!(data.keys().any(|k| k.starts_with("rds.")));
        let owner = &cm.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("PremiumFeature", Some(true))
        );
    }
}
