//! A throwaway real ClickHouse server for tests: `clickhouse-server` (Debian's package, see
//! `scripts/install-clickhouse.sh`) started as a child process on free loopback ports, with its data
//! in a temporary directory. Killed and removed on drop.
//!
//! The directory is made under `PLANFEED_CH_TEST_DIR` when set, else in `/dev/shm` (RAM) when there
//! is one, else in the system's temp dir. RAM keeps the servers independent of the disk's state: on
//! an ext4 volume that has seen many files created and deleted (every throwaway server leaves
//! thousands), creating a part's files can cost more than writing its rows.
//!
//! When the binary is missing, [`ClickHouseServer::start`] fails the test with what to install
//! (`make test` installs it), unless skipping was chosen: see [`skip_or_fail`].
#![allow(dead_code)]

use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = "clickhouse-server";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ClickHouseServer {
    /// `None` while stopped (see [`ClickHouseServer::prepare`], [`ClickHouseServer::stop`]).
    child: Option<Child>,
    binary: PathBuf,
    dir: tempfile::TempDir,
    http_port: u16,
    tcp_port: u16,
    /// The server's data folder when a filesystem of its own is mounted there
    /// ([`Self::start_on_small_disk`]), unmounted on drop.
    small_disk: Option<PathBuf>,
}

impl ClickHouseServer {
    /// Starts a fresh server; `None` only when `clickhouse-server` is not installed and skipping was
    /// chosen ([`skip_or_fail`]).
    pub fn start() -> Option<Self> {
        // Ports are picked free then released, so another process may take one meanwhile: retry.
        let mut last_error = String::new();
        for _ in 0..3 {
            let mut server = Self::prepare()?;
            match server.try_start_again() {
                Ok(()) => return Some(server),
                Err(e) => last_error = e,
            }
        }
        panic!("clickhouse-server did not start: {last_error}");
    }

    /// Starts a fresh server whose data lives on a filesystem of its own of `bytes` (a tmpfs
    /// mounted over its data folder, which needs root, as `make test` runs), so that a test can
    /// fill it ([`Self::fill_disk`]) and free it ([`Self::free_disk`]) as a full disk would be.
    pub fn start_on_small_disk(bytes: u64) -> Option<Self> {
        let mut server = Self::prepare()?;
        let data = server.dir.path().join("data");
        fs::create_dir_all(&data).expect("the data folder");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "planfeed-ch-disk"])
            .arg(&data)
            .status()
            .expect("running mount");
        assert!(mounted.success(), "cannot mount a tmpfs over {} (root is needed)", data.display());
        server.small_disk = Some(data);
        server.start_again();
        Some(server)
    }

    /// Fills the small disk ([`Self::start_on_small_disk`]) with a file until no byte is left.
    pub fn fill_disk(&self) {
        let disk = self.small_disk.as_ref().expect("a server on a small disk");
        let mut filler = fs::File::create(disk.join("filler")).expect("the filler file");
        let zeros = vec![0u8; 1 << 16];
        loop {
            match std::io::Write::write(&mut filler, &zeros) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", disk.display()),
            }
        }
    }

    /// Frees what [`Self::fill_disk`] took.
    pub fn free_disk(&self) {
        let disk = self.small_disk.as_ref().expect("a server on a small disk");
        fs::remove_file(disk.join("filler")).expect("removing the filler file");
    }

    /// A configured server (free ports, a data directory) that is not running yet: start it with
    /// [`Self::start_again`]. Tests of a client started before its server use this.
    pub fn prepare() -> Option<Self> {
        let Some(binary) = find_binary() else {
            return skip_or_fail(
                SKIP_CLICKHOUSE,
                "clickhouse-server not found",
                "run scripts/install-clickhouse.sh (`make test` does)",
            );
        };
        Some(Self::configure(&binary).unwrap_or_else(|e| panic!("cannot configure clickhouse-server: {e}")))
    }

    /// Starts the server (again) on the same ports and data, and waits until it answers.
    pub fn start_again(&mut self) {
        if let Err(e) = self.try_start_again() {
            panic!("clickhouse-server did not start: {e}");
        }
    }

    fn try_start_again(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "clickhouse-server is already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .map_err(|e| e.to_string())?;
        let child = Command::new(&self.binary)
            .arg(format!("--config-file={}", self.dir.path().join("config.xml").display()))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        let ready = self.wait_ready();
        if ready.is_err() {
            self.stop();
        }
        ready
    }

    /// Freezes the server (`SIGSTOP`): connections are accepted, nothing is answered.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaws a paused server (`SIGCONT`).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("clickhouse-server is running").id();
        let rc = unsafe { libc::kill(pid as i32, signal) };
        assert_eq!(rc, 0, "kill({signal}) of clickhouse-server failed");
    }

    /// Where the data lives (see the module docs).
    pub fn data_parent_label() -> String {
        data_parent().display().to_string()
    }

    fn configure(binary: &Path) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("planfeed-ch-")
            .tempdir_in(data_parent())
            .map_err(|e| e.to_string())?;
        let (http_port, tcp_port) = (free_port(), free_port());
        write_config(dir.path(), http_port, tcp_port).map_err(|e| e.to_string())?;
        fs::File::create(dir.path().join("server.log")).map_err(|e| e.to_string())?;
        Ok(Self { child: None, binary: binary.to_path_buf(), dir, http_port, tcp_port, small_disk: None })
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("exited with {status}: {}", self.log_tail()));
            }
            if ping(self.http_port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("no answer to /ping within {READY_TIMEOUT:?}: {}", self.log_tail()))
    }

    /// The HTTP interface, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    pub fn tcp_port(&self) -> u16 {
        self.tcp_port
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Adds `xml` (a whole `<yandex>` document) as `config.d/<name>`, merged into the config on the
    /// next start: how a cluster node gets its ZooKeeper, macros and peers.
    pub fn add_config(&self, name: &str, xml: &str) {
        let dir = self.dir.path().join("config.d");
        fs::create_dir_all(&dir).expect("config.d");
        fs::write(dir.join(name), xml).expect("config.d file");
    }

    /// Gives the `default` user `password` ("" for none), as an operator rotating it would: the
    /// server reloads its users file by itself. The server notices a change by the file's
    /// modification time in whole seconds, so the new one always differs from the last.
    pub fn set_password(&self, password: &str) {
        let path = self.dir.path().join("users.xml");
        let before = fs::metadata(&path).and_then(|m| m.modified()).expect("users.xml");
        fs::write(&path, users_xml(password)).expect("users.xml");
        let later = (before + Duration::from_secs(2)).max(std::time::SystemTime::now());
        fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(later))
            .expect("users.xml mtime");
    }

    /// True while the server runs (started and not stopped).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Runs `sql` over plain HTTP (no client library: harness code runs before any store) and
    /// returns the body, or the status line and body on failure.
    pub fn query_blocking(&self, sql: &str) -> Result<String, String> {
        use std::io::{Read, Write};
        let mut stream =
            std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, self.http_port)).map_err(|e| e.to_string())?;
        // A `SYSTEM SYNC REPLICA` waits for a catch-up: as long as the tests' safety net (this file
        // is also included by the benches, without `common::PATIENCE`).
        let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
        let request = format!(
            "POST /?wait_end_of_query=1 HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{sql}",
            sql.len()
        );
        stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).map_err(|e| e.to_string())?;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") {
            Ok(body.to_string())
        } else {
            Err(format!("{}: {body}", head.lines().next().unwrap_or_default()))
        }
    }

    /// Kills the server now (`SIGKILL`, to test what clients see when it is down); its data stays
    /// for [`Self::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(disk) = self.small_disk.take() {
            let _ = Command::new("umount").arg(&disk).status();
        }
        // `dir` (a TempDir) removes itself after this.
    }
}

