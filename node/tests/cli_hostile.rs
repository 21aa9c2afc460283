//! The CLI against careless input (issue 16's probe): each case is a real `quorumkv` process,
//! against one real single-node server on loopback where a server is needed.
#![cfg(not(madsim))]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use node::config::{ClusterConfig, MemberConfig, ServerConfig};

const EXIT_OK: i32 = 0;
const EXIT_USAGE: i32 = 2;

fn quorumkv() -> Command {
    Command::new(env!("CARGO_BIN_EXE_quorumkv"))
}

fn run(args: &[&str]) -> Output {
    quorumkv()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run quorumkv")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// One node with small limits (values up to 1 KiB... except where a test needs more).
struct Node {
    child: Child,
    dir: PathBuf,
    client: SocketAddr,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_node(name: &str, max_value_bytes: usize) -> Node {
    let ports: Vec<StdListener> = (0..2)
        .map(|_| StdListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let port = |i: usize| ports[i].local_addr().expect("addr").port();
    let client = SocketAddr::from(([127, 0, 0, 1], port(1)));
    let dir = std::env::temp_dir().join(format!("quorumkv-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test dir");
    let mut config = ServerConfig {
        node_id: 1,
        members: vec![MemberConfig {
            id: 1,
            peer_addr: SocketAddr::from(([127, 0, 0, 1], port(0))),
            client_addr: client,
            zone: None,
        }],
        data_dir: dir.join("data"),
        cluster: ClusterConfig {
            shards: 2,
            replication_factor: 1,
            ..ClusterConfig::default()
        },
        ..ServerConfig::default()
    };
    config.limits.max_key_bytes = 64;
    config.limits.max_value_bytes = max_value_bytes;
    config.limits.max_client_frame_bytes = max_value_bytes + 64 + 1024;
    config.limits.max_redis_request_bytes = max_value_bytes + 64 + 1024;
    drop(ports);
    let path = dir.join("node.toml");
    std::fs::write(&path, toml::to_string(&config).expect("toml")).expect("write config");
    let log = std::fs::File::create(dir.join("node.log")).expect("log");
    let child = quorumkv()
        .args(["server", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn server");
    let node = Node { child, dir, client };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if run(&["put", "ready", "1", "--endpoints", &node.endpoint()])
            .status
            .success()
        {
            return node;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the node did not start (see {})", node.dir.display());
}

impl Node {
    fn endpoint(&self) -> String {
        self.client.to_string()
    }
}

#[test]
fn zero_timeout_and_zero_clients_are_usage_errors() {
    let output = run(&["get", "k", "--timeout-ms", "0"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_USAGE),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("timeout-ms"),
        "{}",
        stderr(&output)
    );
    let output = run(&["bench", "--clients", "0"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_USAGE),
        "{}",
        stderr(&output)
    );
    assert!(stderr(&output).contains("clients"), "{}", stderr(&output));
}

#[test]
fn cli_against_a_node() {
    let node = start_node("probe", 512 * 1024);
    let endpoint = node.endpoint();

    // A value larger than a command line may hold, from standard input and from a file.
    let big: Vec<u8> = (0..300 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let mut put = quorumkv()
        .args(["put", "big", "--value-file", "-", "--endpoints", &endpoint])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn put");
    put.stdin
        .take()
        .expect("stdin")
        .write_all(&big)
        .expect("write the value");
    assert!(put.wait().expect("put").success());
    let got = run(&["get", "big", "--endpoints", &endpoint]);
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(got.stdout.len(), big.len() + 1, "the value and a newline");
    let file = node.dir.join("value.bin");
    std::fs::write(&file, &big[..1000]).expect("write a value file");
    let put = run(&[
        "put",
        "small",
        "--value-file",
        file.to_str().expect("utf-8 path"),
        "--endpoints",
        &endpoint,
    ]);
    assert!(put.status.success(), "{}", stderr(&put));

    // A closed pipe (`| head -1`) ends the command quietly, not with a panic.
    for i in 0..20 {
        let key = format!("k{i:02}");
        assert!(run(&["put", &key, "v", "--endpoints", &endpoint])
            .status
            .success());
    }
    let mut scan = quorumkv()
        .args(["scan", "--prefix", "k", "--endpoints", &endpoint])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn scan");
    drop(scan.stdout.take()); // the reader is gone before the first line
    let mut errors = String::new();
    scan.stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut errors)
        .expect("read stderr");
    let status = scan.wait().expect("scan");
    assert_eq!(status.code(), Some(EXIT_OK), "{errors}");
    assert!(!errors.contains("panicked"), "{errors}");

    // `bench` whose every operation fails (values over max_value_bytes, within the frame
    // limit) does not exit 0.
    let bench = run(&[
        "bench",
        "--value-bytes",
        "524800",
        "--duration-s",
        "1",
        "--warmup-s",
        "0",
        "--endpoints",
        &endpoint,
    ]);
    assert_eq!(bench.status.code(), Some(EXIT_USAGE), "{}", stderr(&bench));
}

#[test]
fn an_over_limit_scan_answer_exits_as_over_a_limit() {
    let node = start_node("scan-limit", 1024);
    let endpoint = node.endpoint();
    let value = "x".repeat(1000);
    for i in 0..10 {
        let key = format!("{{t}}/{i}");
        let put = run(&["put", &key, &value, "--endpoints", &endpoint]);
        assert!(put.status.success(), "{}", stderr(&put));
    }
    let scan = run(&["scan", "--prefix", "{t}/", "--endpoints", &endpoint]);
    assert_eq!(scan.status.code(), Some(EXIT_USAGE), "{}", stderr(&scan));
    assert!(stderr(&scan).contains("scan limit"), "{}", stderr(&scan));
}
