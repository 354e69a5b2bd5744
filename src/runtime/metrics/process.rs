//! The `process_*` metrics every Prometheus client library exports (CPU seconds, resident and
//! virtual memory, open and maximum file descriptors, start time), read from `/proc/self` on
//! each scrape, under the same names so the usual dashboards and alerts work unchanged.
//! prometheus-client 0.26 has no process collector of its own.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second in `/proc/<pid>/stat`. This is USER_HZ, which the kernel fixes at 100
/// for user space on every architecture Rust targets for Linux (it is independent of the
/// kernel's internal HZ), so there is no need to ask sysconf.
const USER_HZ: f64 = 100.0;

/// One reading of the process's resource usage; a field is `None` when its file could not be
/// read or parsed (the metric is then left out rather than reported as zero).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessSample {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
    pub threads: Option<u64>,
}

/// The fields of `/proc/<pid>/stat` the metrics use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    pub start_ticks: u64,
    pub vsize_bytes: u64,
    pub threads: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may itself
/// contain spaces or parentheses, so the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // rest starts at field 3 (state); field n is at index n - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime_ticks: field(14)?,
        stime_ticks: field(15)?,
        threads: field(20)?,
        start_ticks: field(22)?,
        vsize_bytes: field(23)?,
    })
}

/// `VmRSS` of `/proc/<pid>/status`, in bytes (the file gives kB; reading it avoids needing the
/// page size that the `rss` field of `stat` is counted in).
pub fn parse_resident_bytes(status: &str) -> Option<u64> {
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// The soft limit on open files from `/proc/<pid>/limits` (`None` when unlimited).
pub fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Boot time, in seconds since the epoch, from the `btime` line of `/proc/stat`.
pub fn parse_boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// Combines the parsed files into a sample.
pub fn sample_from(
    stat: Option<Stat>,
    resident_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    boot_time: Option<u64>,
) -> ProcessSample {
    ProcessSample {
        cpu_seconds: stat.map(|s| (s.utime_ticks + s.stime_ticks) as f64 / USER_HZ),
        resident_bytes,
        virtual_bytes: stat.map(|s| s.vsize_bytes),
        open_fds,
        max_fds,
        start_time_seconds: stat
            .zip(boot_time)
            .map(|(s, boot)| boot as f64 + s.start_ticks as f64 / USER_HZ),
        threads: stat.map(|s| s.threads),
    }
}

/// Reads this process's sample from `/proc` (all `None` where there is no `/proc`).
pub fn read_self() -> ProcessSample {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|dir| dir.count() as u64);
    sample_from(
        read("/proc/self/stat").as_deref().and_then(parse_stat),
        read("/proc/self/status")
            .as_deref()
            .and_then(parse_resident_bytes),
        open_fds,
        read("/proc/self/limits").as_deref().and_then(parse_max_fds),
        read("/proc/stat").as_deref().and_then(parse_boot_time),
    )
}

/// Encodes a sample as the standard `process_*` metrics.
pub fn encode_sample(
    sample: &ProcessSample,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    if let Some(v) = sample.cpu_seconds {
        let m = ConstCounter::new(v);
        m.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            m.metric_type(),
        )?)?;
    }
    let gauges: [(&str, &str, Option<f64>); 6] = [
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            sample.resident_bytes.map(|v| v as f64),
        ),
        (
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            sample.virtual_bytes.map(|v| v as f64),
        ),
        (
            "process_open_fds",
            "Number of open file descriptors",
            sample.open_fds.map(|v| v as f64),
        ),
        (
            "process_max_fds",
            "Maximum number of open file descriptors",
            sample.max_fds.map(|v| v as f64),
        ),
        (
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            sample.start_time_seconds,
        ),
        (
            "process_threads",
            "Number of OS threads in the process",
            sample.threads.map(|v| v as f64),
        ),
    ];
    for (name, help, value) in gauges {
        if let Some(v) = value {
            let m = ConstGauge::new(v);
            m.encode(encoder.encode_descriptor(name, help, None, m.metric_type())?)?;
        }
    }
    Ok(())
}

/// Samples `/proc/self` on every scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_sample(&read_self(), &mut encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    /// A real line of /proc/<pid>/stat, with a command name holding spaces and parentheses.
    const STAT: &str = "4242 (tokio (rt) w) S 1 4242 4242 0 -1 4194560 2480 0 0 0 \
        1234 567 0 0 20 0 9 0 100000 123456789 1200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let s = parse_stat(STAT).expect("parses");
        assert_eq!(
            s,
            Stat {
                utime_ticks: 1234,
                stime_ticks: 567,
                start_ticks: 100000,
                vsize_bytes: 123456789,
                threads: 9,
            }
        );
        assert_eq!(parse_stat("4242 (truncated) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn status_limits_and_boot_time() {
        let status =
            "Name:\tpremium-operator\nVmPeak:\t  9000 kB\nVmRSS:\t   2076 kB\nThreads:\t9\n";
        assert_eq!(parse_resident_bytes(status), Some(2076 * 1024));
        assert_eq!(parse_resident_bytes("Name:\tx\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
            Max processes             unlimited            unlimited            processes \n\
            Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files     \n";
        assert_eq!(parse_max_fds(unlimited), None);
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1796237743\nprocesses 5\n"),
            Some(1796237743)
        );
    }

    #[test]
    fn sample_converts_ticks_to_seconds() {
        let s = sample_from(
            parse_stat(STAT),
            Some(4096),
            Some(12),
            Some(1024),
            Some(1000),
        );
        assert_eq!(s.cpu_seconds, Some(18.01));
        assert_eq!(s.start_time_seconds, Some(2000.0));
        assert_eq!(s.virtual_bytes, Some(123456789));
        assert_eq!(s.threads, Some(9));
        let none = sample_from(None, None, None, None, Some(1000));
        assert_eq!(none.start_time_seconds, None);
    }

    #[test]
    fn encodes_the_standard_names_and_types() {
        #[derive(Debug)]
        struct Fixed(ProcessSample);
        impl Collector for Fixed {
            fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                encode_sample(&self.0, &mut encoder)
            }
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(sample_from(
            parse_stat(STAT),
            Some(2076 * 1024),
            Some(12),
            Some(1024),
            Some(1000),
        ))));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        for line in [
            "# TYPE process_cpu_seconds counter",
            "process_cpu_seconds_total 18.01",
            "# TYPE process_resident_memory_bytes gauge",
            "process_resident_memory_bytes 2125824.0",
            "process_open_fds 12.0",
            "process_max_fds 1024.0",
            "process_start_time_seconds 2000.0",
            "process_virtual_memory_bytes 123456789.0",
            "process_threads 9.0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in:\n{text}"
            );
        }
    }

    #[test]
    fn reads_this_process() {
        let s = read_self();
        assert!(
            s.cpu_seconds.is_some() && s.resident_bytes.unwrap_or(0) > 0,
            "{s:?}"
        );
        assert!(s.open_fds.unwrap_or(0) >= 3, "{s:?}");
        let start = s.start_time_seconds.expect("start time");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after the epoch")
            .as_secs_f64();
        assert!(
            start <= now + 1.0 && start > now - 86400.0 * 365.0,
            "{start} vs {now}"
        );
    }
}
