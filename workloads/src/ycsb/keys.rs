//! YCSB's key choosers and key names, reimplemented from the YCSB paper and its documented
//! behaviour: uniform, zipfian (Gray et al.'s "Quickly generating billion-record synthetic
//! databases" method, constant 0.99), scrambled zipfian (the popular items spread over the key
//! space by hashing) and skewed-latest (the most recently inserted items are the most popular).
//!
//! Invariants: a chooser over `item_count` items returns numbers in `0..item_count`; skewed
//! latest returns numbers in `0..=latest`. Randomness comes only from the rng handed in.

use rand::Rng;

/// YCSB's default zipfian constant.
pub const ZIPFIAN_CONSTANT: f64 = 0.99;
/// The item count YCSB's scrambled zipfian draws from before hashing into the key space.
pub const SCRAMBLED_ITEM_COUNT: u64 = 10_000_000_000;
/// zeta(SCRAMBLED_ITEM_COUNT, 0.99), precomputed as YCSB does (summing 10^10 terms is slow).
pub const SCRAMBLED_ZETAN: f64 = 26.469_028_201_783_02;

const FNV_OFFSET_BASIS_64: u64 = 0xCBF2_9CE4_8422_2325;
const FNV_PRIME_64: u64 = 1_099_511_628_211;

/// YCSB's 64-bit FNV-1a hash of a number's eight bytes (low byte first), made non-negative.
pub fn fnv_hash64(value: u64) -> u64 {
    let mut hash = FNV_OFFSET_BASIS_64;
    let mut rest = value;
    for _ in 0..8 {
        hash ^= rest & 0xff;
        hash = hash.wrapping_mul(FNV_PRIME_64);
        rest >>= 8;
    }
    (hash as i64).unsigned_abs()
}

/// The key of record `number`: hashed as YCSB does when inserts are not ordered, so that
/// consecutive records (and a load's writers) do not land next to each other.
pub fn key_name(number: u64) -> String {
    format!("user{}", fnv_hash64(number))
}

/// zeta(n, theta) = sum over i in 1..=n of 1 / i^theta, continued from `zeta(from, theta)`.
fn zeta_from(from: u64, n: u64, theta: f64, zeta_of_from: f64) -> f64 {
    let mut sum = zeta_of_from;
    for i in from..n {
        sum += 1.0 / ((i + 1) as f64).powf(theta);
    }
    sum
}

/// Zipfian over `0..item_count`: item 0 is the most popular, item i's weight is 1/(i+1)^theta.
/// The item count can grow (skewed latest); zeta is then extended incrementally.
#[derive(Clone, Debug)]
pub struct Zipfian {
    item_count: u64,
    theta: f64,
    alpha: f64,
    zeta_n: f64,
    zeta_2: f64,
    eta: f64,
}

impl Zipfian {
    pub fn new(item_count: u64) -> Zipfian {
        let zeta_n = zeta_from(0, item_count, ZIPFIAN_CONSTANT, 0.0);
        Zipfian::with_zeta(item_count, ZIPFIAN_CONSTANT, zeta_n)
    }

    /// With a precomputed `zeta_n` for `item_count` items (YCSB's scrambled zipfian).
    pub fn with_zeta(item_count: u64, theta: f64, zeta_n: f64) -> Zipfian {
        assert!(item_count >= 1, "a zipfian needs at least one item");
        assert!(
            theta > 0.0 && theta < 1.0,
            "zipfian theta must be in (0, 1)"
        );
        let zeta_2 = zeta_from(0, 2, theta, 0.0);
        let mut z = Zipfian {
            item_count,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta_n,
            zeta_2,
            eta: 0.0,
        };
        z.eta = z.eta_for(item_count);
        z
    }

    fn eta_for(&self, item_count: u64) -> f64 {
        (1.0 - (2.0 / item_count as f64).powf(1.0 - self.theta)) / (1.0 - self.zeta_2 / self.zeta_n)
    }

    pub fn item_count(&self) -> u64 {
        self.item_count
    }

    /// Grows the item set to `item_count` (never shrinks: zeta is only extended).
    pub fn grow_to(&mut self, item_count: u64) {
        if item_count > self.item_count {
            self.zeta_n = zeta_from(self.item_count, item_count, self.theta, self.zeta_n);
            self.item_count = item_count;
            self.eta = self.eta_for(item_count);
        }
    }

    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zeta_n;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.item_count - 1);
        }
        let drawn =
            (self.item_count as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        drawn.min(self.item_count - 1)
    }
}

