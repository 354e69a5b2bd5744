use std::collections::BTreeMap;
use std::sync::LazyLock;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    HTTPGetAction, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecurityContext, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use regex::Regex;

use super::{
    APP_CONTAINER, FeaturePlan, LISTENERS_HASH_ANNOTATION, RESTARTED_AT_ANNOTATION,
    SIDECAR_CONTAINER, labels, owned_meta, selector_labels, sidecar_configmap_name,
};
use crate::api::{PremiumFeature, PremiumFeatureSpec, RESERVED_ENV_PATTERN};
use crate::core::graph::FeatureKey;
use crate::core::plan::dependency_key;
use crate::core::quoted;
use crate::core::sidecar::{
    ENVOY_CONFIG_DIR, ENVOY_INBOUND_PORT, FILE_BOOTSTRAP, upstream_env_var, upstream_url,
};

const CONFIG_VOLUME: &str = "envoy-config";
/// Envoy's scratch space: its root filesystem is read-only, and `/tmp` is the one place it (or
/// a debugging `kubectl exec`) may write to.
const ENVOY_TMP_VOLUME: &str = "envoy-tmp";
/// The app's scratch space, mounted only when the feature asks for a read-only root.
const APP_TMP_VOLUME: &str = "app-tmp";
const TMP_DIR: &str = "/tmp";
/// Ceiling of each scratch directory: a runaway writer fills it, not the node's disk.
const TMP_SIZE_LIMIT: &str = "64Mi";
/// The official Envoy image's unprivileged user.
const ENVOY_UID: i64 = 101;

/// The Deployment `<name>`: the app plus Envoy as a native sidecar (an init container with
/// `restartPolicy: Always`, so it starts first and stops last).
pub fn deployment(feature: &PremiumFeature, plan: &FeaturePlan) -> Deployment {
    let name = feature.name_any();
    let mut annotations = BTreeMap::from([(
        LISTENERS_HASH_ANNOTATION.to_string(),
        plan.sidecar.listeners_hash.clone(),
    )]);
    if let Some(at) = &plan.restarted_at {
        annotations.insert(RESTARTED_AT_ANNOTATION.to_string(), at.clone());
    }
    Deployment {
        metadata: owned_meta(feature, name.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(plan.replicas),
            // Held at zero, the Deployment is also paused: the cluster's Deployment controller
            // then creates no ReplicaSet for it, which keeps a thousand features waiting on
            // their dependencies from slowing the rollouts of those that may start.
            paused: (plan.replicas == 0).then_some(true),
            revision_history_limit: Some(3),
            selector: LabelSelector {
                match_labels: Some(selector_labels(feature)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(feature)),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    init_containers: Some(vec![sidecar_container(plan)]),
                    containers: vec![app_container(feature, plan)],
                    volumes: Some(volumes(feature, &name)),
                    // No API token unless the feature names a ServiceAccount to run as: an app
                    // that is broken into then holds no credentials for the cluster.
                    service_account_name: feature.spec.service_account_name.clone(),
                    automount_service_account_token: Some(
                        feature.spec.service_account_name.is_some(),
                    ),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn volumes(feature: &PremiumFeature, name: &str) -> Vec<Volume> {
    let scratch = |volume: &str| Volume {
        name: volume.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(TMP_SIZE_LIMIT.into())),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut volumes = vec![
        Volume {
            name: CONFIG_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: sidecar_configmap_name(name),
                ..Default::default()
            }),
            ..Default::default()
        },
        scratch(ENVOY_TMP_VOLUME),
    ];
    if feature.spec.read_only_root_filesystem {
        volumes.push(scratch(APP_TMP_VOLUME));
    }
    volumes
}

fn tmp_mount(volume: &str) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: TMP_DIR.into(),
        ..Default::default()
    }
}

/// The `restricted` Pod Security fields, plus a read-only root filesystem when asked for. The
/// field is always written, `false` included, so that what the pod gets is visible in the
/// Deployment rather than left to a default.
fn restricted_security_context(run_as_user: Option<i64>, read_only_root: bool) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        read_only_root_filesystem: Some(read_only_root),
        run_as_user,
        ..Default::default()
    }
}

