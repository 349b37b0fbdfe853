//! A throwaway replicated ClickHouse cluster for tests: one ZooKeeper (Debian's `zookeeper` package,
//! started as a plain Java process on a free loopback port, data in a temporary directory) and
//! `n` clickhouse-server processes ([`super::clickhouse::ClickHouseServer`]), one shard with `n`
//! replicas, each with `<zookeeper>`, `<macros>`, `<remote_servers>`, `<interserver_http_port>` and
//! `<distributed_ddl>` in a `config.d` file. Everything is killed and removed on drop.
//!
//! Missing binaries fail the test with what to install, unless `PLANFEED_SKIP_CLICKHOUSE=1` chose
//! to skip it, like [`super::clickhouse::ClickHouseServer::start`] (see
//! [`super::clickhouse::skip_or_fail`]); `make test` installs both.
#![allow(dead_code)]

use std::fs;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use planfeed::store::clickhouse::ClickHouseSettings;

use super::clickhouse::{free_port, skip_or_fail, ClickHouseServer, SKIP_CLICKHOUSE};

const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";
const ZOOKEEPER_CONF: &str = "/etc/zookeeper/conf";
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The name of the cluster in every node's `<remote_servers>`.
pub const CLUSTER: &str = "planfeed";

pub struct ZooKeeper {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl ZooKeeper {
    /// Starts ZooKeeper and waits for its port; `None` when Java or the jar is missing and skipping
    /// was chosen.
    pub fn start() -> Option<Self> {
        let Some(java) = find_java() else {
            return skip("java");
        };
        if !Path::new(ZOOKEEPER_JAR).is_file() {
            return skip(ZOOKEEPER_JAR);
        }
        // Throwaway data: in RAM beside the servers' (see `super::clickhouse`), and no fsync per
        // transaction, so a busy disk does not slow every replicated insert.
        let dir = tempfile::Builder::new()
            .prefix("planfeed-zk-")
            .tempdir_in(ClickHouseServer::data_parent_label())
            .expect("zookeeper dir");
        let port = free_port();
        let d = dir.path().display();
        let cfg = format!(
            "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={d}/data\nclientPort={port}\n\
             clientPortAddress=127.0.0.1\nadmin.enableServer=false\n4lw.commands.whitelist=srvr\nforceSync=no\n"
        );
        fs::write(dir.path().join("zoo.cfg"), cfg).expect("zoo.cfg");
        let log = fs::File::create(dir.path().join("zookeeper.log")).expect("zookeeper log");
        let child = Command::new(java)
            .args(["-Xmx128m", "-cp", &format!("{ZOOKEEPER_CONF}:{ZOOKEEPER_JAR}")])
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(dir.path().join("zoo.cfg"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn zookeeper");
        let mut zk = Self { child, dir, port };
        zk.wait_ready();
        Some(zk)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("zookeeper exited with {status}: {}", self.log());
            }
            if self.serving() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("zookeeper did not open port {} within {READY_TIMEOUT:?}: {}", self.port, self.log());
    }

    /// True once ZooKeeper serves requests: its port opens earlier, and a clickhouse-server 18.16
    /// that reaches it before then fails its first session (its DDL worker even crashes the server).
    fn serving(&self) -> bool {
        use std::io::{Read, Write};
        let addr = (Ipv4Addr::LOCALHOST, self.port).into();
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        if stream.write_all(b"srvr").is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.contains("Mode: standalone")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("zookeeper.log")).unwrap_or_default()
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One shard of replicated ClickHouse servers over one ZooKeeper. Field order matters: the nodes
/// stop before their keeper.
pub struct Cluster {
    pub nodes: Vec<ClickHouseServer>,
    pub zookeeper: ZooKeeper,
}

impl Cluster {
    /// Starts ZooKeeper and `replicas` servers, and waits until every server reaches ZooKeeper.
    /// `None` when a binary is missing and skipping was chosen.
    pub fn start(replicas: usize) -> Option<Self> {
        let zookeeper = ZooKeeper::start()?;
        let mut nodes = Vec::with_capacity(replicas);
        for _ in 0..replicas {
            nodes.push(ClickHouseServer::prepare()?);
        }
        let peers: String = nodes
            .iter()
            .map(|n| format!("<replica><host>127.0.0.1</host><port>{}</port></replica>", n.tcp_port()))
            .collect();
        for (i, node) in nodes.iter().enumerate() {
            node.add_config("cluster.xml", &node_config(zookeeper.port(), i, &peers));
        }
        for node in &mut nodes {
            node.start_again();
        }
        let cluster = Self { nodes, zookeeper };
        cluster.wait_for_keeper();
        Some(cluster)
    }

    /// Waits until every running node answers a ZooKeeper read: a node connects to its keeper
    /// lazily, and `ON CLUSTER` statements need every node connected.
    pub fn wait_for_keeper(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        for node in self.nodes.iter().filter(|n| n.running()) {
            loop {
                match node.query_blocking("SELECT count() FROM system.zookeeper WHERE path = '/'") {
                    Ok(_) => break,
                    Err(e) if Instant::now() > deadline => {
                        panic!("node {} never reached zookeeper: {e}", node.url())
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(ClickHouseServer::url).collect()
    }

    /// Store settings for `database` in cluster mode over every node.
    pub fn settings(&self, database: &str) -> ClickHouseSettings {
        ClickHouseSettings {
            url: self.nodes[0].url(),
            urls: self.urls(),
            cluster: Some(CLUSTER.to_string()),
            database: database.to_string(),
            query_timeout: Duration::from_secs(10),
            ..ClickHouseSettings::default()
        }
    }

    /// The environment that configures a service for this cluster (`Settings::load_with`).
    pub fn env(&self, database: &str) -> Vec<(String, String)> {
        vec![
            ("PLANFEED__STORE__BACKEND".into(), "clickhouse".into()),
            ("PLANFEED__STORE__CLICKHOUSE__URL".into(), self.nodes[0].url()),
            ("PLANFEED__STORE__CLICKHOUSE__URLS".into(), self.urls().join(",")),
            ("PLANFEED__STORE__CLICKHOUSE__CLUSTER".into(), CLUSTER.into()),
            ("PLANFEED__STORE__CLICKHOUSE__DATABASE".into(), database.into()),
        ]
    }

    /// Runs `sql` on node `i` and returns its rows as text (panics on an error).
    pub fn query(&self, i: usize, sql: &str) -> String {
        self.nodes[i].query_blocking(sql).unwrap_or_else(|e| panic!("node {i}: {sql}: {e}"))
    }

    /// Waits until every running node has fetched every part the others wrote (`SYSTEM SYNC
    /// REPLICA` on each replicated table of `database`).
    pub fn sync_replicas(&self, database: &str) {
        for (i, node) in self.nodes.iter().enumerate().filter(|(_, n)| n.running()) {
            let tables = self.query(
                i,
                &format!(
                    "SELECT name FROM system.tables WHERE database = '{database}' AND engine LIKE 'Replicated%'"
                ),
            );
            for table in tables.lines() {
                node.query_blocking(&format!("SYSTEM SYNC REPLICA {database}.{table}"))
                    .unwrap_or_else(|e| panic!("sync {database}.{table} on node {i}: {e}"));
            }
        }
    }
}

fn node_config(zookeeper_port: u16, index: usize, peers: &str) -> String {
    format!(
        r#"<?xml version="1.0"?>
<yandex>
    <zookeeper>
        <node><host>127.0.0.1</host><port>{zookeeper_port}</port></node>
        <session_timeout_ms>10000</session_timeout_ms>
    </zookeeper>
    <macros><shard>0</shard><replica>r{index}</replica></macros>
    <remote_servers>
        <{CLUSTER}><shard><internal_replication>true</internal_replication>{peers}</shard></{CLUSTER}>
    </remote_servers>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <interserver_http_port>{}</interserver_http_port>
    <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
</yandex>
"#,
        free_port()
    )
}

fn find_java() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join("java")).find(|p| p.is_file())
}

fn skip<T>(what: &str) -> Option<T> {
    skip_or_fail(
        SKIP_CLICKHOUSE,
        &format!("{what} not found"),
        "run scripts/install-zookeeper.sh (`make test` does)",
    )
}
