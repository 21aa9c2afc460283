//! The Redis port against a real 3-node cluster (`quorumkv local --nodes 3`, real processes on
//! loopback): every command through the `redis` crate, in RESP2 and RESP3, pipelining,
//! malformed input; then the real `redis-cli` and `redis-benchmark` (Debian `redis-tools`;
//! skipped with a printed reason when absent), and a leader killed under redis-benchmark load:
//! the benchmark ends (errors allowed, no hang) and every SET answered OK is readable after.
//! The tests take turns (one cluster at a time).
#![cfg(not(madsim))]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::LocalCluster;
use redis::{Connection, RedisResult, Value};

static ONE_CLUSTER: Mutex<()> = Mutex::new(());
/// How long the cluster may take to serve its first write.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// `quorumkv local --nodes 3` (see `common::LocalCluster`) that has served its first SET.
struct RedisCluster {
    local: LocalCluster,
}

impl RedisCluster {
    fn start(label: &str) -> RedisCluster {
        let cluster = RedisCluster {
            local: LocalCluster::start(&format!("redis-{label}"), 3, &[]),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ready = cluster
                .try_connect(1)
                .and_then(|mut c| redis::cmd("SET").arg("ready").arg("1").query::<()>(&mut c));
            match ready {
                Ok(()) => break,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!(
                    "cluster not ready in {READY_TIMEOUT:?}: {e}; logs in {:?}",
                    cluster.local.dir()
                ),
            }
        }
        cluster
    }

    fn redis_port(&self, node: u16) -> u16 {
        self.local.redis_port(node)
    }

    fn try_connect(&self, node: u16) -> RedisResult<Connection> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.redis_port(node)))?;
        let connection = client.get_connection_with_timeout(Duration::from_secs(2))?;
        connection.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(connection)
    }

    fn connect(&self, node: u16) -> Connection {
        self.try_connect(node).expect("connect to the redis port")
    }

    /// The pid of node `node` (INFO server's process_id).
    fn pid(&self, node: u16) -> u32 {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query(&mut self.connect(node))
            .expect("INFO server");
        field(&info, "process_id").parse().expect("a pid")
    }

    /// How many Raft groups node `node` leads (INFO quorumkv).
    fn groups_leading(&self, node: u16) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("quorumkv")
            .query(&mut self.connect(node))
            .expect("INFO quorumkv");
        field(&info, "groups_leading").parse().expect("a count")
    }
}

fn field(info: &str, name: &str) -> String {
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {info}"))
        .trim()
        .to_string()
}

fn run(c: &mut Connection, args: &[&str]) -> RedisResult<Value> {
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command.query(c)
}

/// The error's full text ("CODE detail").
fn error(c: &mut Connection, args: &[&str]) -> String {
    match run(c, args) {
        Ok(value) => panic!("{args:?} answered {value:?}, expected an error"),
        Err(e) => format!("{} {}", e.code().unwrap_or("?"), e.detail().unwrap_or("")),
    }
}

fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

fn ok() -> Value {
    Value::Okay
}

fn int(n: i64) -> Value {
    Value::Int(n)
}

fn strings(c: &mut Connection, args: &[&str]) -> Vec<String> {
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command.query(c).expect("a list of strings")
}

