//! Store failover: the Redis or PostgreSQL server restarts (same data) under two running
//! gateways. Every connection the gateways held is dead afterwards; the first store operation
//! on each instance meets one. It must be retried on a fresh connection, so that no request
//! after the server is back fails, on any instance (it answered 503 on the instance whose
//! connection was dropped).
//!
//! Each test starts its own server (a private `redis-server` with AOF, a private PostgreSQL
//! cluster from `initdb`) in a temp dir on a free port: restarting the shared one would break
//! every other test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::json;

fn generate_key() -> String {
    let out = StdCommand::new(gateway_binary())
        .args(["keys", "generate", "--id", "shared"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn config(port: u16, issuer: &str, api: &str, store: &str, key: &str) -> String {
    default_config(port, issuer, api, "").replace(
        "[session]\n",
        &format!("[session]\nstore = \"{store}\"\npartition = \"failover\"\nkeys = [\"{key}\"]\n"),
    )
}

fn wait_for_port(port: u16, up: bool) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() == up {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "port {port} did not become {}",
        if up { "open" } else { "closed" }
    );
}

/// A private Redis that keeps its data across a restart (AOF, fsync always).
struct PrivateRedis {
    child: Option<std::process::Child>,
    port: u16,
    dir: PathBuf,
}

impl PrivateRedis {
    fn start(port: u16, dir: PathBuf) -> PrivateRedis {
        let mut r = PrivateRedis {
            child: None,
            port,
            dir,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = StdCommand::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/ensure-services.sh)");
        self.child = Some(child);
        wait_for_port(self.port, true);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_for_port(self.port, false);
    }

    fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The directory with PostgreSQL's server programs (`initdb`, `pg_ctl`): Debian's newest
/// `/usr/lib/postgresql/<version>/bin`, else whatever `PATH` has.
fn pg_bin(program: &str) -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join(program).exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map_or_else(|| PathBuf::from(program), |(_, bin)| bin.join(program))
}

fn is_root() -> bool {
    StdCommand::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A private PostgreSQL cluster (trust authentication on 127.0.0.1), run as the `postgres`
/// user when the tests run as root (the server refuses to run as root).
struct PrivatePostgres {
    data: PathBuf,
    dir: PathBuf,
    port: u16,
    running: bool,
}

impl PrivatePostgres {
    fn command(program: &str) -> StdCommand {
        if is_root() {
            let mut c = StdCommand::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(pg_bin(program));
            c
        } else {
            StdCommand::new(pg_bin(program))
        }
    }

    fn run(mut cmd: StdCommand, what: &str) {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start(port: u16) -> PrivatePostgres {
        let dir = temp_dir("pg");
        if is_root() {
            Self::run(
                {
                    let mut c = StdCommand::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(&dir);
                    c
                },
                "chown",
            );
        }
        let data = dir.join("data");
        let mut initdb = Self::command("initdb");
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        Self::run(initdb, "initdb");
        let mut pg = PrivatePostgres {
            data,
            dir,
            port,
            running: false,
        };
        pg.pg_ctl_start();
        pg
    }

    fn pg_ctl_start(&mut self) {
        let mut c = Self::command("pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "60", "-l"])
            .arg(self.dir.join("server.log"))
            .arg("-o")
            .arg(format!(
                "-p {} -h 127.0.0.1 -k {} -c fsync=off",
                self.port,
                self.dir.display()
            ))
            .arg("start");
        Self::run(c, "pg_ctl start");
        self.running = true;
        wait_for_port(self.port, true);
    }

    fn pg_ctl_stop(&mut self, mode: &str) {
        let mut c = Self::command("pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "60", "-m", mode, "stop"]);
        Self::run(c, "pg_ctl stop");
        self.running = false;
    }

    /// Fast shutdown (every client connection is terminated), then start again.
    fn restart(&mut self) {
        self.pg_ctl_stop("fast");
        wait_for_port(self.port, false);
        self.pg_ctl_start();
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let mut c = Self::command("pg_ctl");
            c.arg("-D")
                .arg(&self.data)
                .args(["-w", "-m", "immediate", "stop"]);
            let _ = c.output();
        }
        let _ = std::fs::remove_dir_all(Path::new(&self.dir));
    }
}

/// Two instances on `store`; logs in; runs `restart` (returns once the server answers
/// again); then asserts that every request after that succeeds at the first attempt, on
/// both instances: API calls, the session check, a new login, a logout.
async fn restart_loses_no_request(store: &str, restart: impl FnOnce()) {
    let (pa, pb) = (free_port(), free_port());
    let origins = [
        format!("http://127.0.0.1:{pa}"),
        format!("http://127.0.0.1:{pb}"),
    ];
    let idp = Idp::start(&origins, IdpOptions::default()).await;
    let api = Api::start(&idp.issuer).await;
    let key = generate_key();
    let a = Gateway::start(pa, &config(pa, &idp.issuer, &api.url, store, &key)).await;
    let b = Gateway::start(pb, &config(pb, &idp.issuer, &api.url, store, &key)).await;

    let alice = Browser::new();
    alice.login(&a, "alice").await;
    for gw in [&a, &b] {
        assert!(alice.user(gw).await.is_some(), "{}: logged in", gw.origin);
        assert_eq!(
            alice.get_csrf(&gw.url("/api/whoami")).await.status(),
            StatusCode::OK
        );
    }

    restart();

    // From here on nothing may fail. The session check always reads the store, so each
    // instance's first request meets its dropped connection.
    for gw in [&a, &b] {
        let r = alice.get_csrf(&gw.url("/bff/user")).await;
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "{}: first request after the restart",
            gw.origin
        );
        for path in ["/api/whoami", "/bff/user", "/api/whoami"] {
            assert_eq!(
                alice.get_csrf(&gw.url(path)).await.status(),
                StatusCode::OK,
                "{} {path}",
                gw.origin
            );
        }
    }
    // Writes work too: a new login on B, seen on A; a logout on A, seen on B.
    let bob = Browser::new();
    bob.login(&b, "bob").await;
    let claims = bob.user(&a).await.expect("bob's new session, seen on A");
    assert_eq!(claim(&claims, "sub"), Some(&json!("bob")));
    let logout_url = claim(&claims, "bff:logout_url")
        .and_then(|v| v.as_str())
        .unwrap()
        .to_owned();
    let r = bob.get(&a.url(&logout_url)).await;
    assert!(r.status().is_redirection(), "logout: {}", r.status());
    assert_eq!(
        bob.get_csrf(&b.url("/api/whoami")).await.status(),
        StatusCode::UNAUTHORIZED,
        "logged out on A, refused on B"
    );
    assert_eq!(
        alice.get_csrf(&b.url("/api/whoami")).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn redis_restart_loses_no_request_on_any_instance() {
    let mut redis = PrivateRedis::start(free_port(), temp_dir("redis"));
    let store = format!("redis://127.0.0.1:{}", redis.port);
    restart_loses_no_request(&store, || redis.restart()).await;
}

#[tokio::test]
async fn postgres_restart_loses_no_request_on_any_instance() {
    let mut pg = PrivatePostgres::start(free_port());
    let store = pg.url();
    restart_loses_no_request(&store, || pg.restart()).await;
}
