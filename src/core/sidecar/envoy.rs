//! The Envoy sidecar's configuration, rendered from typed input: pure, no kube, no I/O.
//!
//! # What is rendered, and why it is split this way
//!
//! The sidecar reads a ConfigMap mounted at [`ENVOY_CONFIG_DIR`] holding:
//!
//! * [`FILE_BOOTSTRAP`] (`envoy.yaml`): node, admin and the *static* listeners (one inbound in
//!   front of the app, one outbound on `127.0.0.1` per dependency). Envoy reads it once at start,
//!   so it holds only what cannot change without a restart: ports and the set and order of
//!   dependencies. Its hash ([`RenderedSidecar::listeners_hash`]) goes on the pod template, so
//!   only these changes roll the pods.
//! * [`FILE_CLUSTERS`] (`cds.yaml`): every cluster (circuit breakers, outlier detection, connect
//!   timeout, endpoints), served by filesystem CDS.
//! * one `rds.<route>.yaml` per route configuration (see [`routes_file`]): request timeout and
//!   retry policy, served by filesystem RDS.
//!
//! CDS and RDS watch the directory, not the files: a ConfigMap update swaps the `..data`
//! symlink, which only a watched directory notices. So breaker, outlier, retry and timeout
//! changes reach running pods without a restart.
//!
//! Routes are one file per route configuration, not one file for all, because Envoy's RDS
//! subscription accepts exactly one RouteConfiguration per update ("Unexpected RDS resource
//! length") and a filesystem subscription hands it the whole file, whatever names it asked for.
//!
//! Names carry identities, never positions: an outbound listener's route configuration and
//! cluster are named after the dependency (`dep_<namespace>_<name>`), so a pod still running
//! the previous bootstrap during a roll can never be re-pointed at another dependency by the
//! new `cds.yaml`/`rds.*.yaml`.
//!
//! # Ports
//!
//! 15000–15199 ([`RESERVED_PORTS`]) belong to the sidecar: admin on 15000 (loopback only), the
//! inbound listener on 15006 (the Service's `targetPort`), outbound listeners from 15101. The
//! API refuses a feature port in that range, and caps `dependsOn` at [`MAX_UPSTREAMS`] so the
//! outbound ports stay inside it.
//!
//! # Defaults
//!
//! An unset policy field is omitted, so Envoy's own default applies (e.g. 1024 connections,
//! 5 s connect timeout, no retries). Values Envoy would refuse (a zero connect timeout, a
//! percentage over 100) are clamped to the nearest value it accepts; the API rejects them first.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::core::capacity::Limits;

/// Envoy's admin port; bound to 127.0.0.1 so nothing outside the pod reaches it.
pub const ENVOY_ADMIN_PORT: u16 = 15000;
/// The inbound listener's port (all addresses); the Service's `targetPort` points here.
pub const ENVOY_INBOUND_PORT: u16 = 15006;
/// The first outbound listener's port; the i-th dependency gets `OUTBOUND_PORT_BASE + i`.
pub const OUTBOUND_PORT_BASE: u16 = 15101;
/// Ports the sidecar owns inside the pod; a feature's own port must lie outside.
pub const RESERVED_PORTS: RangeInclusive<u16> = 15000..=15199;
/// Most dependencies whose outbound ports still fit in [`RESERVED_PORTS`].
pub const MAX_UPSTREAMS: usize = (*RESERVED_PORTS.end() - OUTBOUND_PORT_BASE + 1) as usize;
/// Where the ConfigMap is mounted in the sidecar; every path in the bootstrap is under it.
pub const ENVOY_CONFIG_DIR: &str = "/etc/envoy";
/// The bootstrap file name (ConfigMap key).
pub const FILE_BOOTSTRAP: &str = "envoy.yaml";
/// The clusters file name (ConfigMap key).
pub const FILE_CLUSTERS: &str = "cds.yaml";
/// The cluster in front of the app inside the pod.
pub const LOCAL_APP_CLUSTER: &str = "local_app";
/// The inbound listener's name, and its route configuration's.
pub const INBOUND_ROUTE: &str = "inbound";
/// The suffix of Kubernetes Service DNS names the outbound clusters resolve.
pub const CLUSTER_DOMAIN: &str = "svc.cluster.local";
/// Conditions Envoy understands in `retry_on` (HTTP and gRPC). Envoy ignores any other token
/// silently, so the API should refuse them; the renderer drops them, which changes nothing for
/// Envoy and keeps free text (such as `on`, a boolean to Envoy's YAML 1.1 reader) out of the
/// files.
pub const RETRY_ON_CONDITIONS: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Everything the renderer needs, already resolved from the feature and its effective policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SidecarSpec {
    /// The feature's name (node cluster and part of the node id).
    pub feature: String,
    /// The feature's namespace.
    pub namespace: String,
    /// The port the app listens on inside the pod.
    pub app_port: u16,
    /// Dependencies in `dependsOn` order; the i-th gets outbound port [`outbound_port`]`(i)`.
    pub upstreams: Vec<Upstream>,
    /// The effective traffic policy.
    pub traffic: TrafficPolicy,
}

/// A dependency the app calls through its own outbound listener.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Upstream {
    pub name: String,
    pub namespace: String,
    /// The dependency Service's port; `None` while it does not exist yet: its cluster then has
    /// no endpoints, so calls fail fast with 503 instead of hanging, and the listener is already
    /// in place when it appears.
    pub port: Option<u16>,
    /// This sidecar's part of the dependency's `spec.capacity` ([`crate::core::capacity`]):
    /// per-instance breaker thresholds of its cluster, under the policy's as a ceiling. Empty
    /// when the dependency sets no capacity. Only `cds.yaml` carries it, so a new split
    /// reloads in place and never rolls the pods.
    pub capacity: Limits,
}

/// Breakers, outlier detection, timeouts and retries; `None` means Envoy's default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrafficPolicy {
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
    /// Concurrent retries; Envoy ignores it when a retry budget is set.
    pub max_retries: Option<u32>,
    pub retry_budget: Option<RetryBudget>,
    /// Present (even empty) enables outlier detection on dependency clusters.
    pub outlier: Option<OutlierDetection>,
    pub connect_timeout_ms: Option<u64>,
    /// Whole-request timeout on every route; 0 disables it (Envoy's default is 15 s).
    pub request_timeout_ms: Option<u64>,
    /// Retries on calls to dependencies (never towards the local app, which would amplify load).
    pub retry: Option<RetryPolicy>,
}

/// Retries allowed as a share of active requests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetryBudget {
    /// 1–100; values over 100 are clamped.
    pub budget_percent: u32,
    pub min_retry_concurrency: u32,
}

/// Ejection of dependency hosts that keep failing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutlierDetection {
    pub consecutive_5xx: Option<u32>,
    pub interval_ms: Option<u64>,
    pub base_ejection_time_ms: Option<u64>,
    /// 0–100; values over 100 are clamped.
    pub max_ejection_percent: Option<u32>,
}

/// Retries on calls to a dependency.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetryPolicy {
    /// Retries after the first try (Envoy's `num_retries`).
    pub attempts: u32,
    /// 0 disables the per-try timeout.
    pub per_try_timeout_ms: Option<u64>,
    /// Comma-separated conditions, see [`RETRY_ON_CONDITIONS`]; others are dropped.
    pub retry_on: String,
}

/// The rendered ConfigMap contents.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RenderedSidecar {
    /// [`FILE_BOOTSTRAP`].
    pub bootstrap: String,
    /// [`FILE_CLUSTERS`].
    pub clusters: String,
    /// The route files, by file name ([`routes_file`]).
    pub routes: BTreeMap<String, String>,
    /// Hash of the bootstrap: changes exactly when the pods must restart.
    pub listeners_hash: String,
    /// Hash of every file (for `status.sidecarConfigHash`).
    pub config_hash: String,
}

impl RenderedSidecar {
    /// Every file by name: the ConfigMap's `data`.
    pub fn files(&self) -> BTreeMap<String, String> {
        let mut files = self.routes.clone();
        files.insert(FILE_BOOTSTRAP.to_owned(), self.bootstrap.clone());
        files.insert(FILE_CLUSTERS.to_owned(), self.clusters.clone());
        files
    }
}

/// Renders the sidecar's files. Same input, byte-identical output.
pub fn render(spec: &SidecarSpec) -> RenderedSidecar {
    let plan = Plan::new(spec);
    let bootstrap = to_yaml(&plan.bootstrap());
    let clusters = to_yaml(&plan.clusters());
    let routes: BTreeMap<String, String> = plan
        .routes()
        .into_iter()
        .map(|(file, response)| (file, to_yaml(&response)))
        .collect();
    let mut rendered = RenderedSidecar {
        listeners_hash: short_hash(bootstrap.as_bytes()),
        bootstrap,
        clusters,
        routes,
        config_hash: String::new(),
    };
    rendered.config_hash = files_hash(&rendered.files());
    rendered
}

