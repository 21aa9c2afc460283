//! `quorumkv local --tls` end to end, real processes on loopback: three nodes whose peers talk
//! mutual TLS serve puts and gets through the CLI given the generated CA; the CLI without the
//! CA, or with another CA, exits 2 at once with the reason, and the node logs its side of it.
#![cfg(not(madsim))]

mod common;

use std::path::{Path, PathBuf};

use common::LocalCluster;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long the cluster may take to serve its first write.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn ca(cluster: &LocalCluster) -> PathBuf {
    cluster.dir().join("tls").join("ca.crt")
}

/// Runs the CLI with `args`, the endpoints of `nodes` and, if given, `--ca ca`.
fn cli(cluster: &LocalCluster, nodes: &[u16], ca: Option<&Path>, args: &[&str]) -> Output {
    let endpoints: Vec<String> = nodes.iter().map(|&n| cluster.endpoint(n)).collect();
    let mut command = Command::new(env!("CARGO_BIN_EXE_quorumkv"));
    command
        .args(args)
        .arg("--endpoints")
        .arg(endpoints.join(","))
        .args(["--timeout-ms", "5000"])
        .env_remove("QUORUMKV_CA")
        .stdin(Stdio::null());
    if let Some(ca) = ca {
        command.arg("--ca").arg(ca);
    }
    command.output().expect("run quorumkv")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Waits until `node`'s log holds `needle` (the node writes it asynchronously).
fn wait_for_log(cluster: &LocalCluster, node: u16, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if cluster.log(node).contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn a_local_tls_cluster_serves_the_cli_with_the_ca_and_refuses_it_without() {
    let cluster = LocalCluster::start("tls", 3, &["--tls"]);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let put = cli(
            &cluster,
            &[1, 2, 3],
            Some(&ca(&cluster)),
            &["put", "ready", "yes"],
        );
        if put.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no write within {READY_TIMEOUT:?}: {}; logs in {:?}",
            text(&put.stderr),
            cluster.dir()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // Through each node: the shards' leaders replicate over mutual TLS.
    for node in 1..=3u16 {
        let key = format!("k{node}");
        let put = cli(&cluster, &[node], Some(&ca(&cluster)), &["put", &key, "v"]);
        assert!(put.status.success(), "{}", text(&put.stderr));
    }
    let get = cli(&cluster, &[3], Some(&ca(&cluster)), &["get", "k1"]);
    assert_eq!(text(&get.stdout).trim(), "v", "{}", text(&get.stderr));

    // No CA: exit 2 at once, the reason on stderr, the node logs its side.
    let started = Instant::now();
    let plain = cli(&cluster, &[1], None, &["get", "ready"]);
    assert_eq!(plain.status.code(), Some(2), "{}", text(&plain.stderr));
    assert!(
        text(&plain.stderr).contains("serves TLS only"),
        "{}",
        text(&plain.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(wait_for_log(
        &cluster,
        1,
        "plaintext client on the TLS client port"
    ));

    // Another CA: exit 2, the client names the cause, the node logs the refused handshake.
    let other =
        node::tls::certs::LocalCa::generate("other", node::tls::certs::Validity::around_now(1, 30))
            .unwrap();
    let other_dir = cluster.dir().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other_ca = other.write_cert(&other_dir).unwrap();
    let wrong = cli(&cluster, &[2], Some(&other_ca), &["get", "ready"]);
    assert_eq!(wrong.status.code(), Some(2), "{}", text(&wrong.stderr));
    assert!(
        text(&wrong.stderr).contains("not signed by the CA"),
        "{}",
        text(&wrong.stderr)
    );
    assert!(wait_for_log(&cluster, 2, "client connection refused"));
}

/// A fourth node joins the TLS cluster with `quorumkv cluster join` and its spare certificate:
/// its admission request must itself speak TLS to the members' client ports (it once went out
/// in plaintext and was refused forever), and once admitted it serves the cluster's keys.
#[test]
fn a_node_joins_a_local_tls_cluster() {
    let cluster = LocalCluster::start("tls-join", 3, &["--tls"]);
    let deadline = Instant::now() + READY_TIMEOUT;
    while !cli(
        &cluster,
        &[1, 2, 3],
        Some(&ca(&cluster)),
        &["put", "k", "v"],
    )
    .status
    .success()
    {
        assert!(
            Instant::now() < deadline,
            "no write within {READY_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let ports = common::free_ports(2);
    let tls = cluster.dir().join("tls");
    let log = std::fs::File::create(cluster.dir().join("node-4.log")).expect("log file");
    let joiner = Command::new(env!("CARGO_BIN_EXE_quorumkv"))
        .args(["cluster", "join", "--node-id", "4", "--via"])
        .arg(cluster.endpoint(1))
        .arg("--peer-addr")
        .arg(format!("127.0.0.1:{}", ports[0]))
        .arg("--client-addr")
        .arg(format!("127.0.0.1:{}", ports[1]))
        .arg("--data-dir")
        .arg(cluster.dir().join("node-4"))
        .arg("--tls-cert")
        .arg(tls.join("node-4.crt"))
        .arg("--tls-key")
        .arg(tls.join("node-4.key"))
        .arg("--tls-ca")
        .arg(tls.join("ca.crt"))
        .env_remove("QUORUMKV_CA")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log clone"))
        .stderr(log)
        .spawn()
        .expect("start quorumkv cluster join");
    let _joiner = common::KillOnDrop(joiner);
    // Only an admitted node knows the map and can route a read of any key.
    let node4 = format!("127.0.0.1:{}", ports[1]);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let get = Command::new(env!("CARGO_BIN_EXE_quorumkv"))
            .args([
                "get",
                "k",
                "--timeout-ms",
                "2000",
                "--endpoints",
                &node4,
                "--ca",
            ])
            .arg(ca(&cluster))
            .env_remove("QUORUMKV_CA")
            .stdin(Stdio::null())
            .output()
            .expect("run quorumkv");
        if get.status.success() && text(&get.stdout).trim() == "v" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 4 not admitted within {READY_TIMEOUT:?}: {}; its log: {}",
            text(&get.stderr),
            cluster.log(4)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}
