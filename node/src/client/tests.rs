//! The client against a scripted in-process fake cluster on loopback: routing by shard,
//! `WrongNode` and `Redirect` handling, per-shard sessions, retries with the same (client id,
//! seq), map refreshes, scan fan-out and admin redirects. The fake answers from one shared
//! state, so what each node received can be asserted afterwards.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};

use super::protocol::{ClientFrame, ServerFrame};
use super::*;
use crate::kv::ScanItem;
use crate::meta::{Member, MemberState};
use crate::placement::{shard_for_key, PlacementConfig, ShardMap};
use crate::transport::frame::{read_frame, write_frame};

const FRAME_BYTES: usize = 1 << 20;

#[derive(Default)]
struct Fake {
    addrs: Vec<SocketAddr>,
    shards: u32,
    /// Shard count that `ClusterInfo` reports (a wrong one makes the client's routing wrong).
    reported_shards: u32,
    epoch: u64,
    /// Targets `ClusterInfo` reports; `hosts` are who really holds each shard.
    targets: Vec<Vec<NodeId>>,
    hosts: Vec<Vec<NodeId>>,
    leaders: Vec<NodeId>,
    meta_leader: NodeId,
    /// The metadata leader `ClusterInfo` names (None: unknown to the node asked).
    meta_leader_hint: Option<NodeId>,
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    /// (shard, client id) -> (last seq, its result).
    sessions: BTreeMap<(ShardId, u64), (u64, OpResult)>,
    /// Apply the next this many writes but answer `Unknown`.
    unknown_writes: u32,
    /// Every request received: (node, request).
    log: Vec<(NodeId, ClientRequest)>,
}

impl Fake {
    fn addr(&self, id: NodeId) -> SocketAddr {
        self.addrs[id as usize - 1]
    }

    fn view(&self, node_id: NodeId) -> ClusterView {
        let members = (1..=self.addrs.len() as NodeId)
            .map(|id| Member {
                id,
                peer_addr: self.addr(id),
                client_addr: self.addr(id),
                zone: None,
                state: MemberState::Active,
            })
            .collect();
        let replicas = (0..self.reported_shards as usize)
            .map(|s| self.targets.get(s).cloned().unwrap_or_default())
            .collect();
        ClusterView {
            node_id,
            initialized: true,
            epoch: self.epoch,
            placement: PlacementConfig {
                shards: self.reported_shards,
                ..PlacementConfig::default()
            },
            members,
            shard_map: ShardMap { replicas },
            meta_leader: self.meta_leader_hint,
            groups: Vec::new(),
        }
    }

    fn handle(&mut self, node: NodeId, request: ClientRequest) -> ClientResponse {
        self.log.push((node, request.clone()));
        match request {
            ClientRequest::ClusterInfo => ClientResponse::Cluster(self.view(node)),
            ClientRequest::Admin(_) if node != self.meta_leader => ClientResponse::Redirect {
                leader_id: Some(self.meta_leader),
                leader_addr: None,
            },
            ClientRequest::Admin(MetaCommand::Leave(1)) => {
                ClientResponse::Admin(MetaResult::Rejected {
                    reason: "too few nodes".into(),
                })
            }
            ClientRequest::Admin(_) => {
                ClientResponse::Admin(MetaResult::Applied { epoch: self.epoch })
            }
            ClientRequest::Execute { shard, command } => self.execute(node, shard, command),
            ClientRequest::Status
            | ClientRequest::Backup(_)
            | ClientRequest::Authenticate(_)
            | ClientRequest::User(_) => ClientResponse::Refused(RefusedReason::NotReady),
        }
    }

    fn execute(&mut self, node: NodeId, shard: ShardId, command: Command) -> ClientResponse {
        let bad_shard = ClientResponse::Refused(RefusedReason::BadShard {
            shard,
            shards: self.shards,
        });
        if shard >= self.shards {
            return bad_shard;
        }
        if command
            .op
            .key()
            .is_some_and(|k| shard_for_key(k, self.shards) != shard)
        {
            return bad_shard;
        }
        if !self.hosts[shard as usize].contains(&node) {
            let replicas = self.hosts[shard as usize]
                .iter()
                .map(|&id| self.addr(id))
                .collect();
            return ClientResponse::WrongNode {
                shard,
                epoch: self.epoch,
                replicas,
            };
        }
        let leader = self.leaders[shard as usize];
        if node != leader {
            return ClientResponse::Redirect {
                leader_id: Some(leader),
                leader_addr: Some(self.addr(leader)),
            };
        }
        if command.op.is_read() {
            return ClientResponse::Done(self.read(shard, &command.op));
        }
        let session = (shard, command.client_id);
        let result = match self.sessions.get(&session).cloned() {
            _ if command.seq == 1 => self.apply(session, 1, &command.op),
            None => OpResult::SessionExpired,
            Some((last, result)) if last == command.seq => result,
            Some((last, _)) if command.seq < last => OpResult::Stale { last_seq: last },
            Some(_) => self.apply(session, command.seq, &command.op),
        };
        if self.unknown_writes > 0 {
            self.unknown_writes -= 1;
            return ClientResponse::Unknown {
                reason: "leadership lost".into(),
            };
        }
        ClientResponse::Done(result)
    }

