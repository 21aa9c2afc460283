//! TLS on loopback, in process: each refusal case gets a clear error on both sides within a
//! bounded time (wrong CA, expired certificate, a plaintext client on a TLS port, a peer with
//! another member's certificate, a silent peer), certificates reload without a restart, and a
//! TLS node serves the client library, its admin port and its Redis port. The 3-process mTLS
//! cluster started by `quorumkv local --tls` is in `tls_cluster.rs`.
#![cfg(not(madsim))]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use node::client::{Client, ClientError, ClientOptions};
use node::config::{MemberConfig, ServerConfig, TlsConfig};
use node::raft::NodeId;
use node::server::Server;
use node::tls::certs::{date_time_ymd, Issued, LocalCa, Validity};
use node::tls::{ClientTls, PortKind, TlsFiles};
use node::transport::frame::{encode_frame, read_frame, FrameBudget};
use node::transport::peer::{accept_peers, InboundConfig, KnownPeers, PeerFrame};
use node::transport::stream::{
    Accepted, Acceptor, ConnectError, Connector, HandshakeError, Stream,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// Handshake deadline of the servers under test.
const HANDSHAKE_TIMEOUT_MS: u64 = 500;
/// Longest any one exchange in these tests may take: a hang fails the test instead.
const EXCHANGE_BOUND: Duration = Duration::from_secs(10);

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(label: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("quorumkv-tls-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn valid() -> Validity {
    Validity::around_now(1, 30)
}

fn expired() -> Validity {
    Validity {
        not_before: date_time_ymd(2020, 1, 1),
        not_after: date_time_ymd(2020, 6, 1),
    }
}

fn loopback() -> Vec<String> {
    vec!["127.0.0.1".into(), "localhost".into()]
}

/// A CA and its certificate file in `dir/<label>-ca.crt`.
fn ca(dir: &Path, label: &str) -> (LocalCa, PathBuf) {
    let ca = LocalCa::generate(label, valid()).unwrap();
    let path = dir.join(format!("{label}-ca.crt"));
    std::fs::write(&path, &ca.cert_pem).unwrap();
    (ca, path)
}

/// A node's TLS settings from `issued` (written as `dir/name.crt|key`) and `ca_file`.
fn node_files(
    dir: &Path,
    name: &str,
    issued: &Issued,
    ca_file: &Path,
) -> (Arc<TlsFiles>, TlsConfig) {
    let (cert, key) = issued.write(dir, name).unwrap();
    let config = TlsConfig {
        cert_file: Some(cert),
        key_file: Some(key),
        ca_file: Some(ca_file.to_path_buf()),
        client_cert_required: false,
    };
    (TlsFiles::from_config(&config).unwrap().unwrap(), config)
}

fn client_connector(ca_file: &Path, identity: Option<(&Path, &Path)>) -> Connector {
    Connector::tls(Arc::new(
        ClientTls::from_files(ca_file, identity, None).unwrap(),
    ))
}

/// What each side saw of one connection attempt: the server's accept and the client's connect
/// followed by a one-byte read (in TLS 1.3 a client learns that the server refused its
/// certificate only when it reads).
struct Outcome {
    server: Result<&'static str, String>,
    client: Result<(), String>,
}

async fn attempt(acceptor: Acceptor, connector: &Connector, member: Option<NodeId>) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match acceptor.accept(tcp, HANDSHAKE_TIMEOUT_MS).await {
            Ok(Accepted::Ready { mut stream, .. }) => {
                // Answer one byte so that a successful client read completes.
                let _ = stream.write_all(b"!").await;
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok("ready")
            }
            Ok(Accepted::Plaintext(_)) => Ok("plaintext"),
            Err(e) => Err(e.to_string()),
        }
    });
    let client = async {
        let mut stream = connector
            .connect(addr, member, Duration::from_secs(3))
            .await
            .map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        match stream.read(&mut byte).await {
            Ok(1) => Ok(()),
            Ok(_) => Err("closed".to_string()),
            Err(e) => Err(node::tls::explain(&e)),
        }
    };
    let client = timeout(EXCHANGE_BOUND, client).await.expect("client hung");
    let server = timeout(EXCHANGE_BOUND, server)
        .await
        .expect("server hung")
        .unwrap();
    Outcome { server, client }
}

