//! `premium-operator crd`: the CustomResourceDefinitions as YAML.

use kube::CustomResourceExt;

use crate::api::{PremiumFeature, PremiumPolicy};

/// The CRDs as one multi-document YAML stream, exactly what `crds/` holds.
pub fn render_crds() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in [PremiumFeature::crd(), PremiumPolicy::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