    fn apply(&mut self, session: (ShardId, u64), seq: u64, op: &Operation) -> OpResult {
        let result = match op {
            Operation::OpenSession => OpResult::SessionOpened,
            Operation::Put { key, value } => {
                self.data.insert(key.clone(), value.clone());
                OpResult::Written { version: seq }
            }
            other => panic!("the fake does not apply {other:?}"),
        };
        self.sessions.insert(session, (seq, result.clone()));
        result
    }

    fn read(&self, shard: ShardId, op: &Operation) -> OpResult {
        let in_shard = |k: &Vec<u8>| shard_for_key(k, self.shards) == shard;
        match op {
            Operation::Get { key } => OpResult::Value(self.data.get(key).map(|v| Versioned {
                value: v.clone(),
                version: 1,
            })),
            Operation::Scan {
                range: KeyRange::Prefix(prefix),
                limit,
            } => {
                let all: Vec<ScanItem> = self
                    .data
                    .iter()
                    .filter(|(k, _)| k.starts_with(prefix) && in_shard(k))
                    .map(|(k, v)| ScanItem {
                        key: k.clone(),
                        value: v.clone(),
                        version: 1,
                    })
                    .collect();
                let more = all.len() > *limit as usize;
                let items = all.into_iter().take(*limit as usize).collect();
                OpResult::Scan { items, more }
            }
            other => panic!("the fake does not read {other:?}"),
        }
    }

    /// The writes node `node` received for `shard`: (client id, seq, is OpenSession).
    fn writes(&self, shard: ShardId) -> Vec<(NodeId, u64, u64, bool)> {
        self.log
            .iter()
            .filter_map(|(node, r)| match r {
                ClientRequest::Execute { shard: s, command }
                    if *s == shard && !command.op.is_read() =>
                {
                    let open = command.op == Operation::OpenSession;
                    Some((*node, command.client_id, command.seq, open))
                }
                _ => None,
            })
            .collect()
    }

    fn requests_to(&self, node: NodeId) -> usize {
        self.log.iter().filter(|(n, _)| *n == node).count()
    }

    fn cluster_infos(&self) -> usize {
        self.log
            .iter()
            .filter(|(_, r)| *r == ClientRequest::ClusterInfo)
            .count()
    }
}

/// `nodes` fake nodes, `shards` shards; every shard hosted and led by node 1 until changed.
async fn fake_cluster(nodes: usize, shards: u32) -> Arc<Mutex<Fake>> {
    let mut listeners = Vec::new();
    for _ in 0..nodes {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
    }
    let fake = Fake {
        addrs: listeners
            .iter()
            .map(|l| l.local_addr().expect("addr"))
            .collect(),
        shards,
        reported_shards: shards,
        epoch: 1,
        targets: vec![vec![1]; shards as usize],
        hosts: vec![vec![1]; shards as usize],
        leaders: vec![1; shards as usize],
        meta_leader: 1,
        ..Fake::default()
    };
    let fake = Arc::new(Mutex::new(fake));
    for (i, listener) in listeners.into_iter().enumerate() {
        let fake = fake.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, i as NodeId + 1, fake.clone()));
            }
        });
    }
    fake
}

async fn serve(stream: TcpStream, node: NodeId, fake: Arc<Mutex<Fake>>) {
    let (read_half, mut write_half) = tokio::io::split(stream);
    let mut reader = BufReader::new(read_half);
    while let Ok(Some(frame)) = read_frame::<_, ClientFrame>(&mut reader, FRAME_BYTES).await {
        let response = fake.lock().expect("fake lock").handle(node, frame.request);
        let answer = ServerFrame {
            id: frame.id,
            response,
        };
        if write_frame(&mut write_half, &answer, FRAME_BYTES)
            .await
            .is_err()
        {
            return;
        }
    }
}

fn client(fake: &Arc<Mutex<Fake>>, endpoint: NodeId) -> Client {
    let options = ClientOptions {
        operation_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_millis(500),
        retry_backoff_min: Duration::from_millis(1),
        retry_backoff_max: Duration::from_millis(5),
        rng_seed: Some(7),
        ..ClientOptions::default()
    };
    let endpoint = fake.lock().expect("fake lock").addr(endpoint);
    Client::new(vec![endpoint], options).expect("client")
}

