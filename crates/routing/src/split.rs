//! Traffic split of one endpoint across its versions.
//!
//! Each version has a `traffic_percentile` in [0, 100]; the default version additionally gets
//! whatever the others leave (`100 - sum`). A sum above 100 is refused. At most one version is the
//! control (the others are treatments); at most one is a shadow, which serves no live traffic and
//! receives a mirrored copy of `shadow_percent` (at most 50) of requests. A pick maps a number in
//! [0, 1) onto the cumulative shares: a uniform random number for a plain request, a stable hash of
//! `x-sluice-route-key` for a sticky one, so a key keeps its version while the weights stay the same.

/// Most versions an endpoint may have.
pub const MAX_VERSIONS: usize = 6;
/// Largest share of requests that may be mirrored to a shadow.
pub const MAX_SHADOW_PERCENT: f64 = 50.0;

/// One version as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionSpec {
    pub name: String,
    pub traffic_percentile: f64,
    pub is_default: bool,
    pub is_control: bool,
    /// Mirror percentage when this version is the shadow.
    pub shadow_percent: Option<f64>,
}

/// What a version does for the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Control,
    Treatment,
    Shadow,
}

impl Role {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Control => "control",
            Role::Treatment => "treatment",
            Role::Shadow => "shadow",
        }
    }
}

/// A configuration that cannot route; each message names the offending versions or values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SplitError {
    #[error("an endpoint needs 1 to {MAX_VERSIONS} versions, got {0}")]
    VersionCount(usize),
    #[error("version name '{0}' is used twice")]
    DuplicateName(String),
    #[error("version '{name}': traffic_percentile must be within 0-100, got {value}")]
    PercentileRange { name: String, value: f64 },
    #[error("traffic percentiles add up to {sum}, more than 100")]
    SumOver100 { sum: f64 },
    #[error("exactly one version must be the default, found {0}")]
    DefaultCount(usize),
    #[error("at most one version may be the control, found {0}")]
    ControlCount(usize),
    #[error("at most one version may be a shadow, found {0}")]
    ShadowCount(usize),
    #[error("shadow version '{name}': shadow percent must be within 0-{MAX_SHADOW_PERCENT}, got {value}")]
    ShadowRange { name: String, value: f64 },
    #[error("shadow version '{0}' cannot also take live traffic, be the default or be the control")]
    ShadowServesTraffic(String),
}

/// A validated split, ready to pick from. Cheap to share; picks never allocate.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    live: Vec<(String, Role)>,
    /// Upper bounds of each live version's interval in [0, 1), in `live` order.
    bounds: Vec<f64>,
    shares: Vec<f64>,
    shadow: Option<(String, f64)>,
}

impl Split {
    /// Validates the versions and computes each one's effective share.
    pub fn new(versions: &[VersionSpec]) -> Result<Self, SplitError> {
        if versions.is_empty() || versions.len() > MAX_VERSIONS {
            return Err(SplitError::VersionCount(versions.len()));
        }
        for (i, v) in versions.iter().enumerate() {
            if versions[..i].iter().any(|w| w.name == v.name) {
                return Err(SplitError::DuplicateName(v.name.clone()));
            }
            if !(0.0..=100.0).contains(&v.traffic_percentile) {
                return Err(SplitError::PercentileRange { name: v.name.clone(), value: v.traffic_percentile });
            }
        }
        let count = |f: fn(&VersionSpec) -> bool| versions.iter().filter(|v| f(v)).count();
        match count(|v| v.is_default) {
            1 => {}
            n => return Err(SplitError::DefaultCount(n)),
        }
        if count(|v| v.is_control) > 1 {
            return Err(SplitError::ControlCount(count(|v| v.is_control)));
        }
        let shadows: Vec<&VersionSpec> = versions.iter().filter(|v| v.shadow_percent.is_some()).collect();
        if shadows.len() > 1 {
            return Err(SplitError::ShadowCount(shadows.len()));
        }
        let shadow = match shadows.first() {
            None => None,
            Some(s) => {
                let pct = s.shadow_percent.unwrap_or_default();
                if !(0.0..=MAX_SHADOW_PERCENT).contains(&pct) {
                    return Err(SplitError::ShadowRange { name: s.name.clone(), value: pct });
                }
                if s.traffic_percentile > 0.0 || s.is_default || s.is_control {
                    return Err(SplitError::ShadowServesTraffic(s.name.clone()));
                }
                Some((s.name.clone(), pct / 100.0))
            }
        };
        let sum: f64 = versions.iter().map(|v| v.traffic_percentile).sum();
        // A little slack for sums of decimal fractions such as 33.3 + 33.3 + 33.4.
        if sum > 100.0 + 1e-9 {
            return Err(SplitError::SumOver100 { sum });
        }
        let live: Vec<&VersionSpec> = versions.iter().filter(|v| v.shadow_percent.is_none()).collect();
        let shares: Vec<f64> = live
            .iter()
            .map(|v| {
                let own = v.traffic_percentile / 100.0;
                if v.is_default { own + (1.0 - sum / 100.0).max(0.0) } else { own }
            })
            .collect();
        let mut acc = 0.0;
        let bounds = shares
            .iter()
            .map(|s| {
                acc += s;
                acc
            })
            .collect();
        Ok(Split {
            live: live
                .iter()
                .map(|v| (v.name.clone(), if v.is_control { Role::Control } else { Role::Treatment }))
                .collect(),
            bounds,
            shares,
            shadow,
        })
    }

