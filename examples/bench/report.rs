//! The figures' shape: the machine, the memory readings, the targets met, and rounding and percentiles.

use serde_json::{Map, Value, json};

/// The process's peak (`VmHWM`) and current (`VmRSS`) resident memory: `{prefix}_mib`, `{prefix}_now_mib`.
pub(crate) fn record_rss(out: &mut Map<String, Value>, prefix: &str, pid: u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
    };
    out.insert(format!("{prefix}_mib"), json!(field("VmHWM:").map(|kb| r3(kb / 1024.0))));
    out.insert(format!("{prefix}_now_mib"), json!(field("VmRSS:").map(|kb| r3(kb / 1024.0))));
}

/// The process's user + system CPU seconds so far (`/proc/<pid>/stat`, in clock ticks of 1/100 s: Linux's
/// `USER_HZ` on every architecture Keyward builds for).
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // NB: the command name (field 2) may hold spaces; the fields after its closing parenthesis are fixed.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// `/proc/loadavg`: the 1, 5 and 15 minute load averages, as the kernel prints them.
pub(crate) fn loadavg() -> Value {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!(text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// The commit the benchmark was built from (`git rev-parse HEAD` in the source tree), with `-dirty` when the tree
/// has uncommitted changes.
pub(crate) fn commit() -> Option<String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git").args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().ok()
    };
    let head = git(&["rev-parse", "HEAD"]).filter(|o| o.status.success())?;
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|o| !o.stdout.is_empty());
    Some(if dirty { format!("{head}-dirty") } else { head })
}

pub(crate) fn machine() -> Value {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|v| v.trim_start_matches([' ', '\t', ':']));
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_mib": mem_kb.map(|kb| (kb / 1024.0).round()),
        "cpu": cpu,
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
    })
}

/// Which of the targets the figures meet (null when not measured).
pub(crate) fn targets(out: &Map<String, Value>) -> Value {
    let f = |k: &str| out.get(k).and_then(Value::as_f64);
    json!({
        "ratio_ge_0_8": f("ratio").map(|v| v >= 0.8),
        "herd_p99_le_2s": f("herd_p99_s").map(|v| v <= 2.0),
        "herd_p99_le_1_3x_secret_floor": f("herd_p99_vs_secret_floor").map(|v| v <= 1.3),
        "rss_le_64mib": f("rss_mib").map(|v| v <= 64.0),
        "idle_writes_0": f("idle_writes").map(|v| v == 0.0),
        "scale_reaction_le_1s": f("scale_reaction_s").map(|v| v <= 1.0),
    })
}

/// Nearest-rank percentile of sorted values.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

pub(crate) fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
