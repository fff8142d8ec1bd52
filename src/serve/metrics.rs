//! Prometheus metrics of the server (`GET /metrics`, text format 0.0.4).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket bounds of the latency histograms, in seconds.
const BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default)]
pub struct Histogram {
    /// Counts per bucket (not cumulative; summed when rendered), the last for +Inf.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in BOUNDS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[BOUNDS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {}", self.count.load(Ordering::Relaxed));
    }
}

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    pub claims_hit: AtomicU64,
    pub claims_miss: AtomicU64,
    pub claim_latency: Histogram,
    pub cold_create_latency: Histogram,
    pub creates: AtomicU64,
    pub create_failures: AtomicU64,
    pub commands: AtomicU64,
    pub bytes_relayed: AtomicU64,
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// The text exposition; `pool` is (entry, ready, target).
    pub fn render(&self, pool: &[(String, usize, usize)], alive: usize) -> String {
        let mut out = String::new();
        let c = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP nsbox_pool_claims_total Creates that matched a warm-pool entry, by result.\n# TYPE nsbox_pool_claims_total counter\nnsbox_pool_claims_total{{result=\"hit\"}} {}\nnsbox_pool_claims_total{{result=\"miss\"}} {}",
            c(&self.claims_hit),
            c(&self.claims_miss)
        );
        self.claim_latency.render(
            &mut out,
            "nsbox_pool_claim_seconds",
            "Time to answer a create served from the warm pool.",
        );
        self.cold_create_latency.render(
            &mut out,
            "nsbox_cold_create_seconds",
            "Time to make a sandbox with nsbox create (requests and refills).",
        );
        let _ = writeln!(out, "# HELP nsbox_pool_size Idle sandboxes ready per pool entry.\n# TYPE nsbox_pool_size gauge");
        for (label, ready, _) in pool {
            let _ = writeln!(
                out,
                "nsbox_pool_size{{entry=\"{}\"}} {ready}",
                escape(label)
            );
        }
        let _ = writeln!(
            out,
            "# HELP nsbox_pool_target Target size per pool entry.\n# TYPE nsbox_pool_target gauge"
        );
        for (label, _, target) in pool {
            let _ = writeln!(
                out,
                "nsbox_pool_target{{entry=\"{}\"}} {target}",
                escape(label)
            );
        }
        let counters = [
            (
                "nsbox_sandboxes_created_total",
                "Sandboxes made (cold creates, pool refills included).",
                c(&self.creates),
            ),
            (
                "nsbox_sandbox_create_failures_total",
                "Creates that failed.",
                c(&self.create_failures),
            ),
            (
                "nsbox_commands_total",
                "Commands started through the API.",
                c(&self.commands),
            ),
            (
                "nsbox_relayed_bytes_total",
                "Output bytes relayed to clients.",
                c(&self.bytes_relayed),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP nsbox_sandboxes_alive Sandboxes owned by clients (pool members not included).\n# TYPE nsbox_sandboxes_alive gauge\nnsbox_sandboxes_alive {alive}"
        );
        out
    }
}
