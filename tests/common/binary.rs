//! Runs the real `planfeed` binary in a temporary config folder, with its log in a file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Planfeed {
    pub child: Child,
    pub base: String,
    pub log: PathBuf,
}

/// A port that was free a moment ago (the binary binds it itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `local.toml` for a service in `dir` on `port` fetching `url` once an hour (no jitter), its
/// embedded store at `dir/planfeed.db`, JSON logs, with `extra` TOML right after `listen` (keys of
/// `[server]`, or whole tables).
pub fn local_toml(dir: &Path, port: u16, url: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n{extra}\n\
         [provider]\nurl = \"{url}\"\ninterval = \"1h\"\njitter = \"0s\"\n\
         [store]\npath = \"{}\"\n[log]\nformat = \"json\"\n",
        dir.join("planfeed.db").display()
    )
}

/// A service of [`Planfeed::start`]: the process, its temporary config folder (its store and log
/// are there) and its port.
pub struct Fresh {
    pub pf: Planfeed,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Planfeed {
    /// Starts the binary in a new temporary folder on a free port, fetching `url`, with the
    /// `local.toml` of [`local_toml`] (with `extra`) changed by `edit`; returns once it is ready.
    pub async fn start(url: &str, extra: &str, edit: impl FnOnce(String) -> String) -> Fresh {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        std::fs::write(dir.path().join("local.toml"), edit(local_toml(dir.path(), port, url, extra)))
            .unwrap();
        let mut pf = Planfeed::serve(dir.path(), port);
        pf.wait_ready().await;
        Fresh { pf, dir, port }
    }

    /// `planfeed --config-dir <dir> serve`, with `PLANFEED__*` variables of the test process removed
    /// so `local.toml` alone decides. `port` must match `server.listen` in `local.toml`.
    pub fn serve(dir: &Path, port: u16) -> Self {
        let log = dir.join("planfeed.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_planfeed"));
        cmd.arg("--config-dir").arg(dir).arg("serve");
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PLANFEED")) {
            cmd.env_remove(k);
        }
        let child = cmd.stdout(out.try_clone().unwrap()).stderr(out).stdin(Stdio::null()).spawn().unwrap();
        Self { child, base: format!("http://127.0.0.1:{port}"), log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + super::PATIENCE;
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::get(format!("{}/ready", self.base)).await {
                if r.status() == 200 {
                    return;
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("planfeed exited early with {status}:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("planfeed not ready within {:?}:\n{}", super::PATIENCE, self.log_text());
    }

    pub fn signal(&self, signal: i32) {
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill({signal}) failed");
    }

    /// Waits for the process to exit (at most `within`).
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "planfeed did not exit within {within:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Planfeed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
