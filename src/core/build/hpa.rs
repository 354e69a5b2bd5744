use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use kube::ResourceExt;

use super::{FeaturePlan, owned_meta};
use crate::api::PremiumFeature;

/// The HPA `<name>` (autoscaling/v2), or `None` while the feature must not scale (gated,
/// suspended, waiting for budget).
pub fn hpa(feature: &PremiumFeature, plan: &FeaturePlan) -> Option<HorizontalPodAutoscaler> {
    if !plan.autoscale {
        return None;
    }
    let min = plan.pool.min_replicas.max(1);
    let max = plan.hpa_max_replicas.max(min);
    Some(HorizontalPodAutoscaler {
        metadata: owned_meta(feature, feature.name_any()),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: feature.name_any(),
            },
            min_replicas: Some(clamp_i32(min)),
            max_replicas: clamp_i32(max),
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(plan.pool.target_cpu_utilization_percentage),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }]),
            behavior: plan.pool.scale_down_stabilization_seconds.map(|secs| {
                HorizontalPodAutoscalerBehavior {
                    scale_down: Some(HPAScalingRules {
                        stabilization_window_seconds: Some(secs),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            }),
        }),
        ..Default::default()
    })
}

fn clamp_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::build::testing;

    #[test]
    fn bounds_come_from_pool_and_budget() {
        let f = testing::feature();
        let h = hpa(&f, &testing::plan(&f, 1)).unwrap();
        let spec = h.spec.unwrap();
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(1), 4));
        assert_eq!(spec.scale_target_ref.name, "aika");
        let window = spec
            .behavior
            .unwrap()
            .scale_down
            .unwrap()
            .stabilization_window_seconds;
        assert_eq!(window, Some(300));
        let target = &spec.metrics.unwrap()[0];
        assert_eq!(
            target.resource.as_ref().unwrap().target.average_utilization,
            Some(70)
        );
    }

    #[test]
    fn none_while_gated() {
        let f = testing::feature();
        assert!(hpa(&f, &testing::plan(&f, 0)).is_none());
    }

    #[test]
    fn max_never_below_min() {
        let f = testing::feature();
        let mut p = testing::plan(&f, 1);
        p.pool.min_replicas = 3;
        p.hpa_max_replicas = 2;
        let spec = hpa(&f, &p).unwrap().spec.unwrap();
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(3), 3));
    }
}
