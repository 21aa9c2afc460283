//! The unchanged server and client inside madsim: a smoke test that the runtime works simulated
//! (the simulator crate builds the real campaigns on the same API).
//! Run with `RUSTFLAGS="--cfg madsim" cargo test -p node --test sim_smoke`.
#![cfg(madsim)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use madsim::runtime::Handle;
use node::client::{Client, ClientOptions};
use node::config::{MemberConfig, ServerConfig};
use node::raft::Role;
use node::server::Server;
use node::storage::{CrashDisk, CrashMode};
use node::transport::{FaultPlan, TransportFaults};

fn member(id: u64) -> MemberConfig {
    MemberConfig {
        id,
        peer_addr: SocketAddr::from(([10, 0, 0, id as u8], 7000)),
        client_addr: SocketAddr::from(([10, 0, 0, id as u8], 7001)),
        zone: None,
    }
}

#[madsim::test]
async fn simulated_cluster_survives_message_faults_and_a_leader_crash() {
    let handle = Handle::current();
    let members: Vec<MemberConfig> = (1..=3).map(member).collect();
    let faults = TransportFaults::new();
    let disks: Vec<CrashDisk> = (1..=3).map(CrashDisk::new).collect();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let config = ServerConfig {
            node_id: id,
            members: members.clone(),
            seed: 42,
            snapshot_interval_entries: 25,
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

    let endpoints: Vec<SocketAddr> = members.iter().map(|m| m.client_addr).collect();
    let client_node = handle
        .create_node()
        .name("client")
        .ip("10.0.0.100".parse().unwrap())
        .build();
    let handle2 = handle.clone();
    let node_ids: Vec<_> = nodes.iter().map(|n| n.id()).collect();
    client_node
        .spawn(async move {
            let options = ClientOptions {
                rng_seed: Some(1),
                operation_timeout: Duration::from_secs(30),
                ..ClientOptions::default()
            };
            let mut client = Client::new(endpoints.clone(), options).unwrap();
            for i in 0..60 {
                client
                    .put(format!("k{i}").as_bytes(), b"v")
                    .await
                    .expect("put");
            }
            // Crash the leader with a torn disk, then bring it back.
            let mut leader = None;
            for m in &members {
                if let Ok(s) = client.node_status(m.client_addr).await {
                    if s.role == Role::Leader {
                        leader = Some(s.node_id);
                    }
                }
            }
            let leader = leader.expect("a leader");
            handle2.kill(node_ids[(leader - 1) as usize]);
            disks[(leader - 1) as usize].crash(CrashMode::Torn);
            for i in 60..90 {
                client
                    .put(format!("k{i}").as_bytes(), b"v")
                    .await
                    .expect("put after crash");
            }
            handle2.restart(node_ids[(leader - 1) as usize]);
            for i in 0..90 {
                let got = client.get(format!("k{i}").as_bytes()).await.expect("get");
                assert_eq!(
                    got.map(|v| v.value),
                    Some(b"v".to_vec()),
                    "acknowledged k{i} lost"
                );
            }
            // The restarted node catches up.
            let mut caught_up = false;
            for _ in 0..100 {
                if let Ok(s) = client
                    .node_status(members[(leader - 1) as usize].client_addr)
                    .await
                {
                    if s.keys == 90 {
                        caught_up = true;
                        break;
                    }
                }
                madsim::time::sleep(Duration::from_millis(200)).await;
            }
            assert!(caught_up, "restarted node did not catch up");
        })
        .await
        .expect("client task");
}
