//! A RESP workload in simulation: three clients speak the Redis protocol (INCR, APPEND, GET over
//! simulated TCP) to the nodes' Redis ports while the transport drops, duplicates, delays and
//! reorders messages and a node is killed and restarted; the histories go through the checker's
//! counter and append models (`checker::models`). A lost, doubled or reordered INCR/APPEND (for
//! instance a retried write applied twice) fails the check.
#![cfg(madsim)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use checker::models::{check, AppendOp, Appends, Counter, CounterOp, ModelVerdict, Timed};
use madsim::runtime::{Handle, Runtime};
use node::config::{MemberConfig, ServerConfig};
use node::server::Server;
use node::storage::{CrashDisk, CrashMode};
use node::transport::{FaultPlan, TransportFaults};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NODES: u64 = 3;
const CLIENTS: u64 = 3;
const OPS_PER_CLIENT: u64 = 24;
const REDIS_PORT: u16 = 6379;
/// Longest wait for one reply before the connection is given up (outcome unknown).
const REPLY_TIMEOUT: Duration = Duration::from_secs(8);
const SEARCH_CONFIGURATIONS_MAX: usize = 2_000_000;

fn member(id: u64) -> MemberConfig {
    MemberConfig {
        id,
        peer_addr: SocketAddr::from(([10, 0, 0, id as u8], 7000)),
        client_addr: SocketAddr::from(([10, 0, 0, id as u8], 7001)),
        zone: None,
    }
}

fn redis_addr(id: u64) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, id as u8], REDIS_PORT))
}

/// Both histories, with one event counter (invocations and completions in real-time order).
#[derive(Default)]
struct Histories {
    next_seq: u64,
    counter: Vec<Timed<CounterOp>>,
    appends: Vec<Timed<AppendOp>>,
}

impl Histories {
    fn tick(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }
}

/// A reply as the workload needs it.
#[derive(Debug)]
enum Answer {
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    /// An error reply: `TRYAGAIN` means the write may have been applied.
    Error(String),
}

/// One RESP connection (a minimal client: integer, bulk and error replies).
struct RespClient {
    stream: TcpStream,
    input: Vec<u8>,
}

impl RespClient {
    async fn connect(addr: SocketAddr) -> Option<RespClient> {
        let stream = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
        Some(RespClient {
            stream,
            input: Vec::new(),
        })
    }

    async fn call(&mut self, args: &[&[u8]]) -> Option<Answer> {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend(b"\r\n");
        }
        self.stream.write_all(&request).await.ok()?;
        self.stream.flush().await.ok()?;
        tokio::time::timeout(REPLY_TIMEOUT, self.reply())
            .await
            .ok()?
    }

    async fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(end) = self.input.windows(2).position(|w| w == b"\r\n") {
                let line = self.input[..end].to_vec();
                self.input.drain(..end + 2);
                return Some(line);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Option<()> {
        let mut chunk = [0u8; 4096];
        let read = self.stream.read(&mut chunk).await.ok()?;
        (read > 0).then(|| self.input.extend_from_slice(&chunk[..read]))
    }

    async fn reply(&mut self) -> Option<Answer> {
        let line = self.line().await?;
        let text = String::from_utf8_lossy(&line[1..]).to_string();
        match line.first()? {
            b':' => text.parse().ok().map(Answer::Integer),
            b'-' => Some(Answer::Error(text)),
            b'$' => {
                let len: i64 = text.parse().ok()?;
                if len < 0 {
                    return Some(Answer::Bulk(None));
                }
                let len = len as usize;
                while self.input.len() < len + 2 {
                    self.fill().await?;
                }
                let value = self.input[..len].to_vec();
                self.input.drain(..len + 2);
                Some(Answer::Bulk(Some(value)))
            }
            _ => None,
        }
    }
}

