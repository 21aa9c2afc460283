//! Authentication and roles end to end (issue 16 part 2), real processes on loopback:
//! `quorumkv local --auth` (and `--tls --auth`) with the generated first-admin password. Checks
//! every refusal: no credentials, a wrong password, a read-only user writing (nothing changes),
//! a non-admin managing users, a removed user; the Redis port's AUTH/NOAUTH/WRONGPASS/NOPERM over
//! a raw TCP socket; and that no secret appears in `user list` or in any node's log.
#![cfg(not(madsim))]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::LocalCluster;
use std::time::{Duration, Instant};

/// How long the cluster may take to serve its first write.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a user change may take to reach every node (applied metadata).
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(15);
/// The CLI's exit code for a denied request.
const EXIT_DENIED: i32 = 8;

/// `quorumkv local --auth` (see `common::LocalCluster`), with or without `--tls`.
struct AuthCluster {
    local: LocalCluster,
    tls: bool,
}

impl AuthCluster {
    fn start(tls: bool) -> AuthCluster {
        let args: &[&str] = if tls {
            &["--auth", "--tls"]
        } else {
            &["--auth"]
        };
        let name = if tls { "auth-tls" } else { "auth" };
        AuthCluster {
            local: LocalCluster::start(name, 3, args),
            tls,
        }
    }

    fn endpoint(&self, node: u16) -> String {
        self.local.endpoint(node)
    }

    fn redis_port(&self, node: u16) -> u16 {
        self.local.redis_port(node)
    }

    fn password_file(&self) -> PathBuf {
        self.local.dir().join("admin-password")
    }

    fn admin_password(&self) -> String {
        std::fs::read_to_string(self.password_file())
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    fn logs(&self) -> String {
        (1..=3).map(|n| self.local.log(n)).collect()
    }
}

/// Who runs a CLI command.
#[derive(Clone, Copy)]
enum As<'a> {
    Nobody,
    Admin,
    User(&'a str, &'a str),
}

fn cli(cluster: &AuthCluster, nodes: &[u16], who: As<'_>, args: &[&str]) -> Output {
    let endpoints: Vec<String> = nodes.iter().map(|&n| cluster.endpoint(n)).collect();
    let mut command = Command::new(env!("CARGO_BIN_EXE_quorumkv"));
    command.args(args);
    // `cluster join|leave` name the node they go through with `--via` instead.
    if !args.contains(&"--via") {
        command
            .arg("--endpoints")
            .arg(endpoints.join(","))
            .args(["--timeout-ms", "5000"]);
    }
    command
        .env_remove("QUORUMKV_USER")
        .env_remove("QUORUMKV_PASSWORD")
        .env_remove("QUORUMKV_PASSWORD_FILE")
        .env_remove("QUORUMKV_CA")
        .stdin(Stdio::null());
    if cluster.tls {
        command
            .arg("--ca")
            .arg(cluster.local.dir().join("tls").join("ca.crt"));
    }
    match who {
        As::Nobody => {}
        // The admin through the environment and the password file, as the README says.
        As::Admin => {
            command
                .env("QUORUMKV_USER", "admin")
                .env("QUORUMKV_PASSWORD_FILE", cluster.password_file());
        }
        // Other users through the flags.
        As::User(user, password) => {
            command.args(["--user", user, "--password", password]);
        }
    }
    command.output().expect("run quorumkv")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status.code(),
        text(&output.stderr)
    );
    text(&output.stdout)
}

fn denied(output: &Output, needle: &str) {
    assert_eq!(
        output.status.code(),
        Some(EXIT_DENIED),
        "stdout {} stderr {}",
        text(&output.stdout),
        text(&output.stderr)
    );
    assert!(
        text(&output.stderr).contains(needle),
        "expected {needle:?} in {}",
        text(&output.stderr)
    );
}

fn wait_ready(cluster: &AuthCluster) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let put = cli(cluster, &[1, 2, 3], As::Admin, &["put", "ready", "yes"]);
        if put.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no admin write within {READY_TIMEOUT:?}: {}; logs in {:?}",
            text(&put.stderr),
            cluster.local.dir()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Runs `args` through each node alone until `accept` holds for every node.