fn contains(result: &Result<impl std::fmt::Debug, String>, needle: &str) -> bool {
    matches!(result, Err(e) if e.contains(needle))
}

#[tokio::test]
async fn handshakes_succeed_with_good_certificates_and_fail_clearly_otherwise() {
    let scratch = Scratch::new("refusals");
    let dir = &scratch.0;
    let (ca_a, ca_a_file) = ca(dir, "a");
    let (ca_b, ca_b_file) = ca(dir, "b");
    let node1 = ca_a.issue_node(1, &loopback(), valid()).unwrap();
    let (files1, _) = node_files(dir, "node-1", &node1, &ca_a_file);
    let client_acceptor = Acceptor::tls(files1.clone(), PortKind::Client);

    // Good: by address (the certificate names 127.0.0.1) and by member name.
    let good = attempt(
        client_acceptor.clone(),
        &client_connector(&ca_a_file, None),
        None,
    )
    .await;
    assert_eq!((good.server, good.client), (Ok("ready"), Ok(())));
    let by_member = attempt(
        client_acceptor.clone(),
        &client_connector(&ca_a_file, None),
        Some(1),
    )
    .await;
    assert_eq!(by_member.client, Ok(()));

    // Wrong CA: the client does not trust the server's issuer; the server hears its alert.
    let wrong_ca = attempt(
        client_acceptor.clone(),
        &client_connector(&ca_b_file, None),
        None,
    )
    .await;
    assert!(
        contains(&wrong_ca.client, "not signed by the CA"),
        "{:?}",
        wrong_ca.client
    );
    assert!(contains(&wrong_ca.server, "alert"), "{:?}", wrong_ca.server);

    // Dialling member 2 and meeting member 1's certificate.
    let wrong_member = attempt(
        client_acceptor.clone(),
        &client_connector(&ca_a_file, None),
        Some(2),
    )
    .await;
    assert!(
        contains(&wrong_member.client, "does not name the node dialled"),
        "{:?}",
        wrong_member.client
    );
    assert!(wrong_member.server.is_err(), "{:?}", wrong_member.server);

    // An expired server certificate.
    let old = ca_a.issue_node(1, &loopback(), expired()).unwrap();
    let (old_files, _) = node_files(dir, "old-1", &old, &ca_a_file);
    let expired_server = attempt(
        Acceptor::tls(old_files.clone(), PortKind::Client),
        &client_connector(&ca_a_file, None),
        None,
    )
    .await;
    assert!(
        contains(&expired_server.client, "expired"),
        "{:?}",
        expired_server.client
    );
    assert!(
        contains(&expired_server.server, "alert"),
        "{:?}",
        expired_server.server
    );

    // Mutual TLS on the peer port: an expired client certificate, no certificate, a client
    // certificate from another CA. The server names the cause; the client hears an alert.
    let peer_acceptor = Acceptor::tls(files1.clone(), PortKind::Peer);
    let expired_caller = attempt(peer_acceptor.clone(), &Connector::node(old_files), Some(1)).await;
    assert!(
        contains(&expired_caller.server, "expired"),
        "{:?}",
        expired_caller.server
    );
    assert!(
        contains(&expired_caller.client, "alert"),
        "{:?}",
        expired_caller.client
    );
    let anonymous = attempt(
        peer_acceptor.clone(),
        &client_connector(&ca_a_file, None),
        Some(1),
    )
    .await;
    assert!(anonymous.server.is_err(), "{:?}", anonymous.server);
    assert!(anonymous.client.is_err(), "{:?}", anonymous.client);
    let ca_b_pair = ca_b.issue_node(2, &loopback(), valid()).unwrap();
    let (foreign, _) = node_files(dir, "foreign-2", &ca_b_pair, &ca_a_file);
    let foreign_caller = attempt(peer_acceptor, &Connector::node(foreign), Some(1)).await;
    assert!(
        contains(&foreign_caller.server, "not signed by the CA"),
        "{:?}",
        foreign_caller.server
    );
    assert!(
        foreign_caller.client.is_err(),
        "{:?}",
        foreign_caller.client
    );
}