/// A key of `shard` among `shards`.
fn key_in(shard: ShardId, shards: u32, tag: &str) -> Vec<u8> {
    (0..)
        .map(|i| format!("{tag}-{i}").into_bytes())
        .find(|k| shard_for_key(k, shards) == shard)
        .expect("some key hashes to every shard")
}

#[tokio::test]
async fn writes_go_to_their_shard_leader_each_shard_with_its_own_session() {
    let fake = fake_cluster(3, 4).await;
    {
        // The map says node 1 holds everything; really shards 2 and 3 live on nodes 2 and 3,
        // led by node 3: node 1 answers WrongNode, node 2 redirects to 3.
        let mut f = fake.lock().unwrap();
        for shard in [2, 3] {
            f.hosts[shard] = vec![2, 3];
            f.leaders[shard] = 3;
        }
    }
    let mut c = client(&fake, 1);
    for shard in 0..4 {
        let key = key_in(shard, 4, "w");
        c.put(&key, b"v1").await.unwrap();
        c.put(&key, b"v2").await.unwrap();
    }
    let f = fake.lock().unwrap();
    assert_eq!(f.cluster_infos(), 1, "the map is fetched once, lazily");
    for shard in 0..4 {
        let landed: Vec<(u64, bool)> = f
            .writes(shard)
            .iter()
            .filter(|(node, ..)| *node == f.leaders[shard as usize])
            .map(|(_, _, seq, open)| (*seq, *open))
            .collect();
        assert_eq!(landed, [(1, true), (2, false), (3, false)], "shard {shard}");
    }
    // Every shard's session uses the client's id (independent tables per shard).
    assert!(f.writes(3).iter().all(|(_, id, ..)| *id == c.client_id()));
    // The leader cache: after the first redirect, shard 3's writes went straight to node 3.
    let misses_at_2 = f.writes(3).iter().filter(|(node, ..)| *node == 2).count();
    assert!(misses_at_2 <= 1, "node 2 was asked {misses_at_2} times");
    assert_eq!(f.data.len(), 4);
}

#[tokio::test]
async fn a_write_answered_unknown_is_retried_with_the_same_client_id_and_seq() {
    let fake = fake_cluster(1, 2).await;
    let mut c = client(&fake, 1);
    let key = key_in(1, 2, "u");
    c.put(&key, b"a").await.unwrap();
    fake.lock().unwrap().unknown_writes = 2;
    assert_eq!(c.put(&key, b"b").await.unwrap(), 3);
    let f = fake.lock().unwrap();
    let writes = f.writes(1);
    let retried: Vec<_> = writes.iter().filter(|(_, _, seq, _)| *seq == 3).collect();
    assert_eq!(retried.len(), 3, "{writes:?}");
    assert!(retried.iter().all(|w| w.1 == c.client_id()));
    assert_eq!(f.data.get(&key).map(Vec::as_slice), Some(&b"b"[..]));
}

#[tokio::test]
async fn an_expired_session_is_reopened_under_a_new_id_in_that_shard_only() {
    let fake = fake_cluster(1, 2).await;
    let mut c = client(&fake, 1);
    let (k0, k1) = (key_in(0, 2, "e"), key_in(1, 2, "e"));
    c.put(&k0, b"a").await.unwrap();
    c.put(&k1, b"a").await.unwrap();
    fake.lock().unwrap().sessions.remove(&(1, c.client_id()));
    c.put(&k1, b"b").await.unwrap();
    c.put(&k0, b"b").await.unwrap();
    let f = fake.lock().unwrap();
    let ids1: Vec<u64> = f.writes(1).iter().map(|w| w.1).collect();
    assert_eq!(ids1[..3], [c.client_id(); 3], "open, put, expired put");
    assert!(ids1[3..]
        .iter()
        .all(|id| *id != c.client_id() && *id == ids1[3]));
    let opened: Vec<u64> = f.writes(1)[3..].iter().map(|w| w.2).collect();
    assert_eq!(
        opened,
        [1, 2],
        "the new session is opened before the put is retried"
    );
    assert!(f.writes(0).iter().all(|w| w.1 == c.client_id()));
}

#[tokio::test]
async fn a_newer_epoch_in_wrong_node_refreshes_the_map() {
    let fake = fake_cluster(2, 2).await;
    let mut c = client(&fake, 1);
    let key = key_in(1, 2, "n");
    c.put(&key, b"a").await.unwrap();
    {
        // Shard 1 moved to node 2 at epoch 2.
        let mut f = fake.lock().unwrap();
        f.epoch = 2;
        f.hosts[1] = vec![2];
        f.leaders[1] = 2;
        f.targets[1] = vec![2];
    }
    c.put(&key, b"b").await.unwrap();
    assert_eq!(c.get(&key).await.unwrap().unwrap().value, b"b");
    let f = fake.lock().unwrap();
    assert_eq!(f.cluster_infos(), 2);
    assert_eq!(c.map_epoch(), 2);
}