fn until_every_node(
    cluster: &AuthCluster,
    who: As<'_>,
    args: &[&str],
    accept: impl Fn(&Output) -> bool,
) {
    for node in 1..=3u16 {
        let deadline = Instant::now() + PROPAGATION_TIMEOUT;
        loop {
            let output = cli(cluster, &[node], who, args);
            if accept(&output) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {node}: {args:?} gave exit {:?}: {}",
                output.status.code(),
                text(&output.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// One RESP command over a plain socket; returns the reply's first line (and a bulk's body).
fn resp(stream: &mut BufReader<TcpStream>, args: &[&str]) -> String {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.get_mut().write_all(request.as_bytes()).unwrap();
    let mut line = String::new();
    stream.read_line(&mut line).unwrap();
    if let Some(len) = line
        .strip_prefix('$')
        .and_then(|l| l.trim().parse::<usize>().ok())
    {
        let mut body = vec![0u8; len + 2];
        stream.read_exact(&mut body).unwrap();
        return format!("{} {}", line.trim_end(), text(&body[..len]));
    }
    line.trim_end().to_string()
}

fn redis(cluster: &AuthCluster, node: u16) -> BufReader<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", cluster.redis_port(node))).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    BufReader::new(stream)
}

#[test]
fn roles_refusals_user_management_and_redis_auth() {
    let cluster = AuthCluster::start(false);
    wait_ready(&cluster);
    let admin_password = cluster.admin_password();
    assert!(admin_password.len() >= 16, "a generated admin password");

    // No credentials, and a wrong password: refused (exit 8), nothing read.
    denied(
        &cli(&cluster, &[1], As::Nobody, &["get", "ready"]),
        "authentication required",
    );
    let started = Instant::now();
    denied(
        &cli(
            &cluster,
            &[2],
            As::User("admin", "wrong-password"),
            &["get", "ready"],
        ),
        "invalid user name or password",
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "a failed login is answered after FAILED_LOGIN_DELAY_MS"
    );
    denied(
        &cli(
            &cluster,
            &[2],
            As::User("nobody", "wrong-password"),
            &["get", "ready"],
        ),
        "invalid user name or password",
    );

    // The admin creates a reader and a writer (and a token user).
    ok(&cli(
        &cluster,
        &[1, 2, 3],
        As::Admin,
        &[
            "user",
            "add",
            "reader",
            "--role",
            "read",
            "--new-password",
            "reader-pass-1",
        ],
    ));
    ok(&cli(
        &cluster,
        &[1, 2, 3],
        As::Admin,
        &[
            "user",
            "add",
            "writer",
            "--role",
            "write",
            "--new-password",
            "writer-pass-1",
        ],
    ));
    let added = ok(&cli(
        &cluster,
        &[1, 2, 3],
        As::Admin,
        &["user", "add", "robot", "--role", "read", "--token"],
    ));
    let token = added
        .lines()
        .find_map(|l| l.strip_prefix("token (shown once): "))
        .expect("the generated token is printed once")
        .trim()
        .to_string();
    // A name in use is refused (exit 1), nothing changes.
    let again = cli(
        &cluster,
        &[1],
        As::Admin,
        &[
            "user",
            "add",
            "reader",
            "--role",
            "admin",
            "--new-password",
            "other-pass-1",
        ],
    );
    assert_eq!(again.status.code(), Some(1), "{}", text(&again.stderr));
    let reader = As::User("reader", "reader-pass-1");
    let writer = As::User("writer", "writer-pass-1");
    until_every_node(&cluster, reader, &["get", "ready"], |o| o.status.success());
    until_every_node(&cluster, writer, &["get", "ready"], |o| o.status.success());

    // The reader reads; its write is refused and changes nothing.
    assert_eq!(
        ok(&cli(&cluster, &[1, 2, 3], reader, &["get", "ready"])).trim(),
        "yes"
    );
    denied(
        &cli(&cluster, &[1, 2, 3], reader, &["put", "ready", "no"]),
        "needs write",
    );
    denied(
        &cli(&cluster, &[3], reader, &["del", "ready"]),
        "needs write",
    );
    assert_eq!(
        ok(&cli(&cluster, &[2], As::Admin, &["get", "ready"])).trim(),
        "yes"
    );
    // The token user reads with its token.
    let robot = As::User("robot", &token);
    until_every_node(&cluster, robot, &["get", "ready"], |o| o.status.success());

    // The writer writes, but cannot manage users or membership.
    ok(&cli(&cluster, &[1, 2, 3], writer, &["put", "w1", "v1"]));
    assert_eq!(
        ok(&cli(&cluster, &[1, 2, 3], reader, &["get", "w1"])).trim(),
        "v1"
    );
    denied(
        &cli(&cluster, &[1], writer, &["user", "list"]),
        "needs admin",
    );
    denied(
        &cli(
            &cluster,
            &[1],
            writer,
            &[
                "user",
                "add",
                "x",
                "--role",
                "admin",
                "--new-password",
                "xxxxxxxxxx",
            ],
        ),
        "needs admin",
    );
    denied(
        &cli(
            &cluster,
            &[1],
            writer,
            &[
                "cluster",
                "leave",
                "--node-id",
                "3",
                "--via",
                &cluster.endpoint(1),
            ],
        ),
        "needs admin",
    );

    // `user list`: names and roles, never a secret or a hash.
    let list = ok(&cli(
        &cluster,
        &[1, 2, 3],
        As::Admin,
        &["user", "list", "--json"],
    ));
    for needle in [
        "\"admin\"",
        "\"reader\"",
        "\"writer\"",
        "\"robot\"",
        "\"write\"",
        "\"token\"",
    ] {
        assert!(list.contains(needle), "{needle} missing in {list}");
    }
    for secret in [
        "reader-pass-1",
        "writer-pass-1",
        token.as_str(),
        admin_password.as_str(),
        "argon2",
    ] {
        assert!(!list.contains(secret), "user list shows a secret: {list}");
    }

    // Redis port, raw TCP: NOAUTH before AUTH, WRONGPASS, then the user's role applies.
    let mut conn = redis(&cluster, 1);
    assert_eq!(
        resp(&mut conn, &["GET", "ready"]),
        "-NOAUTH Authentication required."
    );
    assert!(resp(&mut conn, &["AUTH", "writer", "wrong-password"]).starts_with("-WRONGPASS"));
    assert_eq!(
        resp(&mut conn, &["SET", "r", "1"]),
        "-NOAUTH Authentication required."
    );
    assert_eq!(resp(&mut conn, &["AUTH", "writer", "writer-pass-1"]), "+OK");
    assert_eq!(resp(&mut conn, &["SET", "r", "1"]), "+OK");
    assert_eq!(resp(&mut conn, &["GET", "r"]), "$1 1");
    let mut read_only = redis(&cluster, 2);
    assert_eq!(resp(&mut read_only, &["AUTH", "robot", &token]), "+OK");
    assert_eq!(resp(&mut read_only, &["GET", "r"]), "$1 1");
    assert!(resp(&mut read_only, &["SET", "r", "2"]).starts_with("-NOPERM"));
    assert_eq!(
        resp(&mut conn, &["GET", "r"]),
        "$1 1",
        "the refused SET changed nothing"
    );

    // The admin removes the reader: refused from then on, through every node.
    ok(&cli(
        &cluster,
        &[1, 2, 3],
        As::Admin,
        &["user", "remove", "reader"],
    ));
    until_every_node(&cluster, reader, &["get", "ready"], |o| {
        o.status.code() == Some(EXIT_DENIED)
    });
    denied(
        &cli(&cluster, &[1, 2, 3], reader, &["get", "ready"]),
        "invalid user name or password",
    );
    let list = ok(&cli(&cluster, &[1], As::Admin, &["user", "list"]));
    assert!(!list.contains("reader"), "{list}");
    // The last admin cannot be removed.
    let last = cli(&cluster, &[1], As::Admin, &["user", "remove", "admin"]);
    assert_eq!(last.status.code(), Some(1), "{}", text(&last.stderr));

    // The nodes logged the refusals, warned about clear text, and never a secret.
    let logs = cluster.logs();
    assert!(logs.contains("failed login"), "failed logins are logged");
    assert!(
        logs.contains("request denied"),
        "denied requests are logged"
    );
    assert!(
        logs.contains("clear text"),
        "auth without TLS warns at start"
    );
    for secret in [
        "reader-pass-1",
        "writer-pass-1",
        "wrong-password",
        token.as_str(),
        admin_password.as_str(),
    ] {
        assert!(!logs.contains(secret), "a node logged a secret ({secret})");
    }
}

#[test]
fn one_command_starts_a_tls_cluster_with_auth() {
    let cluster = AuthCluster::start(true);
    wait_ready(&cluster);
    assert_eq!(
        ok(&cli(&cluster, &[1, 2, 3], As::Admin, &["get", "ready"])).trim(),
        "yes"
    );
    denied(
        &cli(&cluster, &[1, 2, 3], As::Nobody, &["put", "ready", "no"]),
        "authentication required",
    );
    assert_eq!(
        ok(&cli(&cluster, &[3], As::Admin, &["get", "ready"])).trim(),
        "yes"
    );
    let logs = cluster.logs();
    assert!(
        !logs.contains("clear text"),
        "no clear-text warning with TLS"
    );
    assert!(!logs.contains(cluster.admin_password().as_str()));
}
