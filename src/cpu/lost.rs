//! CPU time lost to what is above the process: a CPU quota that paused every thread of its cgroup
//! until the next period (cgroup v2 `cpu.stat` `throttled_usec`, v1 `throttled_time`), and a
//! hypervisor that ran something else on our virtual cores (*steal*, `/proc/stat`).
//!
//! Both pause the searches' threads together with ingestion's, whatever their priorities. A quota
//! is spent by the process's own use: ingestion that fills every idle moment (as `SCHED_IDLE` lets
//! it) in a container with a CPU limit gets the whole container paused until the next period, so
//! the controller ([`super::share`]) treats throttling beside active searches like a delay of
//! theirs, and ingestion rests. Steal is reported, not acted on: resting does not bring it back.
//! On the 2-core machine of docs/performance.md the hypervisor charges its disk emulation to the
//! virtual machine, which it pauses for about 20 ms when the cores are busy while the store writes;
//! with the cap lowered on steal, ingestion fell to 0.45 of its speed and the pauses stayed
//! (ADR 12, "Eighth pass").

use std::path::Path;
use std::time::Duration;

/// CPU time lost since the previous look, summed over the cores.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Loss {
    /// Paused by the cgroup's CPU quota (every thread of the cgroup, for that long).
    pub throttled: Duration,
    /// Taken by the hypervisor.
    pub steal: Duration,
}

/// Reads the lost CPU time; each [`Lost::since_last`] returns what was lost since the previous call.
pub(super) struct Lost {
    /// The `cpu.stat` of the process's cgroup and its field, when it has a CPU controller.
    quota: Option<(String, Field)>,
    last: Loss,
}

/// Which throttling counter a `cpu.stat` has.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Field {
    /// cgroup v2 `throttled_usec`, microseconds.
    V2,
    /// cgroup v1 `throttled_time`, nanoseconds.
    V1,
}