#[tokio::test]
async fn plaintext_and_silent_callers_are_detected_within_the_handshake_deadline() {
    let scratch = Scratch::new("silent");
    let dir = &scratch.0;
    let (ca_a, ca_a_file) = ca(dir, "a");
    let node1 = ca_a.issue_node(1, &loopback(), valid()).unwrap();
    let (files1, _) = node_files(dir, "node-1", &node1, &ca_a_file);
    let acceptor = Acceptor::tls(files1, PortKind::Client);

    // A plaintext client is handed back to the port (which answers in its own protocol) as soon
    // as it writes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"QKV\x01 a client frame").await.unwrap();
    let (tcp, _) = listener.accept().await.unwrap();
    let accepted = timeout(EXCHANGE_BOUND, acceptor.accept(tcp, HANDSHAKE_TIMEOUT_MS))
        .await
        .expect("accept hung");
    assert!(matches!(accepted, Ok(Accepted::Plaintext(_))));

    // A caller that connects and says nothing: refused after the handshake deadline.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = TcpStream::connect(addr).await.unwrap();
    let (tcp, _) = listener.accept().await.unwrap();
    let started = Instant::now();
    let refused = timeout(EXCHANGE_BOUND, acceptor.accept(tcp, HANDSHAKE_TIMEOUT_MS))
        .await
        .expect("accept hung");
    assert!(matches!(
        refused,
        Err(HandshakeError::Timeout {
            timeout_ms: HANDSHAKE_TIMEOUT_MS
        })
    ));
    assert!(started.elapsed() < Duration::from_millis(HANDSHAKE_TIMEOUT_MS * 4));

    // A server that accepts and never answers the client's hello: the connect gives up in time.
    let mute = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_addr = mute.local_addr().unwrap();
    let _held = tokio::spawn(async move {
        let held = mute.accept().await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(held);
    });
    let started = Instant::now();
    let within = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
    let connect = client_connector(&ca_a_file, None)
        .connect(mute_addr, None, within)
        .await;
    assert!(
        matches!(connect, Err(ConnectError::Timeout { .. })),
        "{connect:?}"
    );
    assert!(started.elapsed() < within * 4);
}

/// Node 2's peer port with mutual TLS; returns its address and what it delivers.
async fn tls_peer_port(
    files: Arc<TlsFiles>,
) -> (
    SocketAddr,
    tokio::sync::mpsc::Receiver<node::transport::PeerMessage>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (inbox, delivered) = tokio::sync::mpsc::channel(16);
    let config = InboundConfig {
        me: 2,
        transport: node::config::TransportConfig {
            handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS,
            ..Default::default()
        },
        max_frame_bytes: 1 << 20,
        max_connections: 8,
        max_handshakes: 8,
        members: KnownPeers::new([1, 3]),
        budget: FrameBudget::new(4 << 20),
        acceptor: Acceptor::tls(files, PortKind::Peer),
    };
    tokio::spawn(accept_peers(listener, config, inbox));
    (addr, delivered)
}

/// Sends `hello` then a ping; returns the callee's first answer (None: closed).
async fn greet(stream: Stream, hello: PeerFrame) -> Option<PeerFrame> {
    let (read_half, mut write_half) = tokio::io::split(stream);
    for frame in [hello, PeerFrame::Ping] {
        let bytes = encode_frame(&frame, 1 << 20).unwrap();
        if write_half.write_all(&bytes).await.is_err() || write_half.flush().await.is_err() {
            break;
        }
    }
    let mut reader = BufReader::new(read_half);
    timeout(
        EXCHANGE_BOUND,
        read_frame::<_, PeerFrame>(&mut reader, 1 << 20),
    )
    .await
    .expect("no answer and no close: a hang")
    .ok()
    .flatten()
}

