//! The standard `process_*` metrics (CPU seconds, resident memory, open file descriptors, start
//! time) that Prometheus users expect of every exporter, read from `/proc/self` at each scrape.
//! Without them an SRE cannot tell the operator's own CPU or memory from a dashboard, and the
//! benchmarks could not report the leader's CPU per reconciled object on a cluster (kind) where
//! the node's `/proc` is out of reach.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// Figures of one process, as `/proc/<pid>/stat` gives them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStat {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Start time, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
    pub virtual_memory_bytes: u64,
    pub resident_memory_bytes: u64,
}

/// Parses `/proc/<pid>/stat`. `ticks_per_second` and `page_size` come from `sysconf`,
/// `boot_time_seconds` from `btime` in `/proc/stat`. None when the text is not a stat line.
pub fn parse_stat(
    stat: &str,
    ticks_per_second: f64,
    page_size: u64,
    boot_time_seconds: f64,
) -> Option<ProcessStat> {
    // The command name (field 2) is in parentheses and may itself hold spaces or parentheses;
    // the fields after the last ')' are plain numbers, starting with field 3 (state).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let ticks = |n: usize| -> Option<f64> { Some(field(n)? as f64 / ticks_per_second) };
    Some(ProcessStat {
        cpu_seconds: ticks(14)? + ticks(15)?,
        start_time_seconds: boot_time_seconds + ticks(22)?,
        virtual_memory_bytes: field(23)?,
        resident_memory_bytes: field(24)?.saturating_mul(page_size),
    })
}

/// `btime` (boot time, seconds since the epoch) from the text of `/proc/stat`.
pub fn parse_boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// Collector of this process's `process_*` metrics; exports nothing where `/proc` is missing.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl ProcessCollector {
    fn read() -> Option<(ProcessStat, Option<u64>)> {
        // SAFETY: sysconf only reads configuration values; it has no memory-safety preconditions.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        if ticks <= 0 || page <= 0 {
            return None;
        }
        let boot = parse_boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let stat = parse_stat(&stat, ticks as f64, page as u64, boot)?;
        let fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64);
        Some((stat, fds))
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some((stat, fds)) = Self::read() else {
            return Ok(());
        };
        ConstCounter::new(stat.cpu_seconds).encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            MetricType::Counter,
        )?)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                stat.resident_memory_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                stat.virtual_memory_bytes as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                stat.start_time_seconds,
            ),
        ];
        let fds = fds.map(|n| {
            (
                "process_open_fds",
                "Number of open file descriptors",
                n as f64,
            )
        });
        for (name, help, value) in gauges.into_iter().chain(fds) {
            ConstGauge::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_whose_name_holds_spaces_and_parentheses() {
        // Fields 3.. of a real line; utime=250, stime=50, starttime=1000, vsize, rss=2048 pages.
        let line =
            "4242 (tokio (rt) w) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 9 0 1000 \
                    123456789 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let stat = parse_stat(line, 100.0, 4096, 1_700_000_000.0).expect("parses");
        assert_eq!(stat.cpu_seconds, 3.0);
        assert_eq!(stat.start_time_seconds, 1_700_000_010.0);
        assert_eq!(stat.virtual_memory_bytes, 123_456_789);
        assert_eq!(stat.resident_memory_bytes, 2048 * 4096);
    }

    #[test]
    fn rejects_text_that_is_not_a_stat_line() {
        assert_eq!(parse_stat("no parentheses here", 100.0, 4096, 0.0), None);
        assert_eq!(parse_stat("1 (x) S 1 2", 100.0, 4096, 0.0), None);
    }

    #[test]
    fn reads_boot_time() {
        let text = "cpu  1 2 3\nintr 5\nbtime 1700000000\nprocesses 10\n";
        assert_eq!(parse_boot_time(text), Some(1_700_000_000.0));
        assert_eq!(parse_boot_time("cpu 1\n"), None);
    }

    #[test]
    fn this_process_exports_its_cpu_and_memory() {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
                .parse()
                .expect("a number")
        };
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(value("process_resident_memory_bytes") > 1_000_000.0);
        assert!(value("process_open_fds") >= 3.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let start = value("process_start_time_seconds");
        assert!(
            start <= now + 1.0 && start > now - 86_400.0,
            "start {start}, now {now}"
        );
    }
}