#[tokio::test]
async fn bad_shard_refreshes_the_map_once_then_fails_definitely() {
    let fake = fake_cluster(1, 4).await;
    let key = key_in(3, 4, "b");
    assert_ne!(shard_for_key(&key, 2), 3);
    // The cluster first reports 2 shards, then the right 4: one refresh fixes routing.
    fake.lock().unwrap().reported_shards = 2;
    let mut c = client(&fake, 1);
    c.ensure_map(Instant::now() + Duration::from_secs(1))
        .await
        .unwrap();
    fake.lock().unwrap().reported_shards = 4;
    c.put(&key, b"a").await.unwrap();
    assert_eq!(fake.lock().unwrap().cluster_infos(), 2);
    // A cluster that keeps reporting a wrong count: refreshed once, then a definite failure.
    fake.lock().unwrap().reported_shards = 2;
    let mut c = client(&fake, 1);
    let err = c.get(&key).await.unwrap_err();
    assert!(matches!(err, ClientError::Failed { .. }), "{err}");
    // Its first map, the one BadShard refresh, and the refresh after the round in which the
    // only node had been tried.
    assert_eq!(fake.lock().unwrap().cluster_infos(), 5);
}

#[tokio::test]
async fn scans_fan_out_and_merge_and_get_many_keeps_the_input_order() {
    let fake = fake_cluster(2, 4).await;
    {
        let mut f = fake.lock().unwrap();
        f.hosts[1] = vec![2];
        f.leaders[1] = 2;
        f.targets[1] = vec![2];
    }
    let mut c = client(&fake, 1);
    let keys: Vec<Vec<u8>> = (0..20).map(|i| format!("s/{i:02}").into_bytes()).collect();
    for key in &keys {
        c.put(key, key).await.unwrap();
    }
    let (items, more) = c.scan(KeyRange::Prefix(b"s/".to_vec()), 100).await.unwrap();
    assert!(!more);
    assert_eq!(
        items.iter().map(|i| i.key.clone()).collect::<Vec<_>>(),
        keys
    );
    let (items, more) = c.scan(KeyRange::Prefix(b"s/".to_vec()), 5).await.unwrap();
    assert!(more);
    assert_eq!(
        items.iter().map(|i| i.key.clone()).collect::<Vec<_>>(),
        keys[..5]
    );
    let wanted = vec![keys[7].clone(), b"absent".to_vec(), keys[0].clone()];
    let found = c.get_many(&wanted).await.unwrap();
    let values: Vec<Option<Vec<u8>>> = found.into_iter().map(|v| v.map(|v| v.value)).collect();
    assert_eq!(values, [Some(keys[7].clone()), None, Some(keys[0].clone())]);
}

#[tokio::test]
async fn admin_follows_the_redirect_to_the_metadata_leader() {
    let fake = fake_cluster(3, 1).await;
    fake.lock().unwrap().meta_leader = 3;
    let mut c = client(&fake, 1);
    assert_eq!(
        c.admin(MetaCommand::Leave(2)).await.unwrap(),
        MetaResult::Applied { epoch: 1 }
    );
    assert_eq!(c.leader_hint(), Some(fake.lock().unwrap().addr(3)));
    assert!(matches!(
        c.admin(MetaCommand::Leave(1)).await.unwrap(),
        MetaResult::Rejected { .. }
    ));
    let f = fake.lock().unwrap();
    // One map fetch from node 1, whose redirect names only the leader's id (resolved through
    // the map); after that the client goes to node 3 directly.
    assert_eq!(f.cluster_infos(), 1);
    assert_eq!((f.requests_to(1), f.requests_to(3)), (2, 2));
}

#[tokio::test]
async fn cluster_status_asks_every_member_once() {
    let fake = fake_cluster(3, 2).await;
    let mut c = client(&fake, 2);
    let status = c.cluster_status().await.unwrap();
    let reachable: Vec<Option<bool>> = status.members.iter().map(|m| m.reachable).collect();
    assert_eq!(reachable, [Some(true); 3]);
    assert_eq!(status.groups.len(), 3, "the metadata group and two shards");
    let f = fake.lock().unwrap();
    assert_eq!(f.cluster_infos(), 3);
    assert_eq!(
        (f.requests_to(1), f.requests_to(2), f.requests_to(3)),
        (1, 1, 1)
    );
}