#[test]
fn every_command_against_a_three_node_cluster() {
    let _turn = ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = RedisCluster::start("commands");
    let mut a = cluster.connect(1);
    let mut b = cluster.connect(2);
    let c = &mut a;

    assert_eq!(
        run(c, &["PING"]).unwrap(),
        Value::SimpleString("PONG".into())
    );
    assert_eq!(run(c, &["PING", "hi"]).unwrap(), bulk("hi"));
    assert_eq!(run(c, &["ECHO", "x y"]).unwrap(), bulk("x y"));
    assert_eq!(run(c, &["SELECT", "0"]).unwrap(), ok());
    assert_eq!(error(c, &["SELECT", "1"]), "ERR DB index is out of range");
    assert!(error(c, &["AUTH", "pw"]).contains("without any password configured"));

    // Strings; every node answers every key.
    assert_eq!(run(c, &["SET", "a", "1"]).unwrap(), ok());
    assert_eq!(run(&mut b, &["GET", "a"]).unwrap(), bulk("1"));
    assert_eq!(run(c, &["GET", "missing"]).unwrap(), Value::Nil);
    assert_eq!(run(c, &["SET", "a", "2", "NX"]).unwrap(), Value::Nil);
    assert_eq!(run(c, &["SET", "a", "2", "XX", "GET"]).unwrap(), bulk("1"));
    assert_eq!(run(c, &["SET", "fresh", "v", "XX"]).unwrap(), Value::Nil);
    assert_eq!(run(c, &["SET", "a", "3", "KEEPTTL"]).unwrap(), ok());
    assert_eq!(error(c, &["SET", "a", "1", "NX", "XX"]), "ERR syntax error");
    assert!(error(c, &["SET", "a", "1", "EX", "10"]).contains("not supported"));
    assert_eq!(run(c, &["SETNX", "nx", "1"]).unwrap(), int(1));
    assert_eq!(run(c, &["SETNX", "nx", "2"]).unwrap(), int(0));
    assert_eq!(run(c, &["GETSET", "nx", "3"]).unwrap(), bulk("1"));
    assert_eq!(run(c, &["GETDEL", "nx"]).unwrap(), bulk("3"));
    assert_eq!(run(c, &["GETDEL", "nx"]).unwrap(), Value::Nil);
    assert_eq!(run(c, &["APPEND", "s", "ab"]).unwrap(), int(2));
    assert_eq!(run(&mut b, &["APPEND", "s", "cde"]).unwrap(), int(5));
    assert_eq!(run(c, &["STRLEN", "s"]).unwrap(), int(5));
    assert_eq!(run(c, &["STRLEN", "missing"]).unwrap(), int(0));
    assert_eq!(run(c, &["INCR", "n"]).unwrap(), int(1));
    assert_eq!(run(&mut b, &["INCRBY", "n", "10"]).unwrap(), int(11));
    assert_eq!(run(c, &["DECR", "n"]).unwrap(), int(10));
    assert_eq!(run(c, &["DECRBY", "n", "20"]).unwrap(), int(-10));
    assert_eq!(run(c, &["GET", "n"]).unwrap(), bulk("-10"));
    let not_integer = "ERR value is not an integer or out of range";
    assert_eq!(error(c, &["INCR", "s"]), not_integer);
    assert_eq!(error(c, &["INCRBY", "n", "x"]), not_integer);
    assert_eq!(
        run(c, &["SET", "big", &i64::MAX.to_string()]).unwrap(),
        ok()
    );
    assert_eq!(
        error(c, &["INCR", "big"]),
        "ERR increment or decrement would overflow"
    );
    assert_eq!(
        error(c, &["DECRBY", "n", &i64::MIN.to_string()]),
        "ERR decrement would overflow"
    );

    // Multi-key: MGET and EXISTS fan out; MSET needs one hash tag.
    assert_eq!(
        run(c, &["MGET", "a", "missing", "s"]).unwrap(),
        Value::Array(vec![bulk("3"), Value::Nil, bulk("abcde")])
    );
    assert_eq!(run(c, &["MSET", "{u1}x", "1", "{u1}y", "2"]).unwrap(), ok());
    assert_eq!(
        error(c, &["MSET", "p", "1", "q", "2"]),
        "CROSSSLOT Keys in request don't hash to the same slot"
    );
    assert_eq!(
        run(c, &["MSETNX", "{u1}y", "9", "{u1}z", "9"]).unwrap(),
        int(0)
    );
    assert_eq!(run(c, &["GET", "{u1}z"]).unwrap(), Value::Nil);
    assert_eq!(
        run(c, &["MSETNX", "{u2}y", "9", "{u2}z", "9"]).unwrap(),
        int(1)
    );
    assert_eq!(
        run(c, &["EXISTS", "a", "s", "missing", "a"]).unwrap(),
        int(3)
    );
    assert_eq!(
        run(c, &["TYPE", "a"]).unwrap(),
        Value::SimpleString("string".into())
    );
    assert_eq!(
        run(c, &["TYPE", "missing"]).unwrap(),
        Value::SimpleString("none".into())
    );
    assert_eq!(run(c, &["DEL", "a", "s", "missing"]).unwrap(), int(2));
    assert_eq!(run(c, &["UNLINK", "{u2}y"]).unwrap(), int(1));
    assert_eq!(run(c, &["EXISTS", "a"]).unwrap(), int(0));

    // Key space: SCAN with a cursor across shards, MATCH and COUNT; KEYS; DBSIZE.
    for i in 0..25 {
        run(c, &["SET", &format!("scan:{i:02}"), "v"]).unwrap();
    }
    let mut cursor = "0".to_string();
    let mut seen = Vec::new();
    let mut calls = 0;
    loop {
        let (next, keys): (String, Vec<String>) = redis::cmd("SCAN")
            .arg(&cursor)
            .arg("MATCH")
            .arg("scan:*")
            .arg("COUNT")
            .arg(7)
            .query(c)
            .unwrap();
        assert!(keys.len() <= 7);
        seen.extend(keys);
        calls += 1;
        if next == "0" {
            break;
        }
        cursor = next;
    }
    let expected: Vec<String> = (0..25).map(|i| format!("scan:{i:02}")).collect();
    assert_eq!(seen, expected);
    assert!(calls >= 4, "COUNT 7 over 25 keys took {calls} calls");
    let mut keys = strings(c, &["KEYS", "scan:1?"]);
    keys.sort();
    assert_eq!(
        keys,
        (10..20).map(|i| format!("scan:{i}")).collect::<Vec<_>>()
    );
    let dbsize: i64 = redis::cmd("DBSIZE").query(c).unwrap();
    let all = strings(c, &["KEYS", "*"]);
    assert_eq!(dbsize, all.len() as i64, "{all:?}");

    // Server commands redis-cli needs.
    let count: i64 = redis::cmd("COMMAND").arg("COUNT").query(c).unwrap();
    assert!(count >= 30);
    assert!(
        matches!(run(c, &["COMMAND", "DOCS", "get"]).unwrap(), Value::Array(ref v) if v.len() == 2)
    );
    let info: String = redis::cmd("INFO").query(c).unwrap();
    for section in [
        "# Server",
        "# Clients",
        "# Replication",
        "# Keyspace",
        "# Quorumkv",
    ] {
        assert!(info.contains(section), "INFO lacks {section}");
    }
    assert_eq!(field(&info, "role"), "master");

    // Errors: unknown commands and wrong arity.
    assert_eq!(
        error(c, &["NOSUCH", "a", "b"]),
        "ERR unknown command 'NOSUCH', with args beginning with: 'a' 'b' "
    );
    assert_eq!(
        error(c, &["GET"]),
        "ERR wrong number of arguments for 'get' command"
    );
    assert_eq!(
        error(c, &["MSET", "a"]),
        "ERR wrong number of arguments for 'mset' command"
    );

    // Pipelining: replies in order, each reflecting the commands before it.
    let mut pipe = redis::pipe();
    for i in 0..50 {
        pipe.cmd("INCR").arg("pipe");
        pipe.cmd("GET").arg("pipe");
        let _ = i;
    }
    let replies: Vec<i64> = pipe.query(c).unwrap();
    let expected: Vec<i64> = (1..=50).flat_map(|i| [i, i]).collect();
    assert_eq!(replies, expected);

    // RESP3 (HELLO 3): maps and nulls in RESP3 form.
    let client = redis::Client::open(format!(
        "redis://127.0.0.1:{}/?protocol=resp3",
        cluster.redis_port(3)
    ))
    .unwrap();
    let mut resp3 = client.get_connection().unwrap();
    assert_eq!(run(&mut resp3, &["GET", "pipe"]).unwrap(), bulk("50"));
    assert_eq!(run(&mut resp3, &["GET", "missing"]).unwrap(), Value::Nil);
    assert!(matches!(
        run(&mut resp3, &["HELLO", "3"]).unwrap(),
        Value::Map(_)
    ));
    assert_eq!(
        error(&mut resp3, &["HELLO", "4"]),
        "NOPROTO unsupported protocol version"
    );

    // Garbage: the sender gets an error and is disconnected; the others are still served.
    for garbage in [
        &b"*1\r\n$999999999999\r\n"[..],
        b"*2\r\nxyz\r\n",
        b"*-x\r\n",
        &[b'a'; 70_000][..],
    ] {
        let mut raw = TcpStream::connect(("127.0.0.1", cluster.redis_port(2))).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        raw.write_all(garbage).unwrap();
        let mut answer = Vec::new();
        let _ = raw.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("-ERR Protocol error"), "{answer}");
    }
    assert_eq!(run(&mut b, &["GET", "pipe"]).unwrap(), bulk("50"));
    assert_eq!(run(c, &["QUIT"]).unwrap(), ok());
}

fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!(
            "SKIPPED: `{tool}` is not installed (Debian package redis-tools: apt-get install -y redis-tools); the test that uses it did not run"
        );
    }
    found
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("timeout")
        .arg("30")
        .arg("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("run redis-cli");
    assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn redis_cli_redis_benchmark_and_a_killed_leader() {
    if !have("redis-cli") || !have("redis-benchmark") {
        return;
    }
    let _turn = ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = RedisCluster::start("tools");
    let port = cluster.redis_port(1);
    assert_eq!(redis_cli(port, &["SET", "a", "1"]), "OK");
    assert_eq!(redis_cli(cluster.redis_port(2), &["GET", "a"]), "1");
    assert_eq!(redis_cli(port, &["INCR", "n"]), "1");
    assert!(redis_cli(port, &["SCAN", "0"]).lines().any(|l| l == "a"));
    assert!(redis_cli(port, &["-3", "HELLO", "3"]).contains("proto"));
    assert!(redis_cli(port, &["NOSUCH"]).starts_with("ERR unknown command"));

    let bench = |port: u16, requests: u32, extra: &[&str]| {
        Command::new("timeout")
            .arg("120")
            .arg("redis-benchmark")
            .args(["-p", &port.to_string(), "-n", &requests.to_string(), "-q"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run redis-benchmark")
    };
    let quiet = bench(port, 2_000, &["-t", "set,get", "-c", "10", "-P", "4"])
        .wait_with_output()
        .unwrap();
    let text = String::from_utf8_lossy(&quiet.stdout);
    assert!(quiet.status.success(), "redis-benchmark failed: {quiet:?}");
    assert!(text.contains("SET:") && text.contains("GET:"), "{text}");

    // A leader killed under load: the benchmark (on node 1) ends, errors allowed; every SET
    // answered OK (by a writer on node 2) is readable afterwards.
    let victim = if cluster.groups_leading(3) > 0 { 3 } else { 2 };
    let writer_node = if victim == 3 { 2 } else { 3 };
    let victim_pid = cluster.pid(victim);
    let loaded = bench(port, 10_000, &["-t", "set", "-c", "20", "-r", "10000"]);
    let mut writer = cluster.connect(writer_node);
    let mut acknowledged = Vec::new();
    let started = Instant::now();
    let mut killed = false;
    while started.elapsed() < Duration::from_secs(12) {
        if !killed && started.elapsed() > Duration::from_secs(2) {
            let status = Command::new("kill")
                .args(["-KILL", &victim_pid.to_string()])
                .status()
                .unwrap();
            assert!(status.success());
            killed = true;
        }
        let phase = if killed { "after" } else { "before" };
        let key = format!("{phase}:{}", acknowledged.len());
        if run(&mut writer, &["SET", &key, &key]).is_ok() {
            acknowledged.push(key);
        }
    }
    let output = loaded.wait_with_output().unwrap();
    assert_ne!(
        output.status.code(),
        Some(124),
        "redis-benchmark hung after a leader was killed"
    );
    let after: usize = acknowledged
        .iter()
        .filter(|k| k.starts_with("after:"))
        .count();
    assert!(after > 0, "no SET succeeded after the kill");
    let mut reader = cluster.connect(1);
    for key in &acknowledged {
        assert_eq!(
            run(&mut reader, &["GET", key]).unwrap(),
            bulk(key),
            "SET {key} was answered OK but is not readable"
        );
    }
    eprintln!(
        "killed node {victim} (pid {victim_pid}); {} SETs acknowledged, {after} after the kill, all readable",
        acknowledged.len()
    );
}