/// Zipfian popularity, but the popular items are scattered over `0..item_count` by a hash
/// (YCSB's default request distribution): a zipfian over 10^10 items, hashed, modulo the count.
#[derive(Clone, Debug)]
pub struct ScrambledZipfian {
    item_count: u64,
    zipfian: Zipfian,
}

impl ScrambledZipfian {
    pub fn new(item_count: u64) -> ScrambledZipfian {
        assert!(item_count >= 1, "a chooser needs at least one item");
        ScrambledZipfian {
            item_count,
            zipfian: Zipfian::with_zeta(SCRAMBLED_ITEM_COUNT, ZIPFIAN_CONSTANT, SCRAMBLED_ZETAN),
        }
    }

    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        fnv_hash64(self.zipfian.next(rng)) % self.item_count
    }
}

/// Skewed towards the newest record: `latest - zipfian(latest + 1)`.
#[derive(Clone, Debug)]
pub struct SkewedLatest {
    zipfian: Zipfian,
}

impl SkewedLatest {
    pub fn new(latest: u64) -> SkewedLatest {
        SkewedLatest {
            zipfian: Zipfian::new(latest + 1),
        }
    }

    /// A record number in `0..=latest`; `latest` (the newest insert) is the most popular.
    pub fn next(&mut self, latest: u64, rng: &mut impl Rng) -> u64 {
        self.zipfian.grow_to(latest + 1);
        let back = self.zipfian.next(rng).min(latest);
        latest - back
    }
}

/// Which records a workload's operations touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Distribution {
    Uniform,
    Zipfian,
    Latest,
}

/// A per-client key chooser of one `Distribution`.
#[derive(Clone, Debug)]
pub enum KeyChooser {
    Uniform,
    Zipfian(ScrambledZipfian),
    Latest(SkewedLatest),
}

impl KeyChooser {
    /// `key_space`: how many record numbers the chooser spreads over (records plus room for
    /// inserts); `latest`: the newest record at the start.
    pub fn new(distribution: Distribution, key_space: u64, latest: u64) -> KeyChooser {
        match distribution {
            Distribution::Uniform => KeyChooser::Uniform,
            Distribution::Zipfian => KeyChooser::Zipfian(ScrambledZipfian::new(key_space.max(1))),
            Distribution::Latest => KeyChooser::Latest(SkewedLatest::new(latest)),
        }
    }