/// The bootstrap in canonical proto3 JSON (what [`render`] writes as YAML).
pub fn bootstrap_json(spec: &SidecarSpec) -> serde_json::Value {
    to_json(&Plan::new(spec).bootstrap())
}

/// The clusters file in canonical proto3 JSON.
pub fn clusters_json(spec: &SidecarSpec) -> serde_json::Value {
    to_json(&Plan::new(spec).clusters())
}

/// The route files in canonical proto3 JSON, by file name.
pub fn routes_json(spec: &SidecarSpec) -> BTreeMap<String, serde_json::Value> {
    Plan::new(spec)
        .routes()
        .into_iter()
        .map(|(file, response)| (file, to_json(&response)))
        .collect()
}

/// The outbound listener port of the `index`-th dependency. Saturates instead of overflowing;
/// the API keeps `index` below [`MAX_UPSTREAMS`].
pub fn outbound_port(index: usize) -> u16 {
    u16::try_from(index)
        .ok()
        .and_then(|i| OUTBOUND_PORT_BASE.checked_add(i))
        .unwrap_or(u16::MAX)
}

/// Whether `port` belongs to the sidecar (the API refuses such a feature port).
pub fn is_reserved_port(port: u16) -> bool {
    RESERVED_PORTS.contains(&port)
}

/// The env var that tells the app where a dependency is: `skill-exchange` gives
/// `PREMIUM_SKILL_EXCHANGE_URL`.
pub fn upstream_env_var(dep_name: &str) -> String {
    let dep: String = dep_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("PREMIUM_{dep}_URL")
}

/// The URL of the `index`-th dependency's outbound listener (the env var's value).
pub fn upstream_url(index: usize) -> String {
    format!("http://127.0.0.1:{}", outbound_port(index))
}

/// The file holding route configuration `route` (its ConfigMap key).
pub fn routes_file(route: &str) -> String {
    format!("rds.{route}.yaml")
}

/// The cluster (and route configuration) name of a dependency. Kubernetes names map to
/// `dep_<namespace>_<name>` (unambiguous: they contain no `_`); anything else is sanitized,
/// shortened (the name is also part of a ConfigMap key, at most 253 characters) and gets a hash
/// suffix so two different dependencies can never share a cluster.
pub fn upstream_cluster(upstream: &Upstream) -> String {
    const LABEL_MAX: usize = 63;
    let is_label = |s: &str| {
        (1..=LABEL_MAX).contains(&s.len())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if is_label(&upstream.namespace) && is_label(&upstream.name) {
        return format!("dep_{}_{}", upstream.namespace, upstream.name);
    }
    let sanitize = |s: &str| -> String {
        s.chars()
            .take(LABEL_MAX)
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect()
    };
    let identity = format!("{}/{}", upstream.namespace, upstream.name);
    format!(
        "dep_{}_{}_{}",
        sanitize(&upstream.namespace),
        sanitize(&upstream.name),
        &short_hash(identity.as_bytes())[..8]
    )
}

/// Hex of the first 8 bytes of SHA-256: short enough for an annotation, ample for change
/// detection.
fn short_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Hash over names and contents, length-prefixed so no two file sets hash alike by shifting
/// bytes between files.
fn files_hash(files: &BTreeMap<String, String>) -> String {
    let mut all = Vec::new();
    for (name, content) in files {
        for part in [name, content] {
            all.extend_from_slice(&(part.len() as u64).to_be_bytes());
            all.extend_from_slice(part.as_bytes());
        }
    }
    short_hash(&all)
}

const HEADER: &str = "# Rendered by premium-operator; edits are overwritten.\n";

/// YAML for humans. Serializing these plain structs cannot fail; should it ever, the file says
/// so rather than the operator panicking.
///
/// serde_yaml writes YAML 1.2 and quotes what 1.2 would misread, but Envoy reads YAML 1.1, where
/// a plain `y`, `n`, `yes`, `no`, `on` or `off` is a boolean. No string written here can be one
/// of those words: every name has a prefix or a dot, and `retry_on` keeps only known conditions.
fn to_yaml<T: Serialize>(value: &T) -> String {
    match serde_yaml::to_string(value) {
        Ok(yaml) => format!("{HEADER}{yaml}"),
        Err(err) => format!("# render error: {err}\n"),
    }
}

fn to_json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_default()
}

/// Largest duration protobuf accepts (10,000 years), in ms.
const MAX_DURATION_MS: u64 = 315_576_000_000_000;

/// Upper bound of Envoy percentages.
fn percent(value: u32) -> u32 {
    value.min(100)
}

/// The policy's thresholds towards one dependency, each lowered to the sidecar's part of the
/// dependency's capacity where that is set (the policy stays a ceiling).
fn with_capacity(policy: &v3::Thresholds, capacity: &Limits) -> v3::Thresholds {
    let both = capacity.ceiling(&Limits {
        max_connections: policy.max_connections,
        max_pending_requests: policy.max_pending_requests,
        max_requests: policy.max_requests,
    });
    v3::Thresholds {
        max_connections: both.max_connections,
        max_pending_requests: both.max_pending_requests,
        max_requests: both.max_requests,
        ..policy.clone()
    }
}

/// A listener of the sidecar, with the route configuration and cluster behind it.
struct ListenerPlan {
    name: String,
    address: &'static str,
    port: u16,
    route: String,
}

/// The shape of the config, decided once and shared by the three renderings.
struct Plan<'a> {
    spec: &'a SidecarSpec,
    listeners: Vec<ListenerPlan>,
    /// Dependency clusters in first-appearance order, deduplicated by name.
    upstreams: Vec<(String, &'a Upstream)>,
}

impl<'a> Plan<'a> {
    fn new(spec: &'a SidecarSpec) -> Self {
        let mut listeners = vec![ListenerPlan {
            name: INBOUND_ROUTE.to_owned(),
            address: "0.0.0.0",
            port: ENVOY_INBOUND_PORT,
            route: INBOUND_ROUTE.to_owned(),
        }];
        let mut upstreams: Vec<(String, &Upstream)> = Vec::new();
        for (index, upstream) in spec.upstreams.iter().enumerate() {
            let cluster = upstream_cluster(upstream);
            let port = outbound_port(index);
            listeners.push(ListenerPlan {
                name: format!("outbound_{port}"),
                address: "127.0.0.1",
                port,
                route: cluster.clone(),
            });
            // The same dependency twice (refused by the API) shares one cluster and route.
            if !upstreams.iter().any(|(name, _)| *name == cluster) {
                upstreams.push((cluster, upstream));
            }
        }
        Plan {
            spec,
            listeners,
            upstreams,
        }
    }

    fn config_source(file: &str) -> v3::ConfigSource {
        v3::ConfigSource {
            path_config_source: v3::PathConfigSource {
                path: format!("{ENVOY_CONFIG_DIR}/{file}"),
                watched_directory: v3::WatchedDirectory {
                    path: ENVOY_CONFIG_DIR.to_owned(),
                },
            },
            resource_api_version: v3::ApiVersion::V3,
        }
    }

    fn bootstrap(&self) -> v3::Bootstrap {
        let listeners = self
            .listeners
            .iter()
            .map(|l| v3::Listener {
                name: l.name.clone(),
                address: v3::Address::socket(l.address, l.port),
                filter_chains: vec![v3::FilterChain {
                    filters: vec![v3::Filter {
                        name: "envoy.filters.network.http_connection_manager",
                        typed_config: v3::TypedConfig::HttpConnectionManager(
                            v3::HttpConnectionManager {
                                stat_prefix: l.route.clone(),
                                rds: v3::Rds {
                                    config_source: Self::config_source(&routes_file(&l.route)),
                                    route_config_name: l.route.clone(),
                                },
                                http_filters: vec![v3::HttpFilter {
                                    name: "envoy.filters.http.router",
                                    typed_config: v3::TypedConfig::Router(v3::Router {}),
                                }],
                            },
                        ),
                    }],
                }],
            })
            .collect();
        // Qualified, so unique across namespaces, and never a bare word Envoy's YAML 1.1
        // reader would take for a boolean (a feature named `no`).
        let qualified = format!("{}.{}", self.spec.feature, self.spec.namespace);
        v3::Bootstrap {
            node: v3::Node {
                id: qualified.clone(),
                cluster: qualified,
            },
            admin: v3::Admin {
                address: v3::Address::socket("127.0.0.1", ENVOY_ADMIN_PORT),
            },
            static_resources: v3::StaticResources { listeners },
            dynamic_resources: v3::DynamicResources {
                cds_config: Self::config_source(FILE_CLUSTERS),
            },
        }
    }

