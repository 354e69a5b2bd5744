//! A short run of the `make bench` harness (N=20) so that `make test` keeps it working, with
//! the quality bars that hold at any size asserted.

mod support;

#[path = "../bench/harness.rs"]
mod harness;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_harness_at_twenty_features() -> anyhow::Result<()> {
    let mut opts = harness::Options::new(20);
    opts.steady_window = Duration::from_secs(5);
    opts.timeout = Duration::from_secs(60);
    let r = harness::run(&opts).await?;
    println!("{}", harness::table(std::slice::from_ref(&r)));

    assert_eq!(r.size, 20);
    assert!(r.convergence_seconds > 0.0);
    assert!(r.baseline_seconds.is_some_and(|b| b > 0.0));
    assert!(r.gated_baseline_seconds.is_some_and(|b| b > 0.0), "{r:?}");
    // The same-writes client sends: ConfigMap, Service, held Deployment, scaled Deployment,
    // HPA, Starting and Ready statuses (7 per feature at the top level; 8 below it, with the
    // status that names what it waits for). The way up to Ready has no Events, and the chart's
    // finalizer policy gave every feature its finalizer at create.
    assert!(
        r.same_writes_baseline_seconds.is_some_and(|b| b > 0.0),
        "{r:?}"
    );
    assert!(
        r.same_writes_baseline_requests_per_feature
            .is_some_and(|q| (7.0..=8.0).contains(&q)),
        "{r:?}"
    );
    // Every feature below the top level waited for its dependencies: one hop each.
    assert_eq!(r.hop_samples, 18, "{r:?}");
    assert!(
        r.hop_p99_ms < 2000.0,
        "dependency hop p99 {} ms",
        r.hop_p99_ms
    );
    // The operator timed the same hops itself.
    assert_eq!(r.operator_hop_samples, 18, "{r:?}");
    assert!(r.operator_hop_p99_ms.is_some_and(|p| p > 0.0), "{r:?}");
    // Every scale-up was queued by an event (a dependency turning Ready).
    assert!(r.queue_wait_p99_ms.is_some(), "{r:?}");
    assert!(r.reconcile_p99_ms.is_some_and(|p| p > 0.0), "{r:?}");
    // The operator timed its own writes (the floor under the hop).
    assert!(r.api_patch_p50_ms.is_some_and(|p| p > 0.0), "{r:?}");
    assert!(
        r.api_patch_p99_ms >= r.api_patch_p50_ms,
        "patch p99 below its p50: {r:?}"
    );
    assert!(
        r.api_requests.get("patch").copied().unwrap_or(0) > 0,
        "{r:?}"
    );
    assert!(r.reconciles_per_feature >= 1.0, "{r:?}");
    // A new feature's objects are written without being read first (the watches already say
    // the names are free), and the way up to Ready creates no Events.
    let per_feature = |verb: &str| r.api_requests.get(verb).copied().unwrap_or(0) as f64 / 20.0;
    assert!(per_feature("get") < 0.5, "GETs per feature: {r:?}");
    assert!(
        per_feature("create") < 0.5,
        "creates (Events) per feature: {r:?}"
    );
    // With the finalizer policy the operator never writes a feature object itself.
    assert!(r.finalizer_at_admission, "{r:?}");
    assert_eq!(r.finalizer_writes, 0, "finalizer writes: {r:?}");
    assert_eq!(r.steady_writes, 0, "writes in a steady state: {r:?}");
    assert_eq!(r.restart_writes, 0, "writes after a restart: {r:?}");
    // The restart's cost is measured: its lists and watches, its memory, a plain list's time.
    assert!(
        r.restart_api_requests.get("list").is_some_and(|l| *l > 0),
        "{r:?}"
    );
    assert!(
        r.restart_rss_peak_mib > 0.0 && r.restart_list_seconds > 0.0,
        "{r:?}"
    );
    assert!(r.rss_peak_mib > 0.0 && r.rss_steady_mib > 0.0, "{r:?}");
    // CPU time is read for the control plane (its pid files beside the kubeconfig, as
    // hack/cluster-up.sh writes them) and the operator, in both kinds of run.
    for (run, cpu) in [
        ("baseline", &r.baseline_cpu_seconds),
        ("same-writes baseline", &r.same_writes_baseline_cpu_seconds),
        ("operator", &r.operator_cpu_seconds),
    ] {
        assert!(
            cpu.get("kube-apiserver").is_some_and(|s| *s > 0.0),
            "no kube-apiserver CPU time in the {run} run (a cluster from hack/cluster-up.sh?): {r:?}"
        );
    }
    assert!(
        r.operator_cpu_seconds
            .get("operator")
            .is_some_and(|s| *s > 0.0),
        "no operator CPU time: {r:?}"
    );
    Ok(())
}