    /// A record number in `0..=latest`, i.e. one that exists (or whose insert was started).
    pub fn next(&mut self, latest: u64, rng: &mut impl Rng) -> u64 {
        match self {
            KeyChooser::Uniform => rng.random_range(0..=latest),
            // YCSB draws again while the number is past the last insert; bounded here.
            KeyChooser::Zipfian(z) => (0..64)
                .map(|_| z.next(rng))
                .find(|&n| n <= latest)
                .unwrap_or_else(|| z.next(rng) % (latest + 1)),
            KeyChooser::Latest(l) => l.next(latest, rng),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const DRAWS: usize = 200_000;

    fn counts(item_count: u64, mut draw: impl FnMut(&mut StdRng) -> u64) -> Vec<u64> {
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = vec![0u64; item_count as usize];
        for _ in 0..DRAWS {
            let n = draw(&mut rng);
            assert!(n < item_count, "{n} out of 0..{item_count}");
            counts[n as usize] += 1;
        }
        counts
    }

    #[test]
    fn zipfian_is_in_range_and_skewed_towards_small_numbers() {
        let n = 1000;
        let z = Zipfian::new(n);
        let c = counts(n, |rng| z.next(rng));
        // Item 0's share is 1/zeta(n) (about 13 % for 1000 items at theta 0.99).
        let expected = DRAWS as f64 / zeta_from(0, n, ZIPFIAN_CONSTANT, 0.0);
        assert!(
            (c[0] as f64 - expected).abs() < 0.05 * expected,
            "{} vs {expected}",
            c[0]
        );
        assert!(c[0] > c[1] && c[1] > c[5] && c[5] > c[100], "{:?}", &c[..6]);
        // The hottest 1 % of items take far more than 1 % of accesses; the coldest half little.
        let hot: u64 = c[..10].iter().sum();
        let cold: u64 = c[500..].iter().sum();
        assert!(hot as f64 > 0.35 * DRAWS as f64, "hot {hot}");
        assert!((cold as f64) < 0.15 * DRAWS as f64, "cold {cold}");
        assert!(
            c[n as usize - 1] > 0 || c[n as usize - 2] > 0,
            "tail never drawn"
        );
    }

    #[test]
    fn zipfian_grown_matches_zipfian_built_at_that_size() {
        let mut grown = Zipfian::new(10);
        grown.grow_to(5000);
        let built = Zipfian::new(5000);
        assert!((grown.zeta_n - built.zeta_n).abs() < 1e-9);
        assert!((grown.eta - built.eta).abs() < 1e-12);
        assert_eq!(grown.item_count(), 5000);
        grown.grow_to(100);
        assert_eq!(grown.item_count(), 5000, "never shrinks");
    }

    #[test]
    fn scrambled_zipfian_stays_skewed_but_spreads_the_hot_items() {
        let n = 1000;
        let z = ScrambledZipfian::new(n);
        let mut c = counts(n, |rng| z.next(rng));
        let hottest = c
            .iter()
            .enumerate()
            .max_by_key(|(_, v)| **v)
            .map(|(i, _)| i);
        // The hottest item is where the hash sends zipfian item 0, not item 0.
        assert_eq!(hottest, Some((fnv_hash64(0) % n) as usize));
        assert_ne!(hottest, Some(0));
        // Still skewed, if less than the plain zipfian (YCSB draws from 10^10 items and
        // hashes them into the key space): the hottest item gets about 1/zeta(10^10) = 3.8 %
        // of the accesses where a uniform choice gives it 0.1 %, the top 1 % of items >10 %.
        c.sort_unstable_by(|a, b| b.cmp(a));
        assert!(c[0] as f64 > 0.03 * DRAWS as f64, "hottest {}", c[0]);
        let top: u64 = c[..10].iter().sum();
        assert!(top as f64 > 0.1 * DRAWS as f64, "top {top}");
        // And the hot items are not bunched at the start of the key space.
        let mut rng = StdRng::seed_from_u64(9);
        let first_half = (0..DRAWS).filter(|_| z.next(&mut rng) < n / 2).count();
        assert!(
            first_half > DRAWS / 5 && first_half < DRAWS * 4 / 5,
            "{first_half}"
        );
    }

    #[test]
    fn uniform_is_flat() {
        let n = 100;
        let mut chooser = KeyChooser::new(Distribution::Uniform, n, n - 1);
        let c = counts(n, |rng| chooser.next(n - 1, rng));
        let expected = DRAWS as f64 / n as f64;
        assert!(
            c.iter()
                .all(|&v| (v as f64 - expected).abs() < 0.15 * expected),
            "{c:?}"
        );
    }

    #[test]
    fn latest_prefers_the_newest_record_and_follows_inserts() {
        let mut latest = SkewedLatest::new(999);
        let c = counts(1000, |rng| latest.next(999, rng));
        assert_eq!(
            c.iter()
                .enumerate()
                .max_by_key(|(_, v)| **v)
                .map(|(i, _)| i),
            Some(999)
        );
        let newest_tenth: u64 = c[900..].iter().sum();
        assert!(newest_tenth as f64 > 0.5 * DRAWS as f64, "{newest_tenth}");
        // After more inserts the newest record becomes the favourite.
        let mut rng = StdRng::seed_from_u64(3);
        let hits = (0..10_000)
            .filter(|_| latest.next(1500, &mut rng) == 1500)
            .count();
        assert!(hits > 500, "{hits}");
        assert!((0..10_000).all(|_| latest.next(1500, &mut rng) <= 1500));
    }

    #[test]
    fn choosers_never_pass_the_latest_record() {
        let mut rng = StdRng::seed_from_u64(11);
        for distribution in [
            Distribution::Uniform,
            Distribution::Zipfian,
            Distribution::Latest,
        ] {
            let mut chooser = KeyChooser::new(distribution, 2000, 999);
            for _ in 0..20_000 {
                assert!(chooser.next(999, &mut rng) <= 999, "{distribution:?}");
            }
        }
    }

    #[test]
    fn key_names_are_distinct_and_stable() {
        let names: std::collections::BTreeSet<String> = (0..10_000).map(key_name).collect();
        assert_eq!(names.len(), 10_000);
        assert_eq!(key_name(0), format!("user{}", fnv_hash64(0)));
        assert!(key_name(1).starts_with("user"));
    }
}