    fn clusters(&self) -> v3::DiscoveryResponse {
        let traffic = &self.spec.traffic;
        let connect_timeout = traffic
            .connect_timeout_ms
            .map(|ms| v3::Duration::from_ms(ms.max(1)));
        // No retries go to the local app, so only the load-shedding thresholds apply there.
        let local_breakers = v3::Thresholds {
            max_connections: traffic.max_connections,
            max_pending_requests: traffic.max_pending_requests,
            max_requests: traffic.max_requests,
            ..v3::Thresholds::default()
        };
        let upstream_breakers = v3::Thresholds {
            max_retries: traffic.max_retries,
            retry_budget: traffic.retry_budget.as_ref().map(|b| v3::RetryBudget {
                budget_percent: v3::Percent {
                    value: f64::from(percent(b.budget_percent)),
                },
                min_retry_concurrency: b.min_retry_concurrency,
            }),
            ..local_breakers.clone()
        };
        let outlier = traffic.outlier.as_ref().map(|o| v3::OutlierDetection {
            consecutive_5xx: o.consecutive_5xx,
            interval: o.interval_ms.map(|ms| v3::Duration::from_ms(ms.max(1))),
            base_ejection_time: o
                .base_ejection_time_ms
                .map(|ms| v3::Duration::from_ms(ms.max(1))),
            max_ejection_percent: o.max_ejection_percent.map(percent),
        });

        let mut resources = vec![v3::Resource::Cluster(v3::Cluster {
            name: LOCAL_APP_CLUSTER.to_owned(),
            discovery_type: v3::DiscoveryType::Static,
            connect_timeout: connect_timeout.clone(),
            load_assignment: v3::ClusterLoadAssignment::single(
                LOCAL_APP_CLUSTER,
                Some(("127.0.0.1".to_owned(), self.spec.app_port)),
            ),
            circuit_breakers: v3::CircuitBreakers::from(local_breakers),
            outlier_detection: None,
        })];
        for (name, upstream) in &self.upstreams {
            let endpoint = upstream.port.map(|port| {
                let host = format!("{}.{}.{CLUSTER_DOMAIN}", upstream.name, upstream.namespace);
                (host, port)
            });
            resources.push(v3::Resource::Cluster(v3::Cluster {
                name: name.clone(),
                // A DNS cluster needs a name to resolve; without one, STATIC with no hosts.
                discovery_type: if endpoint.is_some() {
                    v3::DiscoveryType::StrictDns
                } else {
                    v3::DiscoveryType::Static
                },
                connect_timeout: connect_timeout.clone(),
                load_assignment: v3::ClusterLoadAssignment::single(name, endpoint),
                circuit_breakers: v3::CircuitBreakers::from(with_capacity(
                    &upstream_breakers,
                    &upstream.capacity,
                )),
                outlier_detection: outlier.clone(),
            }));
        }
        v3::DiscoveryResponse::new(resources)
    }

    /// One DiscoveryResponse per route configuration, by file name.
    fn routes(&self) -> BTreeMap<String, v3::DiscoveryResponse> {
        let traffic = &self.spec.traffic;
        let timeout = traffic.request_timeout_ms.map(v3::Duration::from_ms);
        let retry_policy = traffic.retry.as_ref().map(|r| v3::RetryPolicy {
            retry_on: r
                .retry_on
                .split(',')
                .map(str::trim)
                .filter(|c| RETRY_ON_CONDITIONS.contains(c))
                .collect::<Vec<_>>()
                .join(","),
            num_retries: r.attempts,
            per_try_timeout: r.per_try_timeout_ms.map(v3::Duration::from_ms),
        });
        let route = |name: &str, action: v3::RouteAction| {
            let config = v3::RouteConfiguration {
                name: name.to_owned(),
                virtual_hosts: vec![v3::VirtualHost {
                    name: name.to_owned(),
                    domains: vec!["*"],
                    routes: vec![v3::Route {
                        r#match: v3::RouteMatch { prefix: "/" },
                        route: action,
                    }],
                }],
            };
            let response =
                v3::DiscoveryResponse::new(vec![v3::Resource::RouteConfiguration(config)]);
            (routes_file(name), response)
        };

        let mut files = BTreeMap::from([route(
            INBOUND_ROUTE,
            v3::RouteAction {
                cluster: LOCAL_APP_CLUSTER.to_owned(),
                // Also lifts Envoy's 15 s default for slow endpoints of the app itself.
                timeout: timeout.clone(),
                auto_host_rewrite: None,
                retry_policy: None,
            },
        )]);
        for (name, _) in &self.upstreams {
            files.extend([route(
                name,
                v3::RouteAction {
                    cluster: name.clone(),
                    timeout: timeout.clone(),
                    // The app calls 127.0.0.1:<port>; the dependency should see its own name.
                    auto_host_rewrite: Some(true),
                    retry_policy: retry_policy.clone(),
                },
            )]);
        }
        files
    }
}

/// Envoy v3 API shapes, serialized in canonical proto3 JSON (lowerCamelCase names, durations
/// as strings). Only the fields the sidecar sets; `None` means Envoy's default.
mod v3 {
    use serde::{Serialize, Serializer};

    use super::{MAX_DURATION_MS, short_hash};

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Bootstrap {
        pub node: Node,
        pub admin: Admin,
        pub static_resources: StaticResources,
        pub dynamic_resources: DynamicResources,
    }

    #[derive(Serialize)]
    pub struct Node {
        pub id: String,
        pub cluster: String,
    }

    #[derive(Serialize)]
    pub struct Admin {
        pub address: Address,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Address {
        pub socket_address: SocketAddress,
    }

    impl Address {
        pub fn socket(address: &str, port_value: u16) -> Self {
            Address {
                socket_address: SocketAddress {
                    address: address.to_owned(),
                    port_value,
                },
            }
        }
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct SocketAddress {
        pub address: String,
        pub port_value: u16,
    }

