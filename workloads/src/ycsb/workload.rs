//! YCSB's core workloads A-F: which operations, in which proportions, over which keys.
//!
//! Invariant: the proportions of a workload add up to 1.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::keys::Distribution;

/// Longest scan of workload E (YCSB's `maxscanlength`); lengths are uniform in 1..=this.
pub const SCAN_LENGTH_MAX: u32 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Workload {
    A,
    B,
    C,
    D,
    E,
    F,
}

/// One operation kind of the core workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpKind {
    Read,
    Update,
    Insert,
    Scan,
    ReadModifyWrite,
}

impl OpKind {
    pub const ALL: [OpKind; 5] = [
        OpKind::Read,
        OpKind::Update,
        OpKind::Insert,
        OpKind::Scan,
        OpKind::ReadModifyWrite,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Update => "update",
            OpKind::Insert => "insert",
            OpKind::Scan => "scan",
            OpKind::ReadModifyWrite => "read-modify-write",
        }
    }
}

/// The mix of a workload: `(operation, proportion)` pairs and the request distribution.
#[derive(Clone, Debug, PartialEq)]
pub struct Mix {
    pub proportions: Vec<(OpKind, f64)>,
    pub distribution: Distribution,
}

impl Workload {
    pub const ALL: [Workload; 6] = [
        Workload::A,
        Workload::B,
        Workload::C,
        Workload::D,
        Workload::E,
        Workload::F,
    ];

    pub fn parse(text: &str) -> Option<Workload> {
        Workload::ALL
            .into_iter()
            .find(|w| w.letter().eq_ignore_ascii_case(text.trim()))
    }

    pub fn letter(self) -> &'static str {
        match self {
            Workload::A => "A",
            Workload::B => "B",
            Workload::C => "C",
            Workload::D => "D",
            Workload::E => "E",
            Workload::F => "F",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Workload::A => "update heavy: 50% read, 50% update, zipfian",
            Workload::B => "read mostly: 95% read, 5% update, zipfian",
            Workload::C => "read only: 100% read, zipfian",
            Workload::D => "read latest: 95% read, 5% insert, latest",
            Workload::E => "short ranges: 95% scan (1-100 keys), 5% insert, zipfian",
            Workload::F => "read-modify-write: 50% read, 50% read-modify-write, zipfian",
        }
    }

    pub fn mix(self) -> Mix {
        use OpKind::*;
        let (proportions, distribution) = match self {
            Workload::A => (vec![(Read, 0.5), (Update, 0.5)], Distribution::Zipfian),
            Workload::B => (vec![(Read, 0.95), (Update, 0.05)], Distribution::Zipfian),
            Workload::C => (vec![(Read, 1.0)], Distribution::Zipfian),
            Workload::D => (vec![(Read, 0.95), (Insert, 0.05)], Distribution::Latest),
            Workload::E => (vec![(Scan, 0.95), (Insert, 0.05)], Distribution::Zipfian),
            Workload::F => (
                vec![(Read, 0.5), (ReadModifyWrite, 0.5)],
                Distribution::Zipfian,
            ),
        };
        Mix {
            proportions,
            distribution,
        }
    }

    /// True when the workload inserts new records (its choosers must follow the inserts).
    pub fn inserts(self) -> bool {
        self.mix()
            .proportions
            .iter()
            .any(|(k, _)| *k == OpKind::Insert)
    }
}

impl Mix {
    /// Draws the next operation kind by the mix's proportions.
    pub fn next_kind(&self, rng: &mut impl Rng) -> OpKind {
        let mut u: f64 = rng.random();
        for &(kind, p) in &self.proportions {
            if u < p {
                return kind;
            }
            u -= p;
        }
        // Rounding left a sliver past the last proportion.
        self.proportions
            .last()
            .map(|(k, _)| *k)
            .unwrap_or(OpKind::Read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn proportions_add_up_and_parse_round_trips() {
        for w in Workload::ALL {
            let sum: f64 = w.mix().proportions.iter().map(|(_, p)| p).sum();
            assert!((sum - 1.0).abs() < 1e-9, "{w:?}");
            assert_eq!(Workload::parse(&w.letter().to_lowercase()), Some(w));
        }
        assert_eq!(Workload::parse("g"), None);
        assert!(Workload::D.inserts() && Workload::E.inserts() && !Workload::A.inserts());
    }

    #[test]
    fn drawn_kinds_follow_the_mix() {
        let mut rng = StdRng::seed_from_u64(5);
        let mix = Workload::B.mix();
        let n = 100_000;
        let reads = (0..n)
            .filter(|_| mix.next_kind(&mut rng) == OpKind::Read)
            .count();
        assert!((reads as f64 / n as f64 - 0.95).abs() < 0.01, "{reads}");
        assert!((0..1000).all(|_| Workload::C.mix().next_kind(&mut rng) == OpKind::Read));
    }
}