/// Whether `name` has the form of a variable the operator sets for a dependency.
pub fn is_reserved_env_name(name: &str) -> bool {
    static RESERVED: LazyLock<Option<Regex>> =
        LazyLock::new(|| Regex::new(RESERVED_ENV_PATTERN).ok());
    RESERVED.as_ref().is_some_and(|re| re.is_match(name))
}

/// The clashes among the app container's environment variables: a name listed twice in
/// `spec.env`, a name of the reserved `PREMIUM_<DEPENDENCY>_URL` form, or two dependencies
/// passed as one variable (`catalog` and `other/catalog`). The Deployment of such a feature is
/// refused by the API server (as an internal error), so the feature must stall before any
/// object is applied. `Err` names both sides of each clash.
///
/// The CRD refuses the first two at admission; they are checked here too for features stored
/// before it did. The last needs no other object, but a CRD rule cannot compute the variable
/// name, so it is found here (and by `premium-operator check`, which calls this).
pub fn env_clashes(own_namespace: &str, spec: &PremiumFeatureSpec) -> Result<(), String> {
    let mut problems = Vec::new();
    let mut own: Vec<&str> = Vec::new();
    for e in &spec.env {
        let name = e.name.as_str();
        if own.contains(&name) {
            problems.push(format!(
                "spec.env lists {} more than once; keep one entry per name",
                quoted(name)
            ));
            continue;
        }
        own.push(name);
        if is_reserved_env_name(name) {
            problems.push(format!(
                "spec.env {}: names of the form PREMIUM_<DEPENDENCY>_URL are reserved for the URLs the operator passes for dependencies; rename the variable",
                quoted(name)
            ));
        }
    }
    let mut generated: Vec<(String, FeatureKey)> = Vec::new();
    for dep in &spec.depends_on {
        let key = dependency_key(own_namespace, dep);
        let variable = upstream_env_var(&key.name);
        match generated.iter().find(|(v, _)| *v == variable) {
            Some((_, first)) if *first == key => {}
            Some((_, first)) => problems.push(format!(
                "dependencies {} and {} would both be passed as {variable}; a feature can depend on only one feature of a name, remove one of them",
                first.relative_to(own_namespace),
                key.relative_to(own_namespace)
            )),
            None => generated.push((variable, key)),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn app_container(feature: &PremiumFeature, plan: &FeaturePlan) -> Container {
    let spec = &feature.spec;
    let mut env = spec.env.clone();
    env.extend(plan.upstreams.iter().enumerate().map(|(i, u)| EnvVar {
        name: upstream_env_var(&u.name),
        value: Some(upstream_url(i)),
        ..Default::default()
    }));
    let probe = spec.health_check.as_ref().map(|hc| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(hc.path.clone()),
            port: IntOrString::Int(spec.port),
            ..Default::default()
        }),
        period_seconds: hc.period_seconds,
        failure_threshold: hc.failure_threshold,
        ..Default::default()
    });
    Container {
        name: APP_CONTAINER.into(),
        image: Some(spec.image.clone()),
        ports: Some(vec![ContainerPort {
            name: Some("app".into()),
            container_port: spec.port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        env: (!env.is_empty()).then_some(env),
        resources: spec.resources.clone(),
        readiness_probe: probe.clone(),
        liveness_probe: probe,
        volume_mounts: spec
            .read_only_root_filesystem
            .then(|| vec![tmp_mount(APP_TMP_VOLUME)]),
        security_context: Some(restricted_security_context(
            None,
            spec.read_only_root_filesystem,
        )),
        ..Default::default()
    }
}

fn sidecar_container(plan: &FeaturePlan) -> Container {
    let quantity = |s: &str| Quantity(s.to_string());
    Container {
        name: SIDECAR_CONTAINER.into(),
        image: Some(plan.sidecar_image.clone()),
        // A native sidecar: started before the app, kept running, stopped after it.
        restart_policy: Some("Always".into()),
        args: Some(vec![
            "--config-path".into(),
            format!("{ENVOY_CONFIG_DIR}/{FILE_BOOTSTRAP}"),
            "--log-level".into(),
            "warn".into(),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("http-envoy".into()),
            container_port: i32::from(ENVOY_INBOUND_PORT),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(i32::from(ENVOY_INBOUND_PORT)),
                ..Default::default()
            }),
            period_seconds: Some(5),
            ..Default::default()
        }),
        // A native sidecar's startup probe holds the app back until Envoy listens, which it
        // does only once its clusters and routes are loaded: the app's first outbound call
        // never meets a missing listener.
        startup_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(i32::from(ENVOY_INBOUND_PORT)),
                ..Default::default()
            }),
            period_seconds: Some(1),
            failure_threshold: Some(60),
            ..Default::default()
        }),
        // Requests on every container let CPU autoscaling work; Envoy's are small and fixed.
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), quantity("50m")),
                ("memory".to_string(), quantity("64Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".to_string(), quantity("256Mi"))])),
            ..Default::default()
        }),
        // Envoy writes nothing but what its hot-restart machinery keeps in /dev/shm (a mount of
        // its own); the rendered configuration is read from the ConfigMap.
        volume_mounts: Some(vec![
            VolumeMount {
                name: CONFIG_VOLUME.into(),
                mount_path: ENVOY_CONFIG_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            tmp_mount(ENVOY_TMP_VOLUME),
        ]),
        security_context: Some(restricted_security_context(Some(ENVOY_UID), true)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::build::testing;

    fn pod(d: &Deployment) -> &PodSpec {
        d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    fn template_annotations(d: &Deployment) -> &BTreeMap<String, String> {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()
    }

    fn spec(env: &[&str], deps: &[(&str, Option<&str>)]) -> PremiumFeatureSpec {
        PremiumFeatureSpec {
            env: env
                .iter()
                .map(|n| EnvVar {
                    name: n.to_string(),
                    value: Some("v".into()),
                    ..Default::default()
                })
                .collect(),
            depends_on: deps
                .iter()
                .map(|(name, namespace)| crate::api::Dependency {
                    name: name.to_string(),
                    namespace: namespace.map(str::to_string),
                    optional: false,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn env_clashes_name_both_sides() {
        // Two dependencies of one name in two namespaces: one variable.
        let err = env_clashes(
            "portal",
            &spec(&[], &[("catalog", None), ("catalog", Some("other"))]),
        )
        .unwrap_err();
        assert!(
            err.contains(
                "dependencies catalog and other/catalog would both be passed as PREMIUM_CATALOG_URL"
            ),
            "{err}"
        );
        let err = env_clashes("portal", &spec(&["LOG", "LOG"], &[])).unwrap_err();
        assert!(
            err.contains("spec.env lists \"LOG\" more than once"),
            "{err}"
        );
        let err = env_clashes(
            "portal",
            &spec(&["PREMIUM_CATALOG_URL"], &[("catalog", None)]),
        )
        .unwrap_err();
        assert!(
            err.contains("spec.env \"PREMIUM_CATALOG_URL\": names of the form"),
            "{err}"
        );
        // Every clash is named, not only the first.
        let err = env_clashes(
            "portal",
            &spec(&["A", "A"], &[("x", Some("a")), ("x", Some("b"))]),
        )
        .unwrap_err();
        assert!(
            err.contains("\"A\" more than once") && err.contains("a/x and b/x"),
            "{err}"
        );
    }

    #[test]
    fn what_does_not_clash_passes() {
        // The same dependency spelled with and without its own namespace is one dependency.
        env_clashes(
            "portal",
            &spec(
                &["PREMIUM_MODE", "premium_catalog_url", "LOG"],
                &[
                    ("catalog", None),
                    ("catalog", Some("portal")),
                    ("skill-exchange", None),
                ],
            ),
        )
        .unwrap();
        assert!(env_clashes("portal", &testing::feature().spec).is_ok());
    }

    proptest::proptest! {
        /// The CRD's reserved pattern covers every name the operator generates, so a user's
        /// variable refused by it is exactly one that could clash.
        #[test]
        fn every_generated_name_is_reserved(name in "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?") {
            proptest::prop_assert!(is_reserved_env_name(&upstream_env_var(&name)));
        }
    }

    #[test]
    fn gated_deployment_has_zero_replicas() {
        let f = testing::feature();
        let d = deployment(&f, &testing::plan(&f, 0));
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(0));
        assert_eq!(spec.paused, Some(true));
        let running = deployment(&f, &testing::plan(&f, 1)).spec.unwrap();
        assert_eq!(
            running.paused, None,
            "SSA drops the field once it is not applied"
        );
    }

    #[test]
    fn envoy_is_a_native_sidecar_with_the_config_mounted() {
        let f = testing::feature();
        let d = deployment(&f, &testing::plan(&f, 2));
        let init = &pod(&d).init_containers.as_ref().unwrap()[0];
        assert_eq!(init.name, "envoy");
        assert_eq!(init.restart_policy.as_deref(), Some("Always"));
        assert!(
            init.startup_probe
                .as_ref()
                .and_then(|p| p.tcp_socket.as_ref())
                .is_some()
        );
        assert_eq!(
            init.volume_mounts.as_ref().unwrap()[0].mount_path,
            "/etc/envoy"
        );
        let vol = &pod(&d).volumes.as_ref().unwrap()[0];
        assert_eq!(vol.config_map.as_ref().unwrap().name, "aika-sidecar");
    }

    #[test]
    fn app_gets_probes_and_dependency_urls() {
        let f = testing::feature();
        let d = deployment(&f, &testing::plan(&f, 1));
        let app = &pod(&d).containers[0];
        let probe = app
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(probe.path.as_deref(), Some("/readyz"));
        assert_eq!(probe.port, IntOrString::Int(9898));
        let env: Vec<(String, String)> = app
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(
            env,
            vec![
                (
                    "PREMIUM_CATALOG_URL".to_string(),
                    "http://127.0.0.1:15101".to_string()
                ),
                (
                    "PREMIUM_SKILL_EXCHANGE_URL".to_string(),
                    "http://127.0.0.1:15102".to_string()
                ),
            ]
        );
    }

    #[test]
    fn listeners_hash_on_template_changes_only_with_listeners() {
        let f = testing::feature();
        let base = testing::plan(&f, 1);
        let d1 = deployment(&f, &base);
        assert_eq!(
            template_annotations(&d1)[LISTENERS_HASH_ANNOTATION],
            base.sidecar.listeners_hash
        );
        // A traffic-only change re-renders clusters but keeps the template identical.
        let mut spec = crate::core::sidecar::SidecarSpec {
            feature: "aika".into(),
            namespace: "portal".into(),
            app_port: 9898,
            upstreams: base.upstreams.clone(),
            traffic: Default::default(),
        };
        spec.traffic.max_connections = Some(7);
        let mut changed = base.clone();
        changed.sidecar = crate::core::sidecar::render(&spec);
        assert_ne!(changed.sidecar.config_hash, base.sidecar.config_hash);
        let d2 = deployment(&f, &changed);
        assert_eq!(
            d1.spec.as_ref().unwrap().template,
            d2.spec.as_ref().unwrap().template
        );
        // Dropping a dependency changes the listeners, so the template.
        let mut fewer = base.clone();
        spec.upstreams.pop();
        fewer.sidecar = crate::core::sidecar::render(&spec);
        let d3 = deployment(&f, &fewer);
        assert_ne!(
            d1.spec.as_ref().unwrap().template,
            d3.spec.as_ref().unwrap().template
        );
    }

    #[test]
    fn passes_the_restricted_pod_security_profile_fields() {
        let f = testing::feature();
        let d = deployment(&f, &testing::plan(&f, 1));
        let p = pod(&d);
        let psc = p.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        for c in p
            .containers
            .iter()
            .chain(p.init_containers.iter().flatten())
        {
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_eq!(
                sc.capabilities.as_ref().unwrap().drop.as_deref(),
                Some(&["ALL".to_string()][..])
            );
        }
    }

    fn security_context(c: &Container) -> &SecurityContext {
        c.security_context.as_ref().unwrap()
    }

    /// Every mount of `c` names a volume of the pod; a container with a read-only root writes
    /// only to emptyDir volumes (its other mounts are read-only).
    fn mounts_are_sound(p: &PodSpec, c: &Container) -> Result<(), String> {
        let volumes = p.volumes.as_deref().unwrap_or_default();
        let read_only_root = security_context(c).read_only_root_filesystem == Some(true);
        for m in c.volume_mounts.iter().flatten() {
            let v = volumes
                .iter()
                .find(|v| v.name == m.name)
                .ok_or_else(|| format!("{}: mount of unknown volume {}", c.name, m.name))?;
            if read_only_root && m.read_only != Some(true) && v.empty_dir.is_none() {
                return Err(format!(
                    "{}: writable mount {} is not scratch",
                    c.name, m.name
                ));
            }
        }
        Ok(())
    }

    #[test]
    fn no_token_is_mounted_unless_a_service_account_is_named() {
        let mut f = testing::feature();
        let d = deployment(&f, &testing::plan(&f, 1));
        assert_eq!(pod(&d).automount_service_account_token, Some(false));
        assert_eq!(pod(&d).service_account_name, None);
        f.spec.service_account_name = Some("catalog-reader".into());
        let d = deployment(&f, &testing::plan(&f, 1));
        assert_eq!(pod(&d).automount_service_account_token, Some(true));
        assert_eq!(
            pod(&d).service_account_name.as_deref(),
            Some("catalog-reader")
        );
    }

    #[test]
    fn envoy_runs_read_only_with_a_scratch_tmp() {
        let f = testing::feature();
        let d = deployment(&f, &testing::plan(&f, 1));
        let p = pod(&d);
        let envoy = &p.init_containers.as_ref().unwrap()[0];
        assert_eq!(
            security_context(envoy).read_only_root_filesystem,
            Some(true)
        );
        let tmp = envoy
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == "/tmp")
            .expect("a /tmp mount");
        let volume = p
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == tmp.name)
            .unwrap();
        assert!(volume.empty_dir.is_some(), "{volume:?}");
        mounts_are_sound(p, envoy).unwrap();
    }

    #[test]
    fn the_app_root_is_read_only_only_when_asked() {
        let mut f = testing::feature();
        let d = deployment(&f, &testing::plan(&f, 1));
        let app = &pod(&d).containers[0];
        assert_eq!(security_context(app).read_only_root_filesystem, Some(false));
        assert_eq!(app.volume_mounts, None);
        assert!(
            !pod(&d)
                .volumes
                .iter()
                .flatten()
                .any(|v| v.name == APP_TMP_VOLUME)
        );
        f.spec.read_only_root_filesystem = true;
        let d = deployment(&f, &testing::plan(&f, 1));
        let app = &pod(&d).containers[0];
        assert_eq!(security_context(app).read_only_root_filesystem, Some(true));
        assert_eq!(app.volume_mounts.as_ref().unwrap()[0].mount_path, "/tmp");
        mounts_are_sound(pod(&d), app).unwrap();
    }

    proptest::proptest! {
        /// Whatever the feature asks for, the pod keeps the `restricted` fields, Envoy stays
        /// read-only, the token follows the ServiceAccount, and the app's root is read-only
        /// exactly when the field says so, with every write going to a scratch volume.
        #[test]
        fn hardening_follows_the_spec_and_is_never_relaxed(
            account in proptest::option::of("[a-z]([-a-z0-9]{0,20}[a-z0-9])?"),
            read_only in proptest::bool::ANY,
            replicas in 0i32..3,
        ) {
            let mut f = testing::feature();
            f.spec.service_account_name = account.clone();
            f.spec.read_only_root_filesystem = read_only;
            let d = deployment(&f, &testing::plan(&f, replicas));
            let p = pod(&d);
            proptest::prop_assert_eq!(p.automount_service_account_token, Some(account.is_some()));
            proptest::prop_assert_eq!(&p.service_account_name, &account);
            let app = &p.containers[0];
            let envoy = &p.init_containers.as_ref().unwrap()[0];
            proptest::prop_assert_eq!(security_context(app).read_only_root_filesystem, Some(read_only));
            proptest::prop_assert_eq!(security_context(envoy).read_only_root_filesystem, Some(true));
            for c in [app, envoy] {
                let sc = security_context(c);
                proptest::prop_assert_eq!(sc.allow_privilege_escalation, Some(false));
                proptest::prop_assert_eq!(sc.privileged, None);
                mounts_are_sound(p, c).map_err(proptest::test_runner::TestCaseError::fail)?;
            }
            let names: Vec<&str> = p.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
            let mut unique = names.clone();
            unique.sort_unstable();
            unique.dedup();
            proptest::prop_assert_eq!(unique.len(), names.len(), "volume names repeat: {:?}", names);
        }
    }
}