#[test]
fn workload_is_seeded_levelled_and_points_one_level_up() {
    let a = harness::workload(100, 7);
    assert_eq!(a, harness::workload(100, 7));
    assert_ne!(a, harness::workload(100, 8));
    assert_eq!(a.len(), harness::LEVELS);
    assert_eq!(a.iter().map(Vec::len).sum::<usize>(), 100);
    for (l, level) in a.iter().enumerate() {
        for node in level {
            if l == 0 {
                assert!(node.deps.is_empty());
            } else {
                assert!((1..=3).contains(&node.deps.len()));
                let above: Vec<&str> = a[l - 1].iter().map(|n| n.name.as_str()).collect();
                assert!(node.deps.iter().all(|d| above.contains(&d.as_str())));
            }
        }
    }
}

/// The room a size needs counts every container the scheduler counts: at its minimum of one
/// replica, each of the workload's pods requests Envoy's 50m CPU and 64Mi (a native sidecar,
/// which the 10,000 run once left out: 7,400 pods Pending on a node full by CPU).
#[test]
fn room_needed_counts_the_sidecar_of_every_pod() {
    let levels = harness::workload(100, 7);
    let need = harness::room_needed(&levels);
    assert_eq!(need["pods"], 100.0);
    assert!(need["cpu"] > 100.0 * 0.05 - 1e-6, "{need:?}");
    assert!(need["memory"] >= 100.0 * 64.0 * 1024.0 * 1024.0, "{need:?}");
}

#[test]
fn histogram_quantiles_interpolate_inside_the_bucket() {
    let h = "h_bucket{le=\"0.1\"}";
    let before = harness::Scrape::parse(&format!(
        "{h} 5\nh_bucket{{le=\"0.2\"}} 5\nh_bucket{{le=\"+Inf\"}} 5\n"
    ));
    // Since `before`: 10 observations ≤ 0.1 s, 10 more in (0.1, 0.2], none above.
    let after = harness::Scrape::parse(&format!(
        "# HELP h a histogram\n{h} 15\nh_bucket{{le=\"0.2\"}} 25\nh_bucket{{le=\"+Inf\"}} 25\n"
    ));
    let q = |q: f64| after.quantile_since(&before, "h", q).unwrap();
    assert!((q(0.5) - 0.1).abs() < 1e-9, "{}", q(0.5));
    assert!((q(0.75) - 0.15).abs() < 1e-9, "{}", q(0.75));
    assert!((q(0.25) - 0.05).abs() < 1e-9, "{}", q(0.25));
    assert_eq!(after.quantile_since(&after, "h", 0.5), None);
    assert_eq!(after.quantile_since(&before, "missing", 0.5), None);
    // One series of a labelled histogram (the client puts `le` first).
    let labelled = harness::Scrape::parse(
        "r_bucket{le=\"1\",controller=\"feature\"} 4\nr_bucket{le=\"+Inf\",controller=\"feature\"} 4\nr_bucket{le=\"1\",controller=\"policy\"} 0\nr_bucket{le=\"+Inf\",controller=\"policy\"} 9\n",
    );
    let empty = harness::Scrape::parse("");
    let feature = labelled.series_quantile_since(&empty, "r", Some("controller=\"feature\""), 0.5);
    assert!((feature.unwrap() - 0.5).abs() < 1e-9, "{feature:?}");
}
