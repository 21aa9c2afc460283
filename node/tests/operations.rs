//! End-to-end tests of what an operator touches: configuration by environment variables and
//! host names, the admin port (`/metrics`, `/health/*`, `quorumkv health`), a real Prometheus
//! server scraping it, and graceful shutdown (SIGTERM hands leadership over).
//!
//! Real `quorumkv server` processes on 127.0.0.1 (named `localhost` in the member list), each
//! configured only through `QUORUMKV_*` variables; a Drop guard kills them. The Prometheus part
//! needs the Debian package `prometheus` and says plainly when it skips.
#![cfg(not(madsim))]

mod common;

use common::{free_ports, quorumkv, EnvCluster, KillOnDrop, READY_BOUND};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A plain HTTP GET (the admin port closes the connection after answering).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read answer");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the first sample named `name` whose labels contain every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let series = l.rsplit_once(' ').map_or("", |(s, _)| s);
            let sample_name = series.split('{').next().unwrap_or("");
            sample_name == name && labels.iter().all(|want| series.contains(want))
        })
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

#[test]
fn environment_host_names_metrics_and_health() {
    let cluster = EnvCluster::start("env", 3, 4);
    for id in 1..=3 {
        cluster.wait_ready(id);
    }
    // Liveness and the CLI through host names.
    assert_eq!(http_get(&cluster.admin(1), "/health/live").0, 200);
    let endpoints = cluster.endpoints();
    let put = quorumkv(&["put", "k1", "v1", "--endpoints", &endpoints]);
    assert!(put.status.success(), "{put:?}");
    let get = quorumkv(&["get", "k1", "--endpoints", &endpoints]);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "v1");

    // status --json names every node's metrics URL, and each serves the exposition.
    let status = quorumkv(&["status", "--json", "--endpoints", &endpoints]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    let urls: Vec<String> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["metrics_url"].as_str().expect("metrics_url").to_string())
        .collect();
    assert_eq!(urls.len(), 3);
    let mut put_ok_total = 0.0;
    for (id, url) in (1..=3).zip(&urls) {
        assert_eq!(url, &format!("http://{}/metrics", cluster.admin(id)));
        let (code, text) = http_get(&cluster.admin(id), "/metrics");
        assert_eq!(code, 200);
        assert!(text.ends_with("# EOF\n"));
        let node = format!("node=\"{id}\"");
        assert!(sample(&text, "quorumkv_raft_term", &[&node, "group=\"0\""]).unwrap_or(0.0) >= 1.0);
        assert_eq!(sample(&text, "quorumkv_ready", &[&node]), Some(1.0));
        assert!(sample(&text, "quorumkv_disk_written_bytes_total", &[&node]).unwrap_or(0.0) > 0.0);
        assert!(
            sample(&text, "quorumkv_fsync_duration_seconds_count", &[&node]).unwrap_or(0.0) > 0.0
        );
        put_ok_total += sample(
            &text,
            "quorumkv_requests_total",
            &["op=\"put\"", "result=\"ok\""],
        )
        .unwrap_or(0.0);
    }
    assert!(put_ok_total >= 1.0, "the put was counted by its leader");

    scrape_with_prometheus(&cluster);
}

/// Runs a real Prometheus against the three admin ports and waits until it reports every
/// target up; skips (loudly) when the `prometheus` binary is not installed.
fn scrape_with_prometheus(cluster: &EnvCluster) {
    let Some(prometheus) = find_prometheus() else {
        eprintln!(
            "SKIPPED the Prometheus scrape: no `prometheus` binary (apt-get install prometheus)"
        );
        return;
    };
    let port = free_ports(1)[0];
    let dir = cluster.dir().join("prometheus");
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    let targets: Vec<String> = (1..=3)
        .map(|id| format!("'{}'", cluster.admin(id)))
        .collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: quorumkv\n    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    );
    std::fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");
    let child = Command::new(prometheus)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let _guard = KillOnDrop(child);
    let api = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < READY_BOUND {
        if std::net::TcpStream::connect(&api).is_ok() {
            let (code, body) = http_get(&api, "/api/v1/targets");
            if code == 200 {
                let targets: serde_json::Value = serde_json::from_str(&body).expect("targets json");
                let active = targets["data"]["activeTargets"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let up = active.iter().filter(|t| t["health"] == "up").count();
                if active.len() == 3 && up == 3 {
                    // And the series made it into Prometheus.
                    let (_, result) = http_get(&api, "/api/v1/query?query=quorumkv_ready");
                    if result.matches("\"node\"").count() == 3 {
                        return;
                    }
                }
                last = body;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("Prometheus did not see 3 healthy targets within {READY_BOUND:?}: {last}");
}

fn find_prometheus() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join("prometheus"))
        .find(|p| p.is_file())
}

#[test]
fn bad_environment_variable_is_a_clear_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_quorumkv"))
        .arg("server")
        .env("QUORUMKV_TRANSPORT_CONECT_TIMEOUT_MS", "5")
        .output()
        .expect("run quorumkv");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("QUORUMKV_TRANSPORT_CONECT_TIMEOUT_MS"),
        "{stderr}"
    );
}

#[test]
fn health_of_nothing_is_unreachable() {
    let port = free_ports(1)[0];
    let out = quorumkv(&["health", "--addr", &format!("127.0.0.1:{port}")]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}

/// Groups node `id` leads, from its `/metrics` (`quorumkv_raft_is_leader`).
fn groups_led(cluster: &EnvCluster, id: usize) -> usize {
    let (_, text) = http_get(&cluster.admin(id), "/metrics");
    text.lines()
        .filter(|l| l.starts_with("quorumkv_raft_is_leader{") && l.ends_with(" 1"))
        .count()
}

/// SIGTERM: the node hands every leadership it holds to another voter, then exits 0; the
/// others then lead every group and serve at once.
#[test]
fn sigterm_hands_leaderships_over_before_stopping() {
    let mut cluster = EnvCluster::start("sigterm", 3, 4);
    for id in 1..=3 {
        cluster.wait_ready(id);
    }
    let groups = 5; // the metadata group and QUORUMKV_CLUSTER_SHARDS = 4
    let busiest = (1..=3).max_by_key(|&id| groups_led(&cluster, id)).unwrap();
    assert!(groups_led(&cluster, busiest) >= 1);
    let mut child = cluster.take_child(busiest).expect("running");
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "node did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let log = cluster.log(busiest);
    assert!(
        log.contains("leadership handoff done") && log.contains("still_leading=[]"),
        "{log}"
    );
    let others: Vec<usize> = (1..=3).filter(|&id| id != busiest).collect();
    // Their metrics are sampled every reconcile interval: allow a few.
    let started = Instant::now();
    loop {
        let led: usize = others.iter().map(|&id| groups_led(&cluster, id)).sum();
        if led == groups {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the other two nodes lead {led} of {groups} groups"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let endpoints: Vec<String> = others.iter().map(|&id| cluster.endpoint(id)).collect();
    let put = quorumkv(&[
        "put",
        "after",
        "sigterm",
        "--endpoints",
        &endpoints.join(","),
    ]);
    assert!(put.status.success(), "{put:?}");
}
