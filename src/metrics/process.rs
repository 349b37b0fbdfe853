//! The process's own metrics, read from `/proc` when `/metrics` is scraped (the names and meanings
//! of Prometheus's client libraries, so the usual dashboards and alerts work unchanged). Nothing
//! is kept between scrapes; on a system without `/proc` they are left out.

use std::fmt::Write as _;

use super::catalog::header;

/// Appends the process metrics that could be read.
pub(super) fn render(out: &mut String) {
    let ticks = crate::cpu::clock_ticks() as f64;
    if let Some(stat) = read_stat() {
        let page = page_size();
        sample(out, "process_cpu_seconds_total", (stat.utime + stat.stime) as f64 / ticks);
        sample(out, "process_virtual_memory_bytes", stat.vsize as f64);
        sample(out, "process_resident_memory_bytes", (stat.rss_pages * page) as f64);
        if let Some(boot) = boot_time() {
            sample(out, "process_start_time_seconds", boot + stat.start_ticks as f64 / ticks);
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        // The directory's own descriptor, open while it is read, is not counted.
        sample(out, "process_open_fds", fds.count().saturating_sub(1) as f64);
    }
    if let Some(max) = max_fds() {
        sample(out, "process_max_fds", max as f64);
    }
}

fn sample(out: &mut String, name: &str, value: f64) {
    header(name, out);
    let _ = writeln!(out, "{name} {value}");
}

/// What `/proc/self/stat` says of CPU time (ticks), memory and the start (ticks after boot).
struct Stat {
    utime: u64,
    stime: u64,
    start_ticks: u64,
    vsize: u64,
    rss_pages: u64,
}

fn read_stat() -> Option<Stat> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat(&text)
}

/// Fields after the command name (which may hold spaces and parentheses: it ends at the last `)`),
/// numbered as in proc(5) from the state, field 3.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        start_ticks: field(22)?,
        vsize: field(23)?,
        rss_pages: field(24)?,
    })
}

/// Unix time of the boot (`btime` of `/proc/stat`).
fn boot_time() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

/// `Max open files` of `/proc/self/limits` (soft limit).
fn max_fds() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let line = "4242 (planfeed (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 \
                    12345 987654321 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            (s.utime, s.stime, s.start_ticks, s.vsize, s.rss_pages),
            (250, 50, 12345, 987654321, 2048)
        );
    }

    #[test]
    fn this_process_has_memory_descriptors_and_a_start() {
        let mut out = String::new();
        render(&mut out);
        for name in ["process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds_total"] {
            let value = out.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')).unwrap();
            assert!(value.parse::<f64>().unwrap() >= 0.0, "{out}");
        }
        let start = out.lines().find_map(|l| l.strip_prefix("process_start_time_seconds ")).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let start: f64 = start.parse().unwrap();
        assert!(start <= now + 1.0 && start > now - 86_400.0 * 365.0, "{start} vs {now}");
        assert!(out.contains("# HELP process_open_fds "), "{out}");
    }
}