#[tokio::test]
async fn a_peer_presenting_another_members_certificate_is_refused_and_told_why() {
    let scratch = Scratch::new("peer");
    let dir = &scratch.0;
    let (ca_a, ca_a_file) = ca(dir, "a");
    let issue = |id| ca_a.issue_node(id, &loopback(), valid()).unwrap();
    let (files1, _) = node_files(dir, "node-1", &issue(1), &ca_a_file);
    let (files2, _) = node_files(dir, "node-2", &issue(2), &ca_a_file);
    let (files3, _) = node_files(dir, "node-3", &issue(3), &ca_a_file);
    let (addr, mut delivered) = tls_peer_port(files2).await;

    // Node 3's certificate, claiming to be node 1: refused with the reason, nothing delivered.
    let impostor = Connector::node(files3)
        .connect(addr, Some(2), EXCHANGE_BOUND)
        .await
        .unwrap();
    match greet(impostor, PeerFrame::Hello { from: 1, to: 2 }).await {
        Some(PeerFrame::Refused { reason }) => {
            assert!(reason.contains("does not name node-1.quorumkv"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(delivered.try_recv().is_err());

    // Node 1 with its own certificate is served (its ping is answered).
    let honest = Connector::node(files1)
        .connect(addr, Some(2), EXCHANGE_BOUND)
        .await
        .unwrap();
    assert_eq!(
        greet(honest, PeerFrame::Hello { from: 1, to: 2 }).await,
        Some(PeerFrame::Pong)
    );

    // A plaintext caller is told that the port needs TLS.
    let plain = Connector::plaintext()
        .connect(addr, Some(2), EXCHANGE_BOUND)
        .await
        .unwrap();
    match greet(plain, PeerFrame::Hello { from: 1, to: 2 }).await {
        Some(PeerFrame::Refused { reason }) => assert!(reason.contains("requires TLS"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Replaces a node's certificate and key files, stamping them a minute later so that the
/// change is seen whatever the file system's time resolution.
fn replace(dir: &Path, name: &str, issued: &Issued, when: std::time::SystemTime) {
    let (cert, key) = issued.write(dir, name).unwrap();
    for path in [cert, key] {
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.set_modified(when).unwrap();
    }
}

#[tokio::test]
async fn certificates_are_reloaded_for_new_connections_without_a_restart() {
    let scratch = Scratch::new("reload");
    let dir = &scratch.0;
    let (ca_a, ca_a_file) = ca(dir, "a");
    let (ca_b, ca_b_file) = ca(dir, "b");
    let (files, _) = node_files(
        dir,
        "node-1",
        &ca_a.issue_node(1, &loopback(), valid()).unwrap(),
        &ca_a_file,
    );
    let acceptor = Acceptor::tls(files.clone(), PortKind::Client);
    let trusts_b = client_connector(&ca_b_file, None);
    assert!(attempt(acceptor.clone(), &trusts_b, None)
        .await
        .client
        .is_err());

    // New files signed by CA b: the next connection uses them.
    let later = std::time::SystemTime::now() + Duration::from_secs(60);
    replace(
        dir,
        "node-1",
        &ca_b.issue_node(1, &loopback(), valid()).unwrap(),
        later,
    );
    assert_eq!(
        attempt(acceptor.clone(), &trusts_b, None).await.client,
        Ok(())
    );

    // Broken files: the previous certificates stay in use; an explicit reload (SIGHUP) says why.
    std::fs::write(dir.join("node-1.crt"), "not a certificate").unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("node-1.crt"))
        .unwrap();
    file.set_modified(later + Duration::from_secs(60)).unwrap();
    assert_eq!(
        attempt(acceptor.clone(), &trusts_b, None).await.client,
        Ok(())
    );
    let err = files.reload().unwrap_err().to_string();
    assert!(err.contains("node-1.crt"), "{err}");
}

/// A single TLS node: the client library works with the CA and fails clearly without it; the
/// admin port answers HTTPS only; the Redis port answers TLS only.
#[tokio::test]
async fn a_tls_node_serves_clients_admin_and_redis_and_refuses_plaintext() {
    let scratch = Scratch::new("node");
    let dir = &scratch.0;
    let (ca_a, ca_a_file) = ca(dir, "a");
    let (_, tls) = node_files(
        dir,
        "node-1",
        &ca_a.issue_node(1, &loopback(), valid()).unwrap(),
        &ca_a_file,
    );
    let config = ServerConfig {
        node_id: 1,
        members: vec![MemberConfig {
            id: 1,
            peer_addr: "127.0.0.1:0".parse().unwrap(),
            client_addr: "127.0.0.2:0".parse().unwrap(),
            zone: None,
        }],
        admin_addr: Some("127.0.0.1:0".parse().unwrap()),
        redis_addr: Some("127.0.0.3:0".parse().unwrap()),
        data_dir: dir.join("data"),
        tls,
        ..ServerConfig::default()
    };
    let server = Server::open(config).await.unwrap();
    let (client_addr, admin_addr, redis_addr) = (
        server.client_addr(),
        server.admin_addr().unwrap(),
        server.redis_addr().unwrap(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));

    let options = ClientOptions {
        connector: client_connector(&ca_a_file, None),
        operation_timeout: Duration::from_secs(20),
        ..ClientOptions::default()
    };
    let mut client = Client::new(vec![client_addr], options).unwrap();
    client.put(b"k", b"v").await.unwrap();
    assert_eq!(client.get(b"k").await.unwrap().unwrap().value, b"v");

    // Plaintext: refused at once with the reason, not retried until the deadline.
    let mut plain = Client::new(vec![client_addr], ClientOptions::default()).unwrap();
    let started = Instant::now();
    let err = plain.get(b"k").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Tls(reason) if reason.contains("serves TLS only")),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    // Admin: HTTPS answers, HTTP gets a 400 saying why.
    let mut https = client_connector(&ca_a_file, None)
        .connect(admin_addr, None, EXCHANGE_BOUND)
        .await
        .unwrap();
    assert!(http_get(&mut https).await.starts_with("HTTP/1.1 200"));
    let mut http = Connector::plaintext()
        .connect(admin_addr, None, EXCHANGE_BOUND)
        .await
        .unwrap();
    let answer = http_get(&mut http).await;
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("HTTPS only"),
        "{answer}"
    );

    // Redis: PING over TLS; plaintext gets an error reply saying why.
    let mut redis = client_connector(&ca_a_file, None)
        .connect(redis_addr, None, EXCHANGE_BOUND)
        .await
        .unwrap();
    assert_eq!(redis_ping(&mut redis).await, "+PONG\r\n");
    let mut plain_redis = Connector::plaintext()
        .connect(redis_addr, None, EXCHANGE_BOUND)
        .await
        .unwrap();
    let answer = redis_ping(&mut plain_redis).await;
    assert!(
        answer.starts_with("-ERR this port serves TLS only"),
        "{answer}"
    );

    let _ = stop.send(());
    timeout(EXCHANGE_BOUND, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

async fn http_get(stream: &mut Stream) -> String {
    let request = "GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    let mut answer = Vec::new();
    let _ = timeout(EXCHANGE_BOUND, stream.read_to_end(&mut answer))
        .await
        .expect("admin hung");
    String::from_utf8_lossy(&answer).into_owned()
}

async fn redis_ping(stream: &mut Stream) -> String {
    stream.write_all(b"*1\r\n$4\r\nPING\r\n").await.unwrap();
    stream.flush().await.unwrap();
    let mut answer = vec![0u8; 256];
    let n = timeout(EXCHANGE_BOUND, stream.read(&mut answer))
        .await
        .expect("redis hung")
        .unwrap_or(0);
    String::from_utf8_lossy(&answer[..n]).into_owned()
}