    /// Every live version with its role and effective share in [0, 1].
    pub fn shares(&self) -> impl Iterator<Item = (&str, Role, f64)> {
        self.live.iter().zip(&self.shares).map(|((n, r), s)| (n.as_str(), *r, *s))
    }

    /// The version for a point `u` in [0, 1): versions own consecutive intervals of their share.
    pub fn pick(&self, u: f64) -> (&str, Role) {
        let idx = self.bounds.iter().position(|&b| u < b).unwrap_or_else(|| {
            // Rounding can leave the last bound a hair under 1.0: the last version with any share.
            self.shares.iter().rposition(|&s| s > 0.0).unwrap_or(0)
        });
        let (name, role) = &self.live[idx];
        (name, *role)
    }

    /// The version for a route key: the same key picks the same version while the split is the same.
    pub fn pick_sticky(&self, key: &[u8]) -> (&str, Role) {
        self.pick(unit_interval(stable_hash(key)))
    }

    /// Whether a request with uniform number `u` is mirrored, and to which shadow version.
    pub fn mirror(&self, u: f64) -> Option<&str> {
        self.shadow.as_ref().filter(|(_, p)| u < *p).map(|(n, _)| n.as_str())
    }
}

/// FNV-1a followed by a SplitMix64 finaliser: stable across processes, versions and platforms
/// (unlike `std`'s randomly keyed hasher), and well spread even for short, similar keys.
pub fn stable_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Maps 64 random bits to [0, 1) using the top 53 bits (an f64's precision).
pub fn unit_interval(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// The `index`-th number in [0, 1) of the SplitMix64 stream seeded with `seed` (the same numbers
/// [`SplitMix64::next_unit`] yields). Indexable, so concurrent requests can take draws from one
/// atomic counter, and a run's picks are the same multiset whatever order requests arrive in.
pub fn unit_interval_at(seed: u64, index: u64) -> f64 {
    unit_interval(mix(seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15))))
}