/// Set to `1`, tests that need clickhouse-server (or the cluster's ZooKeeper) and cannot find it
/// are skipped instead of failed.
pub const SKIP_CLICKHOUSE: &str = "PLANFEED_SKIP_CLICKHOUSE";

/// The suite's rule for a missing prerequisite: the test fails and says what to install, unless
/// the environment variable `skip_var` is `1` (never under CI). A skip is then printed and
/// appended to `target/skipped-tests.txt`, which `make test` counts at the end: a green run says
/// how much of it did not run.
pub fn skip_or_fail<T>(skip_var: &str, missing: &str, install: &str) -> Option<T> {
    let chosen = std::env::var(skip_var).is_ok_and(|v| v == "1");
    if !chosen || std::env::var_os("CI").is_some() {
        panic!("{missing}: {install}, or set {skip_var}=1 to skip the tests that need it (never under CI)");
    }
    let test = std::thread::current().name().unwrap_or("?").to_string();
    // `target/debug/deps/ready-0123456789abcdef` -> `ready`.
    let binary = std::env::args().next().unwrap_or_default();
    let binary = Path::new(&binary).file_name().unwrap_or_default().to_string_lossy().into_owned();
    let binary = binary.rsplit_once('-').map_or(binary.as_str(), |(name, _)| name).to_string();
    eprintln!("SKIPPED {binary} {test}: {missing} ({skip_var}=1)");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let line = format!("{binary} {test}: {missing} ({skip_var}=1)\n");
    let appended = fs::create_dir_all(&target).and_then(|()| {
        use std::io::Write;
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(target.join("skipped-tests.txt"))?
            .write_all(line.as_bytes())
    });
    if let Err(e) = appended {
        eprintln!("cannot record the skip in {}: {e}", target.display());
    }
    None
}

fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join(BINARY))
        .find(|p| p.is_file())
}

pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).expect("free port").port()
}

/// Minimal blocking `GET /ping`: true when the server answers `Ok.`.
fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) =
        std::net::TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"GET /ping HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
}

fn write_config(dir: &Path, http_port: u16, tcp_port: u16) -> std::io::Result<()> {
    let d = dir.display();
    for sub in ["data", "tmp", "user_files", "format_schemas"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    // `<yandex>` is the root both 18.16 and current servers accept.
    fs::write(
        dir.join("config.xml"),
        format!(
            r#"<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><console>1</console></logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{http_port}</http_port>
    <tcp_port>{tcp_port}</tcp_port>
    <path>{d}/data/</path>
    <tmp_path>{d}/tmp/</tmp_path>
    <user_files_path>{d}/user_files/</user_files_path>
    <format_schema_path>{d}/format_schemas/</format_schema_path>
    <users_config>{d}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>268435456</mark_cache_size>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
    <query_log>
        <database>system</database>
        <table>query_log</table>
        <flush_interval_milliseconds>500</flush_interval_milliseconds>
    </query_log>
</yandex>
"#
        ),
    )?;
    fs::write(dir.join("users.xml"), users_xml(""))
}

fn data_parent() -> PathBuf {
    if let Some(dir) = std::env::var_os("PLANFEED_CH_TEST_DIR") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() && tempfile::tempdir_in(shm).is_ok() {
        return shm.to_path_buf();
    }
    std::env::temp_dir()
}

/// The users file: a `default` user with `password` ("" for none), restricted to loopback.
fn users_xml(password: &str) -> String {
    format!(
        r#"<?xml version="1.0"?>
<yandex>
    <profiles><default><log_queries>1</log_queries></default></profiles>
    <users>
        <default>
            <password>{password}</password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas><default></default></quotas>
</yandex>
"#
    )
}
