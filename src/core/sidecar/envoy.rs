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
/// silently, so the API should refuse them to avoid a retry policy that never fires.
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
    /// Comma-separated conditions, see [`RETRY_ON_CONDITIONS`].
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
/// `dep_<namespace>_<name>` (unambiguous: they contain no `_`); anything else is sanitized and
/// gets a hash suffix so two different dependencies can never share a cluster.
pub fn upstream_cluster(upstream: &Upstream) -> String {
    let is_label = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if is_label(&upstream.namespace) && is_label(&upstream.name) {
        return format!("dep_{}_{}", upstream.namespace, upstream.name);
    }
    let sanitize = |s: &str| -> String {
        s.chars()
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
        v3::Bootstrap {
            node: v3::Node {
                id: format!("{}.{}", self.spec.feature, self.spec.namespace),
                cluster: self.spec.feature.clone(),
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
                circuit_breakers: v3::CircuitBreakers::from(upstream_breakers.clone()),
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
                .filter(|c| !c.is_empty())
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
