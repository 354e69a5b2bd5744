//! Resolves a feature's own settings over its effective policy into plain values.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::Duration;

use crate::api::duration::{DurationError, parse_duration};
use crate::api::quantity::{self, Quantity};
use crate::api::{PremiumFeature, PremiumPolicySpec, WhileDependents};
use crate::core::sidecar;
use crate::core::{MAX_QUOTED_BYTES, quoted, shorten};

/// Start-up timeout when neither the feature nor a policy sets one.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(300);
/// Restarts per hour when a policy turns recovery on without a limit.
pub const DEFAULT_MAX_RESTARTS_PER_HOUR: u32 = 3;
/// CPU target when neither the feature nor a policy sets one.
pub const DEFAULT_TARGET_CPU: i32 = 80;

/// A feature's replica pool after defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub target_cpu_utilization_percentage: i32,
    pub weight: u32,
    /// HPA scale-down stabilization, when a policy sets it.
    pub scale_down_stabilization_seconds: Option<i32>,
}

/// Effective min/max: the feature's own values over the policy defaults, then min ≤ max.
pub fn pool_settings(feature: &PremiumFeature, policy: &PremiumPolicySpec) -> PoolSettings {
    let own = feature.spec.pool.clone().unwrap_or_default();
    let pool = policy.pool.clone().unwrap_or_default();
    let defaults = pool.defaults.unwrap_or_default();
    let positive = |v: Option<i32>| v.map(|v| v.max(1) as u32);
    let min = positive(own.min_replicas)
        .or(positive(defaults.min_replicas))
        .unwrap_or(1);
    let max = positive(own.max_replicas)
        .or(positive(defaults.max_replicas))
        .unwrap_or(min);
    // A feature that only lowers max below the policy's min gets min = max rather than an error:
    // its own explicit bound wins.
    let min = if own.max_replicas.is_some() && own.min_replicas.is_none() {
        min.min(max)
    } else {
        min
    };
    PoolSettings {
        min_replicas: min,
        max_replicas: max.max(min),
        target_cpu_utilization_percentage: own
            .target_cpu_utilization_percentage
            .or(defaults.target_cpu_utilization_percentage)
            .unwrap_or(DEFAULT_TARGET_CPU),
        weight: own.weight.map(|w| w.max(1) as u32).unwrap_or(1),
        scale_down_stabilization_seconds: pool.scale_down.map(|s| s.stabilization_window_seconds),
    }
}

/// The feature's start-up timeout: its own, else the policy's, else five minutes.
pub fn startup_timeout(
    feature: &PremiumFeature,
    policy: &PremiumPolicySpec,
) -> Result<Duration, DurationError> {
    match feature
        .spec
        .startup_timeout
        .as_deref()
        .or(policy.startup.as_ref().and_then(|s| s.timeout.as_deref()))
    {
        Some(s) => parse_duration(s),
        None => Ok(DEFAULT_STARTUP_TIMEOUT),
    }
}

/// What deleting the feature does while dependents remain: the merged policy's choice, else
/// `Proceed` (the behaviour before the setting existed, so that adding the field changes
/// nothing for anyone who does not set it).
pub fn while_dependents(policy: &PremiumPolicySpec) -> WhileDependents {
    policy
        .deletion
        .as_ref()
        .and_then(|d| d.while_dependents)
        .unwrap_or_default()
}

/// Automatic recovery, when a policy turns it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoverySettings {
    pub restart_after: Duration,
    pub max_restarts_per_hour: u32,
}

pub fn recovery_settings(
    policy: &PremiumPolicySpec,
) -> Result<Option<RecoverySettings>, DurationError> {
    let Some(r) = &policy.recovery else {
        return Ok(None);
    };
    Ok(Some(RecoverySettings {
        restart_after: parse_duration(&r.restart_after)?,
        max_restarts_per_hour: r
            .max_restarts_per_hour
            .map(|n| n.max(0) as u32)
            .unwrap_or(DEFAULT_MAX_RESTARTS_PER_HOUR),
    }))
}

fn ms(s: Option<&str>) -> Result<Option<u64>, DurationError> {
    s.map(|s| parse_duration(s).map(|d| d.as_millis() as u64))
        .transpose()
}

fn u32_of(v: Option<i64>) -> Option<u32> {
    v.map(|v| v.clamp(0, u32::MAX as i64) as u32)
}