impl Lost {
    pub(super) fn new() -> Self {
        let quota = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|text| cgroup_stat_paths(&text).into_iter().find(|(path, _)| Path::new(path).exists()));
        let mut lost = Lost { quota, last: Loss::default() };
        lost.last = lost.total();
        lost
    }

    /// CPU time lost since the previous call, also added to the totals of [`cpu_lost_seconds`].
    pub(super) fn since_last(&mut self) -> Loss {
        let now = self.total();
        let lost = Loss {
            throttled: now.throttled.saturating_sub(self.last.throttled),
            steal: now.steal.saturating_sub(self.last.steal),
        };
        self.last = now;
        for (total, part) in CPU_LOST_MICROS.iter().zip([lost.throttled, lost.steal]) {
            total.fetch_add(part.as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        lost
    }

    fn total(&self) -> Loss {
        let steal = std::fs::read_to_string("/proc/stat").ok().and_then(|t| steal(&t, clock_ticks()));
        let throttled = self
            .quota
            .as_ref()
            .and_then(|(path, field)| Some((std::fs::read_to_string(path).ok()?, *field)))
            .and_then(|(text, field)| throttled(&text, field));
        Loss { throttled: throttled.unwrap_or_default(), steal: steal.unwrap_or_default() }
    }
}

/// CPU time lost to a quota and to a hypervisor while ingestion's controller watched, in
/// microseconds ([`cpu_lost_seconds`]).
static CPU_LOST_MICROS: [std::sync::atomic::AtomicU64; 2] =
    [std::sync::atomic::AtomicU64::new(0), std::sync::atomic::AtomicU64::new(0)];

/// Seconds the process's cgroup was throttled by its CPU quota, and seconds of CPU a hypervisor
/// took from the machine (summed over the cores), since the controller started
/// (`planfeed_cpu_lost_seconds_total{cause="quota"|"steal"}`).
pub fn cpu_lost_seconds() -> [(&'static str, f64); 2] {
    let read = |i: usize| CPU_LOST_MICROS[i].load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6;
    [("quota", read(0)), ("steal", read(1))]
}

/// Clock ticks a second, the unit of CPU times in `/proc` (`/proc/stat`, `/proc/PID/stat`).
pub fn clock_ticks() -> u64 {
    // SAFETY: a plain query of a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// The steal time of all cores from `/proc/stat` (the eighth number of the `cpu` line).
fn steal(stat: &str, ticks_per_second: u64) -> Option<Duration> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: u64 = line.split_whitespace().nth(8)?.parse().ok()?;
    Some(Duration::from_nanos(ticks.saturating_mul(1_000_000_000 / ticks_per_second.max(1))))
}

/// The time a cgroup's `cpu.stat` says it was throttled.
fn throttled(stat: &str, field: Field) -> Option<Duration> {
    let name = match field {
        Field::V2 => "throttled_usec ",
        Field::V1 => "throttled_time ",
    };
    let value: u64 = stat.lines().find_map(|l| l.strip_prefix(name))?.trim().parse().ok()?;
    Some(match field {
        Field::V2 => Duration::from_micros(value),
        Field::V1 => Duration::from_nanos(value),
    })
}

/// Where the `cpu.stat` of the process's cgroup may be, from `/proc/self/cgroup`: the v2 group
/// (`0::PATH`, under `/sys/fs/cgroup` or, on a hybrid layout, `/sys/fs/cgroup/unified`) and the
/// v1 `cpu` controller's (`N:cpu,cpuacct:PATH`).
fn cgroup_stat_paths(proc_cgroup: &str) -> Vec<(String, Field)> {
    let mut out = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let path = path.trim_end_matches('/');
        if controllers.is_empty() {
            out.push((format!("/sys/fs/cgroup{path}/cpu.stat"), Field::V2));
            out.push((format!("/sys/fs/cgroup/unified{path}/cpu.stat"), Field::V2));
        } else if controllers.split(',').any(|c| c == "cpu") {
            out.push((format!("/sys/fs/cgroup/{controllers}{path}/cpu.stat"), Field::V1));
            out.push((format!("/sys/fs/cgroup/cpu{path}/cpu.stat"), Field::V1));
        }
    }
    // A v1 cpu controller is where a quota is set on a hybrid layout: look there first.
    out.sort_by_key(|(_, field)| *field == Field::V2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_eighth_number_of_the_cpu_line() {
        let stat = "cpu  2211885 229028 724533 1008233 148611 0 53593 68873 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(steal(stat, 100), Some(Duration::from_millis(688_730)));
        assert_eq!(steal("cpu0 1 2 3\n", 100), None);
    }

    #[test]
    fn throttled_comes_from_cpu_stat_of_either_version() {
        let v2 = "usage_usec 100\nnr_periods 5\nnr_throttled 2\nthrottled_usec 41250\n";
        assert_eq!(throttled(v2, Field::V2), Some(Duration::from_micros(41_250)));
        let v1 = "nr_periods 5\nnr_throttled 2\nthrottled_time 41250000\nnr_bursts 0\n";
        assert_eq!(throttled(v1, Field::V1), Some(Duration::from_micros(41_250)));
        assert_eq!(throttled("usage_usec 100\n", Field::V2), None);
    }

    #[test]
    fn the_cgroup_paths_come_from_both_layouts_v1_first() {
        let text = "9:name=systemd:/\n2:cpu,cpuacct:/pods/a\n4:memory:/m\n0::/pods/a\n";
        assert_eq!(
            cgroup_stat_paths(text),
            vec![
                ("/sys/fs/cgroup/cpu,cpuacct/pods/a/cpu.stat".to_owned(), Field::V1),
                ("/sys/fs/cgroup/cpu/pods/a/cpu.stat".to_owned(), Field::V1),
                ("/sys/fs/cgroup/pods/a/cpu.stat".to_owned(), Field::V2),
                ("/sys/fs/cgroup/unified/pods/a/cpu.stat".to_owned(), Field::V2),
            ]
        );
        assert_eq!(
            cgroup_stat_paths("0::/\n"),
            vec![
                ("/sys/fs/cgroup/cpu.stat".to_owned(), Field::V2),
                ("/sys/fs/cgroup/unified/cpu.stat".to_owned(), Field::V2),
            ]
        );
    }

    #[test]
    fn this_machine_reports_a_steal_time_that_only_grows() {
        let text = std::fs::read_to_string("/proc/stat").unwrap();
        assert!(steal(&text, clock_ticks()).is_some(), "no cpu line in /proc/stat: {text}");
        let mut lost = Lost::new();
        let first = lost.total();
        assert!(lost.total().steal >= first.steal);
        let _ = lost.since_last();
        assert!(lost.since_last().steal < Duration::from_secs(60));
    }
}