    #[derive(Serialize)]
    pub struct StaticResources {
        pub listeners: Vec<Listener>,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct DynamicResources {
        pub cds_config: ConfigSource,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ConfigSource {
        pub path_config_source: PathConfigSource,
        pub resource_api_version: ApiVersion,
    }

    #[derive(Serialize)]
    pub enum ApiVersion {
        V3,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct PathConfigSource {
        pub path: String,
        pub watched_directory: WatchedDirectory,
    }

    #[derive(Serialize)]
    pub struct WatchedDirectory {
        pub path: String,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Listener {
        pub name: String,
        pub address: Address,
        pub filter_chains: Vec<FilterChain>,
    }

    #[derive(Serialize)]
    pub struct FilterChain {
        pub filters: Vec<Filter>,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Filter {
        pub name: &'static str,
        pub typed_config: TypedConfig,
    }

    /// A `google.protobuf.Any`: the `@type` key first, then the message's own fields.
    #[derive(Serialize)]
    #[serde(tag = "@type")]
    pub enum TypedConfig {
        #[serde(
            rename = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
        )]
        HttpConnectionManager(HttpConnectionManager),
        #[serde(rename = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router")]
        Router(Router),
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct HttpConnectionManager {
        pub stat_prefix: String,
        pub rds: Rds,
        pub http_filters: Vec<HttpFilter>,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Rds {
        pub config_source: ConfigSource,
        pub route_config_name: String,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct HttpFilter {
        pub name: &'static str,
        pub typed_config: TypedConfig,
    }

    #[derive(Serialize)]
    pub struct Router {}

    /// The shape Envoy expects in a filesystem xDS file.
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct DiscoveryResponse {
        /// Shown by Envoy's stats and config dump, so one can tell which content it loaded.
        pub version_info: String,
        pub resources: Vec<Resource>,
    }

    impl DiscoveryResponse {
        pub fn new(resources: Vec<Resource>) -> Self {
            let content = serde_json::to_vec(&resources).unwrap_or_default();
            DiscoveryResponse {
                version_info: short_hash(&content),
                resources,
            }
        }
    }

    #[derive(Serialize)]
    #[serde(tag = "@type")]
    pub enum Resource {
        #[serde(rename = "type.googleapis.com/envoy.config.cluster.v3.Cluster")]
        Cluster(Cluster),
        #[serde(rename = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration")]
        RouteConfiguration(RouteConfiguration),
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Cluster {
        pub name: String,
        #[serde(rename = "type", skip_serializing_if = "DiscoveryType::is_default")]
        pub discovery_type: DiscoveryType,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub connect_timeout: Option<Duration>,
        pub load_assignment: ClusterLoadAssignment,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub circuit_breakers: Option<CircuitBreakers>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub outlier_detection: Option<OutlierDetection>,
    }

    #[derive(Serialize, PartialEq)]
    #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
    pub enum DiscoveryType {
        Static,
        StrictDns,
    }

    impl DiscoveryType {
        /// STATIC is the enum's zero value, which canonical JSON leaves out.
        fn is_default(&self) -> bool {
            *self == DiscoveryType::Static
        }
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ClusterLoadAssignment {
        pub cluster_name: String,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        pub endpoints: Vec<LocalityLbEndpoints>,
    }

    impl ClusterLoadAssignment {
        /// One endpoint, or none at all.
        pub fn single(cluster_name: &str, endpoint: Option<(String, u16)>) -> Self {
            ClusterLoadAssignment {
                cluster_name: cluster_name.to_owned(),
                endpoints: endpoint
                    .map(|(host, port)| LocalityLbEndpoints {
                        lb_endpoints: vec![LbEndpoint {
                            endpoint: Endpoint {
                                address: Address::socket(&host, port),
                            },
                        }],
                    })
                    .into_iter()
                    .collect(),
            }
        }
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct LocalityLbEndpoints {
        pub lb_endpoints: Vec<LbEndpoint>,
    }

    #[derive(Serialize)]
    pub struct LbEndpoint {
        pub endpoint: Endpoint,
    }

    #[derive(Serialize)]
    pub struct Endpoint {
        pub address: Address,
    }

    #[derive(Serialize)]
    pub struct CircuitBreakers {
        pub thresholds: Vec<Thresholds>,
    }

    impl CircuitBreakers {
        /// `None` when nothing is set, so Envoy's defaults apply untouched.
        pub fn from(thresholds: Thresholds) -> Option<Self> {
            thresholds.is_set().then(|| CircuitBreakers {
                thresholds: vec![thresholds],
            })
        }
    }

    /// Priority DEFAULT's thresholds (the zero priority, so it is not written).
    #[derive(Serialize, Clone, Default)]
    #[serde(rename_all = "camelCase")]
    pub struct Thresholds {
        #[serde(skip_serializing_if = "Option::is_none")]
        pub max_connections: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub max_pending_requests: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub max_requests: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub max_retries: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub retry_budget: Option<RetryBudget>,
    }

    impl Thresholds {
        fn is_set(&self) -> bool {
            self.max_connections.is_some()
                || self.max_pending_requests.is_some()
                || self.max_requests.is_some()
                || self.max_retries.is_some()
                || self.retry_budget.is_some()
        }
    }

    #[derive(Serialize, Clone)]
    #[serde(rename_all = "camelCase")]
    pub struct RetryBudget {
        pub budget_percent: Percent,
        pub min_retry_concurrency: u32,
    }

    /// `envoy.type.v3.Percent`: a double, so `20.0` (what Envoy's own JSON shows).
    #[derive(Serialize, Clone)]
    pub struct Percent {
        pub value: f64,
    }

    #[derive(Serialize, Clone)]
    #[serde(rename_all = "camelCase")]
    pub struct OutlierDetection {
        #[serde(skip_serializing_if = "Option::is_none")]
        pub consecutive_5xx: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub interval: Option<Duration>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub base_ejection_time: Option<Duration>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub max_ejection_percent: Option<u32>,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct RouteConfiguration {
        pub name: String,
        pub virtual_hosts: Vec<VirtualHost>,
    }

    #[derive(Serialize)]
    pub struct VirtualHost {
        pub name: String,
        pub domains: Vec<&'static str>,
        pub routes: Vec<Route>,
    }

    #[derive(Serialize)]
    pub struct Route {
        pub r#match: RouteMatch,
        pub route: RouteAction,
    }

    #[derive(Serialize)]
    pub struct RouteMatch {
        pub prefix: &'static str,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct RouteAction {
        pub cluster: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub timeout: Option<Duration>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub auto_host_rewrite: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub retry_policy: Option<RetryPolicy>,
    }

    #[derive(Serialize, Clone)]
    #[serde(rename_all = "camelCase")]
    pub struct RetryPolicy {
        #[serde(skip_serializing_if = "String::is_empty")]
        pub retry_on: String,
        /// Written even when 0: unset would mean Envoy's default of 1 retry.
        pub num_retries: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub per_try_timeout: Option<Duration>,
    }

    /// A `google.protobuf.Duration`, written as proto3 JSON does: `"1s"`, `"0.250s"`.
    #[derive(Clone, Debug, PartialEq)]
    pub struct Duration {
        ms: u64,
    }

    impl Duration {
        pub fn from_ms(ms: u64) -> Self {
            Duration {
                ms: ms.min(MAX_DURATION_MS),
            }
        }
    }

    impl Serialize for Duration {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let (secs, millis) = (self.ms / 1000, self.ms % 1000);
            let text = if millis == 0 {
                format!("{secs}s")
            } else {
                format!("{secs}.{millis:03}s")
            };
            serializer.serialize_str(&text)
        }
    }
}

#[cfg(test)]
mod tests {
    //! Validity is checked against Envoy's own v3 API: every file's JSON form is decoded into
    //! the real protobuf types (unknown fields refused), re-encoded to prove the names and
    //! values are canonical, and checked against the `validate.rules` constraints Envoy
    //! enforces when it loads a config. Golden files pin the YAML byte for byte:
    //! `UPDATE_GOLDEN=1 cargo test golden` rewrites them after an intended change.

    use std::path::Path;
    use std::sync::LazyLock;

    use proptest::prelude::*;
    use prost_reflect::{DescriptorPool, DynamicMessage};
    use serde_json::json;

    use super::*;

    static POOL: LazyLock<DescriptorPool> =
        LazyLock::new(|| DescriptorPool::decode(xds_api::FILE_DESCRIPTOR_SET).unwrap());

    const BOOTSTRAP: &str = "envoy.config.bootstrap.v3.Bootstrap";
    const DISCOVERY_RESPONSE: &str = "envoy.service.discovery.v3.DiscoveryResponse";

    fn upstream(name: &str, namespace: &str, port: Option<u16>) -> Upstream {
        Upstream {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            port,
            capacity: Limits::default(),
        }
    }

    /// Every policy field set, as in the design's example.
    fn full_policy() -> TrafficPolicy {
        TrafficPolicy {
            max_connections: Some(1024),
            max_pending_requests: Some(512),
            max_requests: Some(2048),
            max_retries: Some(3),
            retry_budget: Some(RetryBudget {
                budget_percent: 20,
                min_retry_concurrency: 3,
            }),
            outlier: Some(OutlierDetection {
                consecutive_5xx: Some(5),
                interval_ms: Some(10_000),
                base_ejection_time_ms: Some(30_000),
                max_ejection_percent: Some(10),
            }),
            connect_timeout_ms: Some(250),
            request_timeout_ms: Some(15_000),
            retry: Some(RetryPolicy {
                attempts: 2,
                per_try_timeout_ms: Some(5_000),
                retry_on: "5xx,reset,connect-failure".to_owned(),
            }),
        }
    }

    /// Three dependencies, one in another namespace, one not there yet.
    fn aika() -> SidecarSpec {
        SidecarSpec {
            feature: "aika".to_owned(),
            namespace: "portal".to_owned(),
            app_port: 9898,
            upstreams: vec![
                upstream("catalog", "portal", Some(8080)),
                upstream("soundcheck", "tech-health", Some(7007)),
                upstream("skill-exchange", "portal", None),
            ],
            traffic: full_policy(),
        }
    }

    /// No dependencies, no policy: Envoy's defaults throughout.
    fn scorecard() -> SidecarSpec {
        SidecarSpec {
            feature: "scorecard".to_owned(),
            namespace: "default".to_owned(),
            app_port: 8080,
            ..SidecarSpec::default()
        }
    }

    // ---- validation against Envoy's API ----

    /// Decodes canonical proto3 JSON into the named Envoy message, refusing unknown fields.
    /// `Any` values (`@type` plus fields) resolve against the same pool with no extra option.
    fn decode(message: &str, json: &serde_json::Value) -> Result<DynamicMessage, String> {
        let desc = POOL.get_message_by_name(message).unwrap();
        DynamicMessage::deserialize(desc, json.clone()).map_err(|e| e.to_string())
    }

    /// Decodes, then proves the JSON is canonical (Envoy's own names and value forms, no
    /// default written out) and satisfies Envoy's `validate.rules`.
    fn assert_envoy_valid(message: &str, json: &serde_json::Value, what: &str) {
        let decoded = decode(message, json).unwrap_or_else(|e| panic!("{what}: {e}\n{json:#}"));
        let reencoded = serde_json::to_value(&decoded).unwrap();
        assert_eq!(&reencoded, json, "{what}: not canonical proto3 JSON");
        let mut violations = Vec::new();
        pgv::check(&decoded, what, &mut violations);
        assert!(violations.is_empty(), "{what}: {violations:#?}");
    }

    /// Everything Envoy would check when loading the files, plus the cross-file links it only
    /// discovers at run time.
    fn assert_valid(spec: &SidecarSpec) {
        let bootstrap = bootstrap_json(spec);
        let clusters = clusters_json(spec);
        let routes = routes_json(spec);
        assert_envoy_valid(BOOTSTRAP, &bootstrap, FILE_BOOTSTRAP);
        assert_envoy_valid(DISCOVERY_RESPONSE, &clusters, FILE_CLUSTERS);
        for (file, json) in &routes {
            assert_envoy_valid(DISCOVERY_RESPONSE, json, file);
        }

        // The YAML Envoy reads is the JSON that was validated.
        let rendered = render(spec);
        let yaml = |text: &str| serde_yaml::from_str::<serde_json::Value>(text).unwrap();
        assert_eq!(yaml(&rendered.bootstrap), bootstrap);
        assert_eq!(yaml(&rendered.clusters), clusters);
        assert_eq!(rendered.routes.len(), routes.len());
        for (file, json) in &routes {
            assert_eq!(&yaml(&rendered.routes[file]), json, "{file}");
        }

        for (file, text) in rendered.files() {
            assert_yaml_1_1_safe(&file, &text);
        }
        assert_links(spec, &bootstrap, &clusters, &routes);
    }

    /// Envoy converts YAML with yaml-cpp, which reads plain `y/n/yes/no/on/off` (any of
    /// lower, Upper or UPPER case) as booleans: such a string must be quoted.
    fn assert_yaml_1_1_safe(file: &str, text: &str) {
        const WORDS: [&str; 6] = ["y", "n", "yes", "no", "on", "off"];
        for line in text.lines() {
            let value = line.trim_start().trim_start_matches("- ");
            let value = value.split_once(": ").map_or(value, |(_, v)| v);
            let flexible = [value.to_lowercase(), value.to_uppercase()].contains(&value.to_owned())
                || value.chars().skip(1).all(|c| c.is_lowercase());
            assert!(
                !(flexible && WORDS.contains(&value.to_lowercase().as_str())),
                "{file}: YAML 1.1 reads `{line}` as a boolean"
            );
        }
    }

    fn strings<'a>(values: impl IntoIterator<Item = &'a serde_json::Value>) -> Vec<&'a str> {
        values.into_iter().map(|v| v.as_str().unwrap()).collect()
    }

    /// Listeners, route files and clusters refer to each other only by names that exist.
    fn assert_links(
        spec: &SidecarSpec,
        bootstrap: &serde_json::Value,
        clusters: &serde_json::Value,
        routes: &BTreeMap<String, serde_json::Value>,
    ) {
        let listeners = bootstrap["staticResources"]["listeners"]
            .as_array()
            .unwrap();
        assert_eq!(listeners.len(), spec.upstreams.len() + 1);
        let mut ports: Vec<_> = listeners
            .iter()
            .map(|l| &l["address"]["socketAddress"]["portValue"])
            .collect();
        ports.dedup();
        assert_eq!(ports.len(), listeners.len(), "listener ports are unique");

        let cluster_names = strings(
            clusters["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| &c["name"]),
        );
        let mut unique = cluster_names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            cluster_names.len(),
            "cluster names are unique"
        );

        let mut referenced_files = Vec::new();
        for listener in listeners {
            let hcm = &listener["filterChains"][0]["filters"][0]["typedConfig"];
            let rds = &hcm["rds"];
            let route_name = rds["routeConfigName"].as_str().unwrap();
            let path = rds["configSource"]["pathConfigSource"]["path"]
                .as_str()
                .unwrap();
            let file = path.strip_prefix("/etc/envoy/").unwrap();
            referenced_files.push(file.to_owned());
            // Envoy's RDS takes exactly one RouteConfiguration, named as asked.
            let resources = routes[file]["resources"].as_array().unwrap();
            assert_eq!(resources.len(), 1, "{file}");
            assert_eq!(resources[0]["name"], route_name, "{file}");
            let target = resources[0]["virtualHosts"][0]["routes"][0]["route"]["cluster"]
                .as_str()
                .unwrap();
            assert!(cluster_names.contains(&target), "{file}: {target} missing");
        }
        referenced_files.sort();
        referenced_files.dedup();
        assert_eq!(
            referenced_files,
            routes.keys().cloned().collect::<Vec<_>>(),
            "every route file is used"
        );
    }

    /// A subset of protoc-gen-validate, read from the `validate.rules` options in Envoy's
    /// descriptors: the rules the sidecar's fields carry (ranges, lengths, required messages
    /// and oneofs, defined enums, item counts). Patterns and `in` lists are not checked.
    mod pgv {
        use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MapKey, ReflectMessage, Value};

        use super::POOL;

        type Comparison = fn(f64, f64) -> bool;

        pub fn check(msg: &DynamicMessage, path: &str, out: &mut Vec<String>) {
            let rules_ext = POOL.get_extension_by_name("validate.rules").unwrap();
            let required_ext = POOL.get_extension_by_name("validate.required").unwrap();
            let desc = msg.descriptor();
            if desc.full_name() == "google.protobuf.Any" {
                return check_any(msg, path, out);
            }
            for oneof in desc.oneofs().filter(|o| !o.is_synthetic()) {
                let options = oneof.options();
                if options.has_extension(&required_ext)
                    && options.get_extension(&required_ext).as_bool() == Some(true)
                    && !oneof.fields().any(|f| msg.has_field(&f))
                {
                    out.push(format!("{path}: one of {} is required", oneof.name()));
                }
            }
            for field in desc.fields() {
                let field_path = format!("{path}.{}", field.json_name());
                let options = field.options();
                // A oneof member's rules apply only when it is the member set.
                let inactive = field.containing_oneof().is_some() && !msg.has_field(&field);
                if options.has_extension(&rules_ext)
                    && !inactive
                    && let Value::Message(rules) = options.get_extension(&rules_ext).as_ref()
                {
                    check_field(msg, &field, rules, &field_path, out);
                }
                if msg.has_field(&field) {
                    recurse(&msg.get_field(&field), &field_path, out);
                }
            }
        }

        fn recurse(value: &Value, path: &str, out: &mut Vec<String>) {
            match value {
                Value::Message(m) => check(m, path, out),
                Value::List(items) => {
                    for (i, item) in items.iter().enumerate() {
                        recurse(item, &format!("{path}[{i}]"), out);
                    }
                }
                Value::Map(entries) => {
                    for (key, item) in entries {
                        let key = match key {
                            MapKey::String(s) => s.clone(),
                            other => format!("{other:?}"),
                        };
                        recurse(item, &format!("{path}[{key}]"), out);
                    }
                }
                _ => {}
            }
        }

        /// An `Any`'s payload is checked as the message its `@type` names.
        fn check_any(any: &DynamicMessage, path: &str, out: &mut Vec<String>) {
            let type_url = any.get_field_by_name("type_url").unwrap();
            let type_url = type_url.as_str().unwrap();
            let name = type_url.rsplit('/').next().unwrap();
            let Some(desc) = POOL.get_message_by_name(name) else {
                return out.push(format!("{path}: unknown @type {type_url}"));
            };
            let bytes = any.get_field_by_name("value").unwrap();
            let payload = DynamicMessage::decode(desc, bytes.as_bytes().unwrap().clone()).unwrap();
            check(&payload, &format!("{path}<{name}>"), out);
        }

        fn check_field(
            msg: &DynamicMessage,
            field: &FieldDescriptor,
            rules: &DynamicMessage,
            path: &str,
            out: &mut Vec<String>,
        ) {
            let value = msg.get_field(field);
            if field.is_map() {
                return;
            }
            if !field.is_list() {
                return check_value(&value, msg.has_field(field), field, rules, path, out);
            }
            let items = value.as_list().unwrap();
            let Some(repeated) = set_message(rules, "repeated") else {
                return;
            };
            if let Some(min) = set_u64(&repeated, "min_items")
                && (items.len() as u64) < min
            {
                out.push(format!("{path}: needs at least {min} items"));
            }
            if let Some(item_rules) = set_message(&repeated, "items") {
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{path}[{i}]");
                    check_value(item, true, field, &item_rules, &item_path, out);
                }
            }
        }

        fn set_message(rules: &DynamicMessage, name: &str) -> Option<DynamicMessage> {
            rules.has_field_by_name(name).then_some(())?;
            rules.get_field_by_name(name)?.as_message().cloned()
        }

        fn set_u64(rules: &DynamicMessage, name: &str) -> Option<u64> {
            rules.has_field_by_name(name).then_some(())?;
            rules.get_field_by_name(name)?.as_u64()
        }

        fn flag(rules: &DynamicMessage, name: &str) -> bool {
            rules.get_field_by_name(name).and_then(|v| v.as_bool()) == Some(true)
        }

        /// Applies the rule kinds set in `rules` to one value. Scalar rules on a wrapper type
        /// (`UInt32Value`...) apply to its value, when set.
        fn check_value(
            value: &Value,
            present: bool,
            field: &FieldDescriptor,
            rules: &DynamicMessage,
            path: &str,
            out: &mut Vec<String>,
        ) {
            let inner = |v: &Value| match v {
                Value::Message(m) => m.get_field_by_name("value").map(|v| v.into_owned()),
                other => Some(other.clone()),
            };
            for (rule_field, rule) in rules.fields() {
                let Value::Message(rule) = rule else { continue };
                let kind = rule_field.name();
                if matches!(kind, "message" | "any" | "duration") && !present {
                    if flag(rule, "required") {
                        out.push(format!("{path}: required"));
                    }
                    continue;
                }
                if matches!(value, Value::Message(_)) && !present {
                    continue;
                }
                match kind {
                    "duration" => {
                        let nanos = |m: &DynamicMessage| {
                            let s = m.get_field_by_name("seconds")?.as_i64()?;
                            let n = m.get_field_by_name("nanos")?.as_i32()?;
                            Some(s as f64 * 1e9 + f64::from(n))
                        };
                        let actual = value.as_message().and_then(nanos).unwrap();
                        check_range(rule, actual, path, out, |v| v.as_message().and_then(nanos));
                    }
                    "string" => {
                        let s = inner(value).unwrap().as_str().unwrap().to_owned();
                        let (chars, bytes) = (s.chars().count() as u64, s.len() as u64);
                        if set_u64(rule, "min_len").is_some_and(|min| chars < min)
                            || set_u64(rule, "min_bytes").is_some_and(|min| bytes < min)
                        {
                            out.push(format!("{path}: {s:?} too short"));
                        }
                        if set_u64(rule, "max_len").is_some_and(|max| chars > max)
                            || set_u64(rule, "max_bytes").is_some_and(|max| bytes > max)
                        {
                            out.push(format!("{path}: {s:?} too long"));
                        }
                    }
                    "enum" => {
                        if flag(rule, "defined_only")
                            && let (Kind::Enum(e), Some(n)) = (field.kind(), value.as_enum_number())
                            && e.get_value(n).is_none()
                        {
                            out.push(format!("{path}: undefined enum value {n}"));
                        }
                    }
                    "uint32" | "uint64" | "int32" | "int64" | "sint32" | "sint64" | "fixed32"
                    | "fixed64" | "double" | "float" => {
                        if let Some(actual) = inner(value).as_ref().and_then(number) {
                            check_range(rule, actual, path, out, number);
                        }
                    }
                    _ => {}
                }
            }
        }

        fn number(value: &Value) -> Option<f64> {
            match *value {
                Value::U32(v) => Some(f64::from(v)),
                Value::U64(v) => Some(v as f64),
                Value::I32(v) => Some(f64::from(v)),
                Value::I64(v) => Some(v as f64),
                Value::F32(v) => Some(f64::from(v)),
                Value::F64(v) => Some(v),
                _ => None,
            }
        }

        fn check_range(
            rule: &DynamicMessage,
            actual: f64,
            path: &str,
            out: &mut Vec<String>,
            bound: impl Fn(&Value) -> Option<f64>,
        ) {
            let checks: [(&str, Comparison); 5] = [
                ("const", |a, b| a == b),
                ("lt", |a, b| a < b),
                ("lte", |a, b| a <= b),
                ("gt", |a, b| a > b),
                ("gte", |a, b| a >= b),
            ];
            for (name, holds) in checks {
                if !rule.has_field_by_name(name) {
                    continue;
                }
                let limit = bound(&rule.get_field_by_name(name).unwrap()).unwrap();
                if !holds(actual, limit) {
                    out.push(format!("{path}: {actual} violates {name} {limit}"));
                }
            }
        }
    }

    #[test]
    fn full_spec_is_valid_envoy_config() {
        assert_valid(&aika());
    }

    #[test]
    fn minimal_spec_is_valid_envoy_config() {
        assert_valid(&scorecard());
    }

    #[test]
    fn decoding_refuses_an_unknown_field_by_name() {
        let mut clusters = clusters_json(&aika());
        clusters["resources"][0]["circuitBreakers"]["thresholds"][0]["maxConnectionz"] = json!(1);
        let err = decode(DISCOVERY_RESPONSE, &clusters).unwrap_err();
        assert!(err.contains("maxConnectionz"), "{err}");

        // Inside an Any typed config too.
        let mut bootstrap = bootstrap_json(&aika());
        bootstrap["staticResources"]["listeners"][0]["filterChains"][0]["filters"][0]["typedConfig"]
            ["statPrefx"] = json!("x");
        let err = decode(BOOTSTRAP, &bootstrap).unwrap_err();
        assert!(err.contains("statPrefx"), "{err}");

        // And an unknown @type.
        let mut routes = routes_json(&aika());
        let inbound = routes.get_mut(&routes_file(INBOUND_ROUTE)).unwrap();
        inbound["resources"][0]["@type"] = json!("type.googleapis.com/envoy.config.route.v3.Nope");
        let err = decode(DISCOVERY_RESPONSE, inbound).unwrap_err();
        assert!(err.contains("envoy.config.route.v3.Nope"), "{err}");
    }

    #[test]
    fn validation_rules_bite() {
        let mut clusters = clusters_json(&aika());
        clusters["resources"][1]["connectTimeout"] = json!("0s");
        clusters["resources"][1]["outlierDetection"]["maxEjectionPercent"] = json!(101);
        clusters["resources"][1]["loadAssignment"]["clusterName"] = json!("");
        let decoded = decode(DISCOVERY_RESPONSE, &clusters).unwrap();
        let mut violations = Vec::new();
        pgv::check(&decoded, "cds", &mut violations);
        let text = violations.join("\n");
        assert_eq!(violations.len(), 3, "{text}");
        for field in ["connectTimeout", "maxEjectionPercent", "clusterName"] {
            assert!(text.contains(field), "{field} not flagged:\n{text}");
        }

        // Inside an Any typed config too.
        let mut bootstrap = bootstrap_json(&aika());
        let hcm = &mut bootstrap["staticResources"]["listeners"][1]["filterChains"][0]["filters"]
            [0]["typedConfig"];
        hcm["statPrefix"] = json!("");
        let decoded = decode(BOOTSTRAP, &bootstrap).unwrap();
        let mut violations = Vec::new();
        pgv::check(&decoded, "bootstrap", &mut violations);
        assert_eq!(violations.len(), 1, "{violations:#?}");
        assert!(violations[0].contains("HttpConnectionManager>.statPrefix"));
    }

    #[test]
    fn yaml_1_1_booleans_are_never_bare() {
        let mut spec = aika();
        spec.feature = "no".to_owned();
        spec.namespace = "on".to_owned();
        spec.upstreams[0].name = "yes".to_owned();
        spec.traffic.retry.as_mut().unwrap().retry_on = "on".to_owned();
        assert_valid(&spec);
        // serde_yaml alone would write the word bare, and the check notices.
        assert_eq!(serde_yaml::to_string("no").unwrap(), "no\n");
        let bare = std::panic::catch_unwind(|| assert_yaml_1_1_safe("x", "cluster: No\n"));
        assert!(bare.is_err());
    }

    #[test]
    fn rds_files_hold_one_route_configuration_each() {
        let routes = routes_json(&aika());
        let files: Vec<_> = routes.keys().map(String::as_str).collect();
        assert_eq!(
            files,
            [
                "rds.dep_portal_catalog.yaml",
                "rds.dep_portal_skill-exchange.yaml",
                "rds.dep_tech-health_soundcheck.yaml",
                "rds.inbound.yaml",
            ]
        );
    }

    #[test]
    fn durations_are_proto3_json_strings() {
        let text = |ms| serde_json::to_value(v3::Duration::from_ms(ms)).unwrap();
        assert_eq!(text(0), "0s");
        assert_eq!(text(250), "0.250s");
        assert_eq!(text(1_000), "1s");
        assert_eq!(text(1_500), "1.500s");
        assert_eq!(text(15_000), "15s");
        assert_eq!(text(u64::MAX), "315576000000s");
    }

    #[test]
    fn unset_policy_leaves_envoy_defaults() {
        let clusters = clusters_json(&scorecard());
        let local = &clusters["resources"][0];
        assert_eq!(local["name"], LOCAL_APP_CLUSTER);
        for field in [
            "connectTimeout",
            "circuitBreakers",
            "outlierDetection",
            "type",
        ] {
            assert!(local.get(field).is_none(), "{field} written");
        }
        let route = &routes_json(&scorecard())["rds.inbound.yaml"]["resources"][0]["virtualHosts"]
            [0]["routes"][0]["route"];
        assert_eq!(route, &json!({"cluster": "local_app"}));
    }

    #[test]
    fn local_app_sheds_load_without_retry_thresholds() {
        let clusters = clusters_json(&aika());
        let thresholds = &clusters["resources"][0]["circuitBreakers"]["thresholds"][0];
        assert_eq!(
            thresholds,
            &json!({"maxConnections": 1024, "maxPendingRequests": 512, "maxRequests": 2048})
        );
        let inbound = &routes_json(&aika())["rds.inbound.yaml"]["resources"][0]["virtualHosts"][0]
            ["routes"][0]["route"];
        assert!(inbound.get("retryPolicy").is_none());
        assert_eq!(inbound["timeout"], "15s");
    }

    #[test]
    fn absent_dependency_has_a_listener_and_an_empty_cluster() {
        let spec = aika();
        let clusters = clusters_json(&spec);
        let cluster = clusters["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "dep_portal_skill-exchange")
            .unwrap();
        assert_eq!(
            cluster["loadAssignment"],
            json!({"clusterName": "dep_portal_skill-exchange"})
        );
        assert!(cluster.get("type").is_none(), "STATIC, not a DNS cluster");

        // When it appears, only the clusters change.
        let mut appeared = spec.clone();
        appeared.upstreams[2].port = Some(80);
        let (before, after) = (render(&spec), render(&appeared));
        assert_eq!(before.bootstrap, after.bootstrap);
        assert_eq!(before.routes, after.routes);
        assert_ne!(before.clusters, after.clusters);
        assert!(
            after
                .clusters
                .contains("skill-exchange.portal.svc.cluster.local")
        );
        assert_valid(&appeared);
    }

    #[test]
    fn a_capacity_share_lowers_that_dependency_only_and_reloads_without_restart() {
        let before = render(&aika());
        let mut spec = aika();
        spec.traffic.max_requests = Some(50);
        let policy_only = render(&spec);
        spec.upstreams[0].capacity = Limits {
            max_connections: Some(7),
            max_requests: Some(200),
            ..Limits::default()
        };
        assert_valid(&spec);
        let after = render(&spec);
        assert_eq!(before.listeners_hash, after.listeners_hash);
        assert_ne!(policy_only.clusters, after.clusters);
        let clusters = clusters_json(&spec);
        let thresholds = |name: &str| {
            let resources = clusters["resources"].as_array().unwrap();
            let c = resources.iter().find(|c| c["name"] == name).unwrap();
            c["circuitBreakers"]["thresholds"][0].clone()
        };
        let capped = thresholds(&upstream_cluster(&spec.upstreams[0]));
        // The share lowers connections; the policy's 50 requests stays the ceiling over 200.
        assert_eq!(capped["maxConnections"], json!(7));
        assert_eq!(capped["maxRequests"], json!(50));
        let other = thresholds(&upstream_cluster(&spec.upstreams[1]));
        assert_eq!(other["maxConnections"], json!(1024));
        assert_eq!(thresholds(LOCAL_APP_CLUSTER)["maxConnections"], json!(1024));
    }

    #[test]
    fn policy_change_reloads_without_restart() {
        let before = render(&aika());
        let mut spec = aika();
        spec.traffic.max_connections = Some(10);
        spec.traffic.outlier = None;
        spec.traffic.request_timeout_ms = Some(3_000);
        spec.traffic.retry = None;
        let after = render(&spec);
        assert_eq!(before.bootstrap, after.bootstrap);
        assert_eq!(before.listeners_hash, after.listeners_hash);
        assert_ne!(before.clusters, after.clusters);
        assert_ne!(before.routes, after.routes);
        assert_eq!(
            before.routes.keys().collect::<Vec<_>>(),
            after.routes.keys().collect::<Vec<_>>(),
            "same files, so the bootstrap's paths stay valid"
        );
        assert_ne!(before.config_hash, after.config_hash);
    }

    #[test]
    fn listener_changes_roll_pods() {
        let base = render(&aika());

        let mut added = aika();
        added.upstreams.push(upstream("search", "portal", Some(80)));
        let added = render(&added);
        assert_ne!(base.listeners_hash, added.listeners_hash);
        assert_ne!(base.config_hash, added.config_hash);

        let mut reordered = aika();
        reordered.upstreams.swap(0, 1);
        let reordered = render(&reordered);
        assert_ne!(base.listeners_hash, reordered.listeners_hash);

        // A reorder moves ports, never what a route name means: pods still on the old
        // bootstrap keep reaching the right dependency through the new files.
        assert_eq!(base.routes, reordered.routes);
    }

    #[test]
    fn output_is_deterministic() {
        let (a, b) = (render(&aika()), render(&aika().clone()));
        assert_eq!(a, b);
        assert_eq!(a.listeners_hash.len(), 16);
        assert!(a.config_hash.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a.listeners_hash, short_hash(a.bootstrap.as_bytes()));
    }

    #[test]
    fn files_are_the_configmap_data() {
        let rendered = render(&aika());
        let files = rendered.files();
        assert_eq!(files[FILE_BOOTSTRAP], rendered.bootstrap);
        assert_eq!(files[FILE_CLUSTERS], rendered.clusters);
        assert_eq!(files.len(), 2 + rendered.routes.len());
        // ConfigMap keys: [-._a-zA-Z0-9]+
        for key in files.keys() {
            assert!(
                key.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
            );
        }
        assert_eq!(rendered.config_hash, files_hash(&files));
    }

    #[test]
    fn env_vars_and_urls() {
        assert_eq!(
            upstream_env_var("skill-exchange"),
            "PREMIUM_SKILL_EXCHANGE_URL"
        );
        assert_eq!(upstream_env_var("catalog"), "PREMIUM_CATALOG_URL");
        assert_eq!(upstream_env_var("a.b-c9"), "PREMIUM_A_B_C9_URL");
        assert_eq!(upstream_url(0), "http://127.0.0.1:15101");
        assert_eq!(upstream_url(2), "http://127.0.0.1:15103");
        assert_eq!(outbound_port(MAX_UPSTREAMS - 1), *RESERVED_PORTS.end());
        assert_eq!(outbound_port(usize::MAX), u16::MAX);
        assert!(is_reserved_port(ENVOY_ADMIN_PORT) && is_reserved_port(ENVOY_INBOUND_PORT));
        assert!(!is_reserved_port(9898));
    }

    #[test]
    fn cluster_names_stay_distinct() {
        let plain = upstream_cluster(&upstream("catalog", "portal", None));
        assert_eq!(plain, "dep_portal_catalog");
        // Names Kubernetes would refuse still never collide.
        let a = upstream_cluster(&upstream("a_b", "c", None));
        let b = upstream_cluster(&upstream("b", "c_a", None));
        let c = upstream_cluster(&upstream("a.b", "c", None));
        assert!(a != b && a != c && b != c, "{a} {b} {c}");
        assert!(a.starts_with("dep_c_a-b_"));
        let long = upstream_cluster(&upstream(&"x".repeat(300), "portal", None));
        assert!(long.len() <= 4 + 63 + 1 + 63 + 1 + 8, "{long}");
    }

    #[test]
    fn duplicate_dependency_shares_its_cluster() {
        let mut spec = aika();
        spec.upstreams.push(spec.upstreams[0].clone());
        assert_valid(&spec);
        let clusters = clusters_json(&spec);
        assert_eq!(clusters["resources"].as_array().unwrap().len(), 4);
        assert_eq!(routes_json(&spec).len(), 4);
    }

    #[test]
    fn out_of_range_values_are_clamped_to_what_envoy_accepts() {
        let mut spec = aika();
        spec.traffic.connect_timeout_ms = Some(0);
        spec.traffic.retry_budget = Some(RetryBudget {
            budget_percent: 500,
            min_retry_concurrency: 0,
        });
        spec.traffic.outlier = Some(OutlierDetection {
            consecutive_5xx: Some(0),
            interval_ms: Some(0),
            base_ejection_time_ms: Some(u64::MAX),
            max_ejection_percent: Some(u32::MAX),
        });
        spec.traffic.retry = Some(RetryPolicy {
            attempts: 0,
            per_try_timeout_ms: Some(0),
            retry_on: " 5xx , ,reset ".to_owned(),
        });
        assert_valid(&spec);
        let routes = routes_json(&spec);
        let retry = &routes["rds.dep_portal_catalog.yaml"]["resources"][0]["virtualHosts"][0]["routes"]
            [0]["route"]["retryPolicy"];
        assert_eq!(
            retry,
            &json!({"retryOn": "5xx,reset", "numRetries": 0, "perTryTimeout": "0s"})
        );
    }

    // ---- golden files ----

    /// Compares every rendered file with `testdata/<case>.<file>`; `UPDATE_GOLDEN=1` rewrites
    /// them (and removes stale ones) instead.
    fn check_golden(case: &str, spec: &SidecarSpec) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core/sidecar/testdata");
        let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
        let files = render(spec).files();
        let mut problems = Vec::new();
        for (name, actual) in &files {
            let path = dir.join(format!("{case}.{name}"));
            if update {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, actual).unwrap();
                continue;
            }
            match std::fs::read_to_string(&path) {
                Err(err) => problems.push(format!("{}: {err}", path.display())),
                Ok(expected) if expected != *actual => {
                    problems.push(format!(
                        "{}: {}",
                        path.display(),
                        first_difference(&expected, actual)
                    ));
                }
                Ok(_) => {}
            }
        }
        for entry in std::fs::read_dir(&dir).unwrap() {
            let file = entry.unwrap().file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_prefix(&format!("{case}.")) else {
                continue;
            };
            if !files.contains_key(name) {
                if update {
                    std::fs::remove_file(dir.join(&file)).unwrap();
                } else {
                    problems.push(format!("{file}: no longer rendered"));
                }
            }
        }
        assert!(
            problems.is_empty(),
            "golden files differ:\n{}\nIf the change is intended: UPDATE_GOLDEN=1 cargo test golden, then review the diff.",
            problems.join("\n")
        );
    }

    fn first_difference(expected: &str, actual: &str) -> String {
        let (mut e, mut a) = (expected.lines(), actual.lines());
        for line in 1.. {
            match (e.next(), a.next()) {
                (Some(x), Some(y)) if x == y => {}
                (x, y) => {
                    return format!(
                        "line {line}\n  expected: {}\n  actual:   {}",
                        x.unwrap_or("<end of file>"),
                        y.unwrap_or("<end of file>")
                    );
                }
            }
        }
        unreachable!()
    }

    #[test]
    fn golden_portal_aika() {
        check_golden("portal_aika", &aika());
    }

    #[test]
    fn golden_default_scorecard() {
        check_golden("default_scorecard", &scorecard());
    }

    // ---- properties ----

    /// A DNS-1123 label (what Kubernetes allows), biased towards YAML 1.1 booleans.
    fn label() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
            1 => prop::sample::select(vec!["y", "n", "no", "on", "off", "yes", "null", "1", "0x1f", "1e5"])
                .prop_map(str::to_owned),
        ]
    }

    fn feature_port() -> impl Strategy<Value = u16> {
        (1u16..=65535).prop_filter("reserved for the sidecar", |p| !is_reserved_port(*p))
    }

    fn policy() -> impl Strategy<Value = TrafficPolicy> {
        let breakers = (
            proptest::option::of(0u32..100_000),
            proptest::option::of(0u32..100_000),
            proptest::option::of(0u32..100_000),
            proptest::option::of(0u32..100),
            proptest::option::of((1u32..=100, 0u32..100).prop_map(|(p, m)| RetryBudget {
                budget_percent: p,
                min_retry_concurrency: m,
            })),
        );
        let outlier = proptest::option::of(
            (
                proptest::option::of(0u32..100),
                proptest::option::of(1u64..600_000),
                proptest::option::of(1u64..600_000),
                proptest::option::of(0u32..=100),
            )
                .prop_map(|(c, i, b, m)| OutlierDetection {
                    consecutive_5xx: c,
                    interval_ms: i,
                    base_ejection_time_ms: b,
                    max_ejection_percent: m,
                }),
        );
        let retry = proptest::option::of(
            (
                0u32..10,
                proptest::option::of(0u64..60_000),
                proptest::sample::subsequence(RETRY_ON_CONDITIONS.to_vec(), 0..=4),
            )
                .prop_map(|(attempts, per_try, on)| RetryPolicy {
                    attempts,
                    per_try_timeout_ms: per_try,
                    retry_on: on.join(","),
                }),
        );
        (
            breakers,
            outlier,
            proptest::option::of(1u64..60_000),
            proptest::option::of(0u64..600_000),
            retry,
        )
            .prop_map(
                |((mc, mp, mr, mx, budget), outlier, connect, request, retry)| TrafficPolicy {
                    max_connections: mc,
                    max_pending_requests: mp,
                    max_requests: mr,
                    max_retries: mx,
                    retry_budget: budget,
                    outlier,
                    connect_timeout_ms: connect,
                    request_timeout_ms: request,
                    retry,
                },
            )
    }

    /// A sidecar's part of a dependency's capacity: at least 1 where set.
    fn capacity() -> impl Strategy<Value = Limits> {
        let limit = || proptest::option::of(1u32..1_000_000);
        (limit(), limit(), limit()).prop_map(|(c, p, r)| Limits {
            max_connections: c,
            max_pending_requests: p,
            max_requests: r,
        })
    }

    fn spec() -> impl Strategy<Value = SidecarSpec> {
        let upstreams = proptest::collection::vec(
            (
                label(),
                label(),
                proptest::option::of(feature_port()),
                capacity(),
            )
                .prop_map(|(name, namespace, port, capacity)| Upstream {
                    name,
                    namespace,
                    port,
                    capacity,
                }),
            0..=6,
        );
        (label(), label(), feature_port(), upstreams, policy()).prop_map(
            |(feature, namespace, app_port, upstreams, traffic)| SidecarSpec {
                feature,
                namespace,
                app_port,
                upstreams,
                traffic,
            },
        )
    }

    /// Input the API would refuse: any text, any number.
    fn garbage_spec() -> impl Strategy<Value = SidecarSpec> {
        let text = || {
            prop_oneof![
                "\\PC{0,12}",
                prop::sample::select(vec!["On", "NO", "y", "~", "null", "", "'", "- x", "a: b"])
                    .prop_map(str::to_owned),
            ]
        };
        let upstreams = proptest::collection::vec(
            (text(), text(), any::<Option<u16>>()).prop_map(|(name, namespace, port)| Upstream {
                name,
                namespace,
                port,
                capacity: Limits::default(),
            }),
            0..=4,
        );
        let traffic = (
            any::<(Option<u32>, Option<u32>, Option<u32>, Option<u32>)>(),
            any::<Option<(u32, u32)>>(),
            any::<Option<(Option<u32>, Option<u64>, Option<u64>, Option<u32>)>>(),
            any::<(Option<u64>, Option<u64>)>(),
            any::<Option<(u32, Option<u64>, String)>>(),
        )
            .prop_map(
                |((mc, mp, mr, mx), budget, outlier, (connect, request), retry)| TrafficPolicy {
                    max_connections: mc,
                    max_pending_requests: mp,
                    max_requests: mr,
                    max_retries: mx,
                    retry_budget: budget.map(|(p, m)| RetryBudget {
                        budget_percent: p,
                        min_retry_concurrency: m,
                    }),
                    outlier: outlier.map(|(c, i, b, m)| OutlierDetection {
                        consecutive_5xx: c,
                        interval_ms: i,
                        base_ejection_time_ms: b,
                        max_ejection_percent: m,
                    }),
                    connect_timeout_ms: connect,
                    request_timeout_ms: request,
                    retry: retry.map(|(attempts, per_try, on)| RetryPolicy {
                        attempts,
                        per_try_timeout_ms: per_try,
                        retry_on: on,
                    }),
                },
            );
        (text(), text(), any::<u16>(), upstreams, traffic).prop_map(
            |(feature, namespace, app_port, upstreams, traffic)| SidecarSpec {
                feature,
                namespace,
                app_port,
                upstreams,
                traffic,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_spec_renders_valid_envoy_config(spec in spec()) {
            assert_valid(&spec);
        }

        #[test]
        fn refused_input_still_renders_loadable_config(spec in garbage_spec()) {
            assert_valid(&spec);
        }

        #[test]
        fn policy_never_touches_the_bootstrap(spec in spec(), other in policy()) {
            let changed = SidecarSpec { traffic: other, ..spec.clone() };
            prop_assert_eq!(render(&spec).listeners_hash, render(&changed).listeners_hash);
        }
    }
}