/// The sidecar's traffic settings from the merged policy.
pub fn traffic_policy(policy: &PremiumPolicySpec) -> Result<sidecar::TrafficPolicy, DurationError> {
    let cb = policy.circuit_breaker.clone().unwrap_or_default();
    let timeouts = policy.timeouts.clone().unwrap_or_default();
    let outlier = match &policy.outlier_detection {
        Some(o) => Some(sidecar::OutlierDetection {
            consecutive_5xx: u32_of(o.consecutive_5xx),
            interval_ms: ms(o.interval.as_deref())?,
            base_ejection_time_ms: ms(o.base_ejection_time.as_deref())?,
            max_ejection_percent: o.max_ejection_percent.map(|p| p.clamp(0, 100) as u32),
        }),
        None => None,
    };
    let retry = match &policy.retries {
        Some(r) => Some(sidecar::RetryPolicy {
            attempts: r.attempts.max(0) as u32,
            per_try_timeout_ms: ms(r.per_try_timeout.as_deref())?,
            retry_on: r
                .retry_on
                .clone()
                .unwrap_or_else(|| "5xx,reset,connect-failure".to_string()),
        }),
        None => None,
    };
    Ok(sidecar::TrafficPolicy {
        max_connections: u32_of(cb.max_connections),
        max_pending_requests: u32_of(cb.max_pending_requests),
        max_requests: u32_of(cb.max_requests),
        max_retries: u32_of(cb.max_retries),
        retry_budget: cb.retry_budget.map(|b| sidecar::RetryBudget {
            budget_percent: b.budget_percent.clamp(0, 100) as u32,
            min_retry_concurrency: u32_of(b.min_retry_concurrency).unwrap_or(3),
        }),
        outlier,
        connect_timeout_ms: ms(timeouts.connect.as_deref())?,
        request_timeout_ms: ms(timeouts.request.as_deref())?,
        retry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        FeaturePool, PolicyPool, PoolDefaults, PremiumFeatureSpec, Recovery, Timeouts,
    };

    fn feature(pool: Option<FeaturePool>) -> PremiumFeature {
        PremiumFeature::new(
            "f",
            PremiumFeatureSpec {
                pool,
                ..Default::default()
            },
        )
    }

    fn policy_with_defaults(min: Option<i32>, max: Option<i32>) -> PremiumPolicySpec {
        PremiumPolicySpec {
            pool: Some(PolicyPool {
                defaults: Some(PoolDefaults {
                    min_replicas: min,
                    max_replicas: max,
                    target_cpu_utilization_percentage: Some(75),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn feature_over_policy_defaults() {
        let p = policy_with_defaults(Some(2), Some(4));
        let s = pool_settings(
            &feature(Some(FeaturePool {
                max_replicas: Some(6),
                weight: Some(2),
                ..Default::default()
            })),
            &p,
        );
        assert_eq!((s.min_replicas, s.max_replicas, s.weight), (2, 6, 2));
        assert_eq!(s.target_cpu_utilization_percentage, 75);
        let bare = pool_settings(&feature(None), &PremiumPolicySpec::default());
        assert_eq!(
            (bare.min_replicas, bare.max_replicas, bare.weight),
            (1, 1, 1)
        );
        assert_eq!(bare.target_cpu_utilization_percentage, DEFAULT_TARGET_CPU);
    }

    #[test]
    fn own_max_below_policy_min_lowers_min() {
        let p = policy_with_defaults(Some(3), Some(5));
        let s = pool_settings(
            &feature(Some(FeaturePool {
                max_replicas: Some(2),
                ..Default::default()
            })),
            &p,
        );
        assert_eq!((s.min_replicas, s.max_replicas), (2, 2));
    }

    #[test]
    fn timeouts_resolve_feature_first() {
        let mut f = feature(None);
        let p = PremiumPolicySpec {
            startup: Some(crate::api::Startup {
                timeout: Some("10m".into()),
                max_concurrent: None,
            }),
            ..Default::default()
        };
        assert_eq!(startup_timeout(&f, &p).unwrap(), Duration::from_secs(600));
        f.spec.startup_timeout = Some("2m".into());
        assert_eq!(startup_timeout(&f, &p).unwrap(), Duration::from_secs(120));
        assert_eq!(
            startup_timeout(&feature(None), &PremiumPolicySpec::default()).unwrap(),
            DEFAULT_STARTUP_TIMEOUT
        );
        f.spec.startup_timeout = Some("soon".into());
        assert!(startup_timeout(&f, &p).is_err());
    }

    #[test]
    fn recovery_defaults_to_three_per_hour() {
        let p = PremiumPolicySpec {
            recovery: Some(Recovery {
                restart_after: "5m".into(),
                max_restarts_per_hour: None,
            }),
            ..Default::default()
        };
        let r = recovery_settings(&p).unwrap().unwrap();
        assert_eq!(r.restart_after, Duration::from_secs(300));
        assert_eq!(r.max_restarts_per_hour, 3);
        assert_eq!(
            recovery_settings(&PremiumPolicySpec::default()).unwrap(),
            None
        );
    }

    #[test]
    fn traffic_durations_in_ms() {
        let p = PremiumPolicySpec {
            timeouts: Some(Timeouts {
                connect: Some("250ms".into()),
                request: Some("15s".into()),
            }),
            ..Default::default()
        };
        let t = traffic_policy(&p).unwrap();
        assert_eq!(t.connect_timeout_ms, Some(250));
        assert_eq!(t.request_timeout_ms, Some(15_000));
        assert_eq!(t.max_connections, None);
    }
}

/// Resource amounts the API server would refuse in the Deployment. The CRD cannot check them
/// (they are int-or-string), and the server's own refusal of the Deployment is an opaque
/// conversion error, so they are checked here and reported on the feature.
pub fn check_resources(feature: &PremiumFeature) -> Result<(), String> {
    let Some(res) = &feature.spec.resources else {
        return Ok(());
    };
    let amounts = [("requests", &res.requests), ("limits", &res.limits)]
        .into_iter()
        .flat_map(|(section, map)| {
            map.iter()
                .flatten()
                .map(move |(name, q)| (section, name.as_str(), q.0.as_str()))
        });
    let problems = resource_problems(amounts);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// What is wrong with the amounts of `spec.resources`, each given as (`requests` or `limits`,
/// resource name, text as written): the one rule `check` and the operator both apply, so they
/// never disagree on a manifest. The values are quoted shortened: a stored object may predate
/// the CRD's length limits.
pub fn resource_problems<'a>(
    amounts: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
) -> Vec<String> {
    let mut parsed: BTreeMap<(&str, &str), Quantity> = BTreeMap::new();
    let mut problems = Vec::new();
    for (section, name, text) in amounts {
        let field = format!(
            "spec.resources.{section}.{}",
            shorten(name, MAX_QUOTED_BYTES)
        );
        match quantity::parse(text) {
            Ok(q) if q.is_negative() => problems.push(format!(
                "{field}: {} is negative (resource amounts are zero or more)",
                quoted(text)
            )),
            Ok(q) => {
                parsed.insert((section, name), q);
            }
            Err(_) => problems.push(format!(
                "{field}: {} is not a quantity (write a number with an optional unit, such as 100m or 0.5 for CPU and 64Mi or 1Gi for memory)",
                quoted(text)
            )),
        }
    }
    for ((section, name), request) in &parsed {
        if *section == "requests"
            && let Some(limit) = parsed.get(&("limits", *name))
            && request.cmp_value(limit) == Ordering::Greater
        {
            let name = shorten(name, MAX_QUOTED_BYTES);
            problems.push(format!(
                "spec.resources.requests.{name} is greater than spec.resources.limits.{name} (the Deployment would be refused): lower the request or raise the limit"
            ));
        }
    }
    problems
}

#[cfg(test)]
mod resource_tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    #[test]
    fn quantities_are_checked() {
        let with = |cpu: &str| {
            let mut f = PremiumFeature::new("f", Default::default());
            f.spec.resources = Some(ResourceRequirements {
                requests: Some([("cpu".to_string(), Quantity(cpu.to_string()))].into()),
                ..Default::default()
            });
            f
        };
        for ok in ["100m", "0.5", "1", "64Mi", "1e3"] {
            assert!(check_resources(&with(ok)).is_ok(), "{ok}");
        }
        for bad in ["half a core", "", "1..2", "Mi"] {
            let err = check_resources(&with(bad)).unwrap_err();
            assert!(err.contains("spec.resources.requests.cpu"), "{err}");
        }
    }

    /// The operator refuses what `check` refuses: a negative amount, a request above its
    /// limit (compared by value, so 100m is not above 0.1).
    #[test]
    fn negative_amounts_and_requests_above_limits_are_refused() {
        let amounts = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                .collect()
        };
        let mut f = PremiumFeature::new("f", Default::default());
        f.spec.resources = Some(ResourceRequirements {
            requests: Some(amounts(&[("cpu", "-1"), ("memory", "128Mi")])),
            limits: Some(amounts(&[("memory", "64Mi")])),
            ..Default::default()
        });
        let err = check_resources(&f).unwrap_err();
        assert!(err.contains("requests.cpu: \"-1\" is negative"), "{err}");
        assert!(
            err.contains("requests.memory is greater than spec.resources.limits.memory"),
            "{err}"
        );
        f.spec.resources = Some(ResourceRequirements {
            requests: Some(amounts(&[("cpu", "100m"), ("memory", "1Gi")])),
            limits: Some(amounts(&[("cpu", "0.1"), ("memory", "1024Mi")])),
            ..Default::default()
        });
        assert_eq!(check_resources(&f), Ok(()));
    }

    /// A 600 KB value (stored before the CRD bounded quantities) is named, not copied.
    #[test]
    fn a_huge_quantity_is_quoted_shortened() {
        let mut f = PremiumFeature::new("f", Default::default());
        let huge = "9".repeat(300 * 1024) + "x";
        f.spec.resources = Some(ResourceRequirements {
            requests: Some([("cpu".to_string(), Quantity(huge.clone()))].into()),
            limits: Some([("c".repeat(300 * 1024), Quantity(huge))].into()),
            ..Default::default()
        });
        let err = check_resources(&f).unwrap_err();
        assert!(err.len() < 1024, "a message of {} bytes", err.len());
        assert!(err.contains("(307201 bytes) is not a quantity"), "{err}");
    }
}
