//! `make bench`: the operator's convergence, API cost, steady state and memory against a
//! hand-written baseline, on the local control plane. See bench/harness.rs for what is
//! measured; results go to target/bench/results.json and a table on stdout.
//!
//! Arguments (after `cargo bench --bench convergence --`):
//!   --sizes 100,1000     sizes to run (default 100,1000)
//!   --large              also run 10,000 (with the gated baseline only, see --all-baselines)
//!   --steady-seconds S   steady-state window (default 60)
//!   --seed N             workload seed (default 42)
//!   --no-baseline        skip the baselines (the ratios are then missing)
//!   --all-baselines      run all three baselines at every size (from 5,000 features on,
//!                        only the gated one runs otherwise)
//!   --no-change          skip the spec change to every feature (most of an hour at 10,000)

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "../bench/harness.rs"]
mod harness;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

fn usage(msg: &str) -> ExitCode {
    eprintln!(
        "error: {msg}\nusage: convergence [--sizes 100,1000] [--large] [--steady-seconds 60] [--seed 42] [--no-baseline] [--all-baselines] [--no-change] [--finalizer-by-operator]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    // `cargo test --all-targets` also runs bench targets, without `--bench`: the benchmark is
    // minutes long and has its own command; the N=20 smoke of it is tests/bench_smoke.rs.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "convergence benchmark: run it with `make bench` (tests/bench_smoke.rs covers N=20 in `make test`)"
        );
        return ExitCode::SUCCESS;
    }
    let mut sizes = vec![100usize, 1000];
    let mut steady = 60u64;
    let mut seed = 42u64;
    let mut baseline = true;
    let mut all_baselines = false;
    let mut finalizer_at_admission = true;
    let mut change = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            // cargo bench passes --bench to every bench target.
            "--bench" => {}
            "--large" => sizes.push(10_000),
            "--no-baseline" => baseline = false,
            "--all-baselines" => all_baselines = true,
            "--finalizer-by-operator" => finalizer_at_admission = false,
            "--no-change" => change = false,
            "--sizes" => match args.next().map(|s| {
                s.split(',')
                    .map(|x| x.trim().parse::<usize>())
                    .collect::<Result<Vec<_>, _>>()
            }) {
                Some(Ok(s)) if !s.is_empty() && s.iter().all(|n| *n > 0) => sizes = s,
                _ => return usage("--sizes takes a comma-separated list of positive numbers"),
            },
            "--steady-seconds" => match args.next().and_then(|s| s.parse().ok()) {
                Some(s) => steady = s,
                None => return usage("--steady-seconds takes a number of seconds"),
            },
            "--seed" => match args.next().and_then(|s| s.parse().ok()) {
                Some(s) => seed = s,
                None => return usage("--seed takes a number"),
            },
            other => return usage(&format!("unknown argument {other}")),
        }
    }
    sizes.dedup();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut results = Vec::new();
    for size in sizes {
        let mut opts = harness::Options::new(size);
        opts.seed = seed;
        opts.steady_window = Duration::from_secs(steady);
        opts.baseline = baseline;
        opts.every_baseline |= all_baselines;
        opts.finalizer_at_admission = finalizer_at_admission;
        opts.change = change;
        eprintln!("[bench] N={size}: running");
        match runtime.block_on(harness::run(&opts)) {
            Ok(r) => {
                // (harness::run printed this size's table before its clean-up.)
                results.push(r);
                // Written after every size, so a long run that is stopped keeps what it has.
                if let Err(e) = write(&results) {
                    eprintln!("error: {e}");
                }
            }
            Err(e) => {
                eprintln!("error: N={size}: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }

    println!("{}", harness::table(&results));
    match write(&results) {
        Ok(path) => {
            println!("results: {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write(results: &[harness::Results]) -> Result<PathBuf, String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let path = dir.join("results.json");
    let json = serde_json::to_string_pretty(results).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&dir)
        .and_then(|_| std::fs::write(&path, json + "\n"))
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}