/// A small, fast, seedable generator (SplitMix64) for per-request picks and reproducible tests.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next number in [0, 1).
    pub fn next_unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        unit_interval(mix(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(name: &str, pct: f64) -> VersionSpec {
        VersionSpec {
            name: name.into(),
            traffic_percentile: pct,
            is_default: false,
            is_control: false,
            shadow_percent: None,
        }
    }

    #[test]
    fn indexed_draws_follow_the_stream() {
        let mut rng = SplitMix64::new(42);
        for i in 0..5 {
            assert_eq!(rng.next_unit(), unit_interval_at(42, i));
        }
    }

    fn default(mut s: VersionSpec) -> VersionSpec {
        s.is_default = true;
        s
    }

    /// Pearson's chi-square statistic of observed counts against expected shares.
    fn chi_square(counts: &[u64], shares: &[f64], n: u64) -> f64 {
        counts
            .iter()
            .zip(shares)
            .filter(|(_, s)| **s > 0.0)
            .map(|(&c, &s)| {
                let e = s * n as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum()
    }

    fn observe(split: &Split, n: u64, seed: u64) -> Vec<u64> {
        let mut rng = SplitMix64::new(seed);
        let names: Vec<&str> = split.shares().map(|(n, _, _)| n).collect();
        let mut counts = vec![0u64; names.len()];
        for _ in 0..n {
            let (picked, _) = split.pick(rng.next_unit());
            counts[names.iter().position(|n| *n == picked).expect("a live version")] += 1;
        }
        counts
    }

    #[test]
    fn default_absorbs_what_the_others_leave() {
        let split = Split::new(&[default(v("blue", 10.0)), v("green", 30.0), v("red", 20.0)]).expect("valid");
        let shares: Vec<(&str, f64)> = split.shares().map(|(n, _, s)| (n, s)).collect();
        assert_eq!(shares.len(), 3);
        assert!((shares[0].1 - 0.5).abs() < 1e-12, "blue: own 10 + the 40 left over");
        assert!((shares[1].1 - 0.3).abs() < 1e-12);
        assert!((shares[2].1 - 0.2).abs() < 1e-12);
    }

    #[test]
    fn ten_thousand_picks_match_the_shares_by_chi_square() {
        // Critical value of chi-square with 2 degrees of freedom at p = 0.001: 13.82. The seed is
        // fixed, so this cannot flake; a wrong split fails it by orders of magnitude.
        for versions in [
            vec![default(v("blue", 10.0)), v("green", 30.0), v("red", 20.0)],
            vec![default(v("blue", 0.0)), v("green", 70.0), v("red", 5.0)],
        ] {
            let split = Split::new(&versions).expect("valid");
            let n = 10_000;
            let counts = observe(&split, n, 42);
            let shares: Vec<f64> = split.shares().map(|(_, _, s)| s).collect();
            let stat = chi_square(&counts, &shares, n);
            assert!(stat < 13.82, "chi-square {stat} for counts {counts:?} and shares {shares:?}");
        }
    }

    #[test]
    fn a_wrong_split_fails_the_chi_square_check() {
        let split = Split::new(&[default(v("blue", 50.0)), v("green", 50.0)]).expect("valid");
        let counts = observe(&split, 10_000, 7);
        let stat = chi_square(&counts, &[0.8, 0.2], 10_000);
        assert!(stat > 13.82, "the check can tell 50/50 from 80/20: {stat}");
    }

    #[test]
    fn sticky_keys_keep_their_version() {
        let split = Split::new(&[default(v("blue", 50.0)), v("green", 50.0)]).expect("valid");
        let mut seen = std::collections::HashSet::new();
        for user in 0..200 {
            let key = format!("user-{user}");
            let first = split.pick_sticky(key.as_bytes());
            for _ in 0..5 {
                assert_eq!(split.pick_sticky(key.as_bytes()), first);
            }
            seen.insert(first.0.to_owned());
        }
        assert_eq!(seen.len(), 2, "keys spread over both versions");
        assert_eq!(stable_hash(b"user-1"), stable_hash(b"user-1"));
        assert_ne!(stable_hash(b"user-1"), stable_hash(b"user-2"));
    }

    #[test]
    fn roles_and_shadow_mirroring() {
        let mut control = v("green", 40.0);
        control.is_control = true;
        let mut shadow = v("canary", 0.0);
        shadow.shadow_percent = Some(25.0);
        let split = Split::new(&[default(v("blue", 10.0)), control, shadow]).expect("valid");
        let roles: Vec<(&str, Role)> = split.shares().map(|(n, r, _)| (n, r)).collect();
        assert_eq!(
            roles,
            vec![("blue", Role::Treatment), ("green", Role::Control)],
            "the shadow takes no live traffic"
        );
        let mut rng = SplitMix64::new(3);
        let mirrored = (0..10_000).filter(|_| split.mirror(rng.next_unit()).is_some()).count();
        assert!((2_300..2_700).contains(&mirrored), "about 25 % mirrored, got {mirrored}");
    }

    #[test]
    fn invalid_splits_are_refused_by_name() {
        let mut two_defaults = vec![default(v("a", 10.0)), default(v("b", 10.0))];
        assert_eq!(Split::new(&two_defaults), Err(SplitError::DefaultCount(2)));
        two_defaults[1].is_default = false;
        assert!(Split::new(&two_defaults).is_ok());
        assert_eq!(Split::new(&[v("a", 10.0)]), Err(SplitError::DefaultCount(0)));
        assert_eq!(Split::new(&[]), Err(SplitError::VersionCount(0)));
        let seven: Vec<VersionSpec> =
            (0..7).map(|i| if i == 0 { default(v("v0", 0.0)) } else { v(&format!("v{i}"), 1.0) }).collect();
        assert_eq!(Split::new(&seven), Err(SplitError::VersionCount(7)));
        let over = Split::new(&[default(v("a", 60.0)), v("b", 50.0)]).expect_err("over 100");
        assert!(over.to_string().contains("add up to 110"), "{over}");
        assert!(matches!(Split::new(&[default(v("a", 10.0)), v("a", 10.0)]), Err(SplitError::DuplicateName(_))));
        assert!(matches!(Split::new(&[default(v("a", 101.0))]), Err(SplitError::PercentileRange { .. })));
        let mut c1 = v("b", 10.0);
        c1.is_control = true;
        let mut c2 = v("c", 10.0);
        c2.is_control = true;
        assert_eq!(Split::new(&[default(v("a", 0.0)), c1, c2]), Err(SplitError::ControlCount(2)));
        let mut greedy = v("s", 0.0);
        greedy.shadow_percent = Some(60.0);
        assert!(matches!(Split::new(&[default(v("a", 0.0)), greedy]), Err(SplitError::ShadowRange { .. })));
        let mut live_shadow = v("s", 10.0);
        live_shadow.shadow_percent = Some(10.0);
        assert!(matches!(Split::new(&[default(v("a", 0.0)), live_shadow]), Err(SplitError::ShadowServesTraffic(_))));
        assert!(Split::new(&[default(v("a", 33.3)), v("b", 33.3), v("c", 33.4)]).is_ok(), "decimal sums of 100 pass");
    }
}