/// Runs one client: INCR, APPEND and GETs of both keys, through node `first` (then others).
async fn client(id: u64, histories: Arc<Mutex<Histories>>) {
    let mut node = id;
    let mut connection: Option<RespClient> = None;
    for i in 0..OPS_PER_CLIENT {
        if connection.is_none() {
            node = node % NODES + 1;
            connection = RespClient::connect(redis_addr(node)).await;
            if connection.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        let Some(conn) = connection.as_mut() else {
            continue;
        };
        // Spread the operations over the crash window below.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let kind = i % 4;
        let suffix = format!("{id}.{i},");
        let args: Vec<&[u8]> = match kind {
            0 => vec![b"INCR", b"ctr"],
            1 => vec![b"APPEND", b"log", suffix.as_bytes()],
            2 => vec![b"GET", b"ctr"],
            _ => vec![b"GET", b"log"],
        };
        let call = histories.lock().unwrap().tick();
        let answer = conn.call(&args).await;
        let mut h = histories.lock().unwrap();
        let ret = h.tick();
        let known = match &answer {
            Some(Answer::Error(e)) if e.starts_with("TRYAGAIN") => None,
            Some(Answer::Error(_)) => continue, // definitely not applied
            Some(_) => Some(ret),
            None => None,
        };
        if answer.is_none() {
            connection = None;
        }
        let is_read = kind >= 2;
        if is_read && known.is_none() {
            continue; // a read with no answer changed nothing
        }
        match (kind, answer) {
            (0, Some(Answer::Integer(n))) => h.counter.push(Timed {
                call,
                ret: known,
                op: CounterOp::Increment {
                    delta: 1,
                    result: Some(n),
                },
            }),
            (0, _) => h.counter.push(Timed {
                call,
                ret: None,
                op: CounterOp::Increment {
                    delta: 1,
                    result: None,
                },
            }),
            (1, Some(Answer::Integer(n))) => h.appends.push(Timed {
                call,
                ret: known,
                op: AppendOp::Append {
                    suffix: suffix.into_bytes(),
                    len_after: Some(n as u64),
                },
            }),
            (1, _) => h.appends.push(Timed {
                call,
                ret: None,
                op: AppendOp::Append {
                    suffix: suffix.into_bytes(),
                    len_after: None,
                },
            }),
            (2, Some(Answer::Bulk(value))) => {
                let value = value.map_or(Ok(0), |v| String::from_utf8_lossy(&v).parse());
                let value = value.expect("the counter holds a decimal integer");
                h.counter.push(Timed {
                    call,
                    ret: known,
                    op: CounterOp::Read(value),
                });
            }
            (_, Some(Answer::Bulk(value))) => h.appends.push(Timed {
                call,
                ret: known,
                op: AppendOp::Read(value.unwrap_or_default()),
            }),
            (_, other) => panic!("client {id}: unexpected answer {other:?} to {args:?}"),
        }
    }
}

fn run_seed(seed: u64) {
    let runtime = Runtime::with_seed_and_config(seed, madsim::Config::default());
    let histories = runtime.block_on(async move {
        let handle = Handle::current();
        let members: Vec<MemberConfig> = (1..=NODES).map(member).collect();
        let faults = TransportFaults::new();
        let disks: Vec<CrashDisk> = (1..=NODES).map(CrashDisk::new).collect();
        let mut nodes = Vec::new();
        for id in 1..=NODES {
            let config = ServerConfig {
                node_id: id,
                members: members.clone(),
                seed,
                redis_addr: Some(redis_addr(id)),
                cluster: node::config::ClusterConfig {
                    shards: 4,
                    ..Default::default()
                },
                faults: Some(faults.clone()),
                ..ServerConfig::default()
            };
            let disk = disks[(id - 1) as usize].clone();
            let node = handle
                .create_node()
                .name(format!("n{id}"))
                .ip(member(id).client_addr.ip())
                .init(move || {
                    let (config, disk) = (config.clone(), disk.clone());
                    async move {
                        let server = Server::new(config, Arc::new(disk))
                            .await
                            .expect("server starts");
                        server
                            .run(std::future::pending())
                            .await
                            .expect("server runs");
                    }
                })
                .build();
            nodes.push(node);
        }
        faults.set(FaultPlan {
            drop_probability: 0.05,
            duplicate_probability: 0.05,
            delay_probability: 0.2,
            delay_ms_max: 30,
            reorder_probability: 0.05,
            ..FaultPlan::default()
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        let histories = Arc::new(Mutex::new(Histories::default()));
        let mut tasks = Vec::new();
        for c in 1..=CLIENTS {
            let histories = histories.clone();
            let node = handle
                .create_node()
                .name(format!("client{c}"))
                .ip(format!("10.0.1.{c}").parse().unwrap())
                .build();
            tasks.push(node.spawn(client(c, histories)));
        }
        // Crash a node (torn disk) in the middle and bring it back.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let victim = (seed % NODES) as usize;
        handle.kill(nodes[victim].id());
        disks[victim].crash(CrashMode::Torn);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        handle.restart(nodes[victim].id());
        for task in tasks {
            task.await.expect("client task");
        }
        Arc::try_unwrap(histories)
            .ok()
            .expect("clients done")
            .into_inner()
            .unwrap()
    });
    let completed = |ret: &Option<u64>| ret.is_some();
    let counter_ok = histories
        .counter
        .iter()
        .filter(|o| completed(&o.ret))
        .count();
    let appends_ok = histories
        .appends
        .iter()
        .filter(|o| completed(&o.ret))
        .count();
    eprintln!(
        "seed {seed}: {} counter ops ({counter_ok} ok), {} append ops ({appends_ok} ok)",
        histories.counter.len(),
        histories.appends.len()
    );
    assert!(
        counter_ok > 0 && appends_ok > 0,
        "seed {seed}: no operation completed"
    );
    let counter = check(&Counter, 0, &histories.counter, SEARCH_CONFIGURATIONS_MAX);
    assert_eq!(
        counter,
        ModelVerdict::Linearizable,
        "seed {seed}: INCR history {:?}",
        histories.counter
    );
    let appends = check(
        &Appends,
        Vec::new(),
        &histories.appends,
        SEARCH_CONFIGURATIONS_MAX,
    );
    assert_eq!(
        appends,
        ModelVerdict::Linearizable,
        "seed {seed}: APPEND history {:?}",
        histories.appends
    );
}

#[test]
fn resp_incr_and_append_histories_are_linearizable_under_faults() {
    for seed in 1..=4 {
        run_seed(seed);
    }
}
