//! Placement figures: balance (replicas per node) and movement when one node joins, for
//! N = 3..=10 nodes with the default configuration. Pure computation, so the figures are exact
//! and identical on every run; averaged over 20 node-id draws.
use node::placement::{place, NodeInfo, PlacementConfig};

fn node_ids(draw: u64, count: usize) -> Vec<NodeInfo> {
    (0..count as u64)
        .map(|i| NodeInfo {
            id: node::placement::stable_hash(&[draw.to_le_bytes(), i.to_le_bytes()].concat()),
            zone: None,
        })
        .collect()
}

fn main() {
    let config = PlacementConfig::default();
    let draws = 20u64;
    println!(
        "placement: shards={} replication_factor={} vnodes_per_node={} load_factor={} draws={draws}",
        config.shards, config.replication_factor, config.vnodes_per_node, config.load_factor
    );
    println!(
        "nodes  mean_load  min_load  max_load  capacity  join_moved  ideal_moved  moved/ideal"
    );
    for n in 3..=10usize {
        let (mut min_load, mut max_load, mut moved_sum) = (usize::MAX, 0, 0usize);
        for draw in 0..draws {
            let with_new = node_ids(draw, n + 1);
            let before = place(&config, &with_new[..n]).expect("valid placement");
            let after = place(&config, &with_new).expect("valid placement");
            let load = before.load();
            min_load = min_load.min(*load.values().min().unwrap_or(&0));
            max_load = max_load.max(*load.values().max().unwrap_or(&0));
            moved_sum += after.replicas_moved_from(&before);
        }
        let total = config.shards as usize * config.replication_factor;
        let ideal = total as f64 / (n + 1) as f64;
        let moved = moved_sum as f64 / draws as f64;
        println!(
            "{n:>5}  {:>9.1}  {min_load:>8}  {max_load:>8}  {:>8}  {moved:>10.1}  {ideal:>11.1}  {:>11.2}",
            total as f64 / n as f64,
            config.capacity_per_node(n),
            moved / ideal
        );
    }
}
