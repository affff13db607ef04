//! `--sample P%`: replay a stable share of the traffic. Sans-IO: which requests are kept is a
//! pure function of their recorded ids and P.
//!
//! The unit is the recorded *connection* when no connection carries more than 1 % of the
//! requests (so at least 100 connections, none dominant): a connection is kept or left out
//! whole, so sessions replay intact, and the kept share of requests stays close to P. Otherwise
//! (a few long connections, as wrk or a proxy's pool make them, or a GoReplay file, which
//! records no connections) the unit is the *request*: keeping one of eight connections would
//! be 12.5 % or 0 %, never 10 %.
//!
//! Stability: a unit is kept when a fixed hash of its recorded id (connection id or request
//! id, numbered in capture order) falls below P % of the hash's range. The hash is SplitMix64's
//! output function, a published fixed mix that no Rust or crate upgrade changes (std's hashers
//! promise no such thing). So the same P on the same recording keeps the same units every
//! time, and a larger P keeps a superset of what a smaller one keeps.

use std::str::FromStr;

use serde::Serialize;

/// Why a `--sample` value cannot be used.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum SampleError {
    #[error("--sample expects a percentage such as 10% or 2.5% (got {0:?})")]
    NotAPercentage(String),
    #[error("--sample must be more than 0 and at most 100 % (got {0}); 100% replays everything")]
    OutOfRange(String),
}

/// A share of the traffic in percent, in (0, 100].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplePercent(f64);

impl SamplePercent {
    /// The share, in percent.
    pub fn percent(self) -> f64 {
        self.0
    }

    /// The share in millionths: the integer threshold the hash is compared with, so the
    /// decision has no floating point in it once parsed.
    fn millionths(self) -> u64 {
        (self.0 * 10_000.0).round() as u64
    }
}

impl FromStr for SamplePercent {
    type Err = SampleError;

    /// `10%`, `10`, `2.5 %`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let number = text.trim().trim_end_matches('%').trim_end();
        let value: f64 = number
            .parse()
            .map_err(|_| SampleError::NotAPercentage(text.to_string()))?;
        if !value.is_finite() {
            return Err(SampleError::NotAPercentage(text.to_string()));
        }
        if !(value > 0.0 && value <= 100.0) {
            return Err(SampleError::OutOfRange(format!("{number}%")));
        }
        Ok(Self(value))
    }
}

/// What `--sample` keeps or leaves out whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SampleUnit {
    /// A recorded connection with all its requests.
    Connection,
    /// A single request.
    Request,
}

impl SampleUnit {
    /// "connections" or "requests", for summaries.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Connection => "connections",
            Self::Request => "requests",
        }
    }
}

/// What a sample kept, for the summary.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SampleStats {
    /// P, as asked.
    pub percent: f64,
    /// What was kept or left out whole.
    pub unit: SampleUnit,
    /// Units there were (after filters).
    pub units: u64,
    /// Units kept.
    pub units_kept: u64,
    /// Requests there were (after filters).
    pub requests: u64,
    /// Requests kept.
    pub requests_kept: u64,
}

impl SampleStats {
    /// One line for the summary: "sample 10%: kept 98 of 1000 connections (196 of 2000
    /// requests)", or "sample 10%: kept 98 of 1000 requests".
    pub fn to_text(&self) -> String {
        let requests = match self.unit {
            SampleUnit::Connection => {
                format!(" ({} of {} requests)", self.requests_kept, self.requests)
            }
            SampleUnit::Request => String::new(),
        };
        format!(
            "sample {}%: kept {} of {} {}{requests}",
            self.percent,
            self.units_kept,
            self.units,
            self.unit.plural(),
        )
    }
}

/// A request as sampling sees it: its recorded ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleKey {
    /// Recorded connection.
    pub conn: u64,
    /// Recorded request (message) id, unique within the source.
    pub request: u64,
}

/// The connection is the unit when the busiest one carries at most this share of the requests.
const BUSIEST_CONNECTION_MAX_PERCENT: u64 = 1;

/// The unit for these requests (see the module doc). `has_connections` is false for sources
/// that record none (GoReplay files).
pub fn unit_for(keys: &[SampleKey], has_connections: bool) -> SampleUnit {
    if !has_connections || keys.is_empty() {
        return SampleUnit::Request;
    }
    let mut per_conn: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    for k in keys {
        *per_conn.entry(k.conn).or_default() += 1;
    }
    let busiest = per_conn.values().copied().max().unwrap_or(0);
    if busiest * 100 <= BUSIEST_CONNECTION_MAX_PERCENT * keys.len() as u64 {
        SampleUnit::Connection
    } else {
        SampleUnit::Request
    }
}

/// SplitMix64's output function applied to `id + γ` (γ its golden-ratio increment): the first
/// number SplitMix64 seeded with `id` yields. Bijective on u64, every input bit reaching every
/// output bit, so consecutive ids spread evenly over the range.
pub fn stable_hash(id: u64) -> u64 {
    let mut z = id.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether the unit with this id is in the P % sample: its hash, scaled to [0, 1,000,000),
/// is below P in millionths.
pub fn keeps(percent: SamplePercent, id: u64) -> bool {
    let position = (u128::from(stable_hash(id)) * 1_000_000) >> 64;
    position < u128::from(percent.millionths())
}

/// Which requests a P % sample keeps (one flag per key, in order) and what that amounts to.
pub fn choose(
    keys: &[SampleKey],
    percent: SamplePercent,
    has_connections: bool,
) -> (Vec<bool>, SampleStats) {
    let unit = unit_for(keys, has_connections);
    let id_of = |k: &SampleKey| match unit {
        SampleUnit::Connection => k.conn,
        SampleUnit::Request => k.request,
    };
    let keep: Vec<bool> = keys.iter().map(|k| keeps(percent, id_of(k))).collect();
    let mut units = std::collections::HashSet::new();
    let mut units_kept = std::collections::HashSet::new();
    for (k, kept) in keys.iter().zip(&keep) {
        units.insert(id_of(k));
        if *kept {
            units_kept.insert(id_of(k));
        }
    }
    let stats = SampleStats {
        percent: percent.percent(),
        unit,
        units: units.len() as u64,
        units_kept: units_kept.len() as u64,
        requests: keys.len() as u64,
        requests_kept: keep.iter().filter(|k| **k).count() as u64,
    };
    (keep, stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pct(text: &str) -> SamplePercent {
        text.parse().unwrap()
    }

    /// `conns` connections of `per_conn` requests each, request ids numbered on.
    fn keys(conns: u64, per_conn: u64) -> Vec<SampleKey> {
        (0..conns * per_conn)
            .map(|i| SampleKey {
                conn: 1 + i % conns,
                request: 1 + i,
            })
            .collect()
    }

    #[test]
    fn percentages_parse_as_people_write_them_and_bad_ones_name_the_flag() {
        assert_eq!(pct("10%").percent(), 10.0);
        assert_eq!(pct("10").percent(), 10.0);
        assert_eq!(pct(" 2.5 % ").percent(), 2.5);
        assert_eq!(pct("100%").percent(), 100.0);
        assert_eq!(
            "150%".parse::<SamplePercent>().unwrap_err().to_string(),
            "--sample must be more than 0 and at most 100 % (got 150%); 100% replays everything"
        );
        for bad in ["0%", "-5%", "0"] {
            assert!(matches!(
                bad.parse::<SamplePercent>(),
                Err(SampleError::OutOfRange(_))
            ));
        }
        for bad in ["ten%", "", "%", "NaN%", "inf", "1e400"] {
            let err = bad.parse::<SamplePercent>().unwrap_err();
            assert!(err.to_string().contains("--sample"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_hash_is_splitmix64_and_never_changes() {
        // SplitMix64 seeded with 0: its published first output.
        assert_eq!(stable_hash(0), 0xe220_a839_7b1d_cdaf);
        // Pinned values: a change here changes every user's samples.
        assert_eq!(stable_hash(1), 0x910a_2dec_8902_5cc1);
        assert_eq!(stable_hash(1000), 0x3c1e_ba8b_4dcc_c148);
    }

    #[test]
    fn many_even_connections_are_sampled_whole() {
        let k = keys(1000, 3);
        assert_eq!(unit_for(&k, true), SampleUnit::Connection);
        let (keep, stats) = choose(&k, pct("10%"), true);
        assert_eq!(stats.unit, SampleUnit::Connection);
        assert_eq!((stats.units, stats.requests), (1000, 3000));
        assert!((70..=130).contains(&stats.units_kept), "{stats:?}");
        assert_eq!(stats.requests_kept, stats.units_kept * 3);
        // Whole: every request of a connection shares its fate.
        for conn in 1..=1000 {
            let fates: Vec<bool> = k
                .iter()
                .zip(&keep)
                .filter(|(key, _)| key.conn == conn)
                .map(|(_, kept)| *kept)
                .collect();
            assert!(fates.iter().all(|f| *f == fates[0]), "connection {conn}");
        }
    }

    #[test]
    fn few_long_connections_a_dominant_one_or_no_connections_are_sampled_by_request() {
        // wrk -c8: 8 connections.
        assert_eq!(unit_for(&keys(8, 2000), true), SampleUnit::Request);
        // 99 even connections: one holds more than 1 %.
        assert_eq!(unit_for(&keys(99, 5), true), SampleUnit::Request);
        assert_eq!(unit_for(&keys(100, 5), true), SampleUnit::Connection);
        // 500 one-request connections next to one that carries 100 requests (over 1 %).
        let mut mixed = keys(500, 1);
        mixed.extend((0..100).map(|i| SampleKey {
            conn: 9999,
            request: 10_000 + i,
        }));
        assert_eq!(unit_for(&mixed, true), SampleUnit::Request);
        // GoReplay files: no connections, whatever the ids say.
        assert_eq!(unit_for(&keys(1000, 1), false), SampleUnit::Request);
        assert_eq!(unit_for(&[], true), SampleUnit::Request);
        let (keep, stats) = choose(&keys(8, 2000), pct("10%"), true);
        assert_eq!((stats.units, stats.requests), (16_000, 16_000));
        assert!(
            (1440..=1760).contains(&stats.units_kept),
            "10 % of 16000 requests: {stats:?}"
        );
        assert_eq!(keep.iter().filter(|k| **k).count() as u64, stats.units_kept);
    }

    #[test]
    fn the_same_percentage_keeps_the_same_units_and_a_larger_one_a_superset() {
        let k = keys(8, 5000);
        let (ten, _) = choose(&k, pct("10%"), true);
        assert_eq!(choose(&k, pct("10%"), true).0, ten);
        let (twenty, stats) = choose(&k, pct("20%"), true);
        assert!(ten.iter().zip(&twenty).all(|(t, w)| !*t || *w));
        assert!((7600..=8400).contains(&stats.requests_kept), "{stats:?}");
        let (all, stats) = choose(&k, pct("100%"), true);
        assert!(all.iter().all(|k| *k));
        assert_eq!(stats.requests_kept, 40_000);
        let (tiny, _) = choose(&k, pct("0.01%"), true);
        assert!(tiny.iter().filter(|k| **k).count() < 20);
    }

    #[test]
    fn the_summary_line_says_the_unit_and_both_counts() {
        let (_, stats) = choose(&keys(1000, 2), pct("10%"), true);
        assert_eq!(
            stats.to_text(),
            format!(
                "sample 10%: kept {} of 1000 connections ({} of 2000 requests)",
                stats.units_kept,
                2 * stats.units_kept
            )
        );
        let (_, stats) = choose(&keys(8, 100), pct("2.5%"), true);
        assert_eq!(
            stats.to_text(),
            format!("sample 2.5%: kept {} of 800 requests", stats.units_kept)
        );
    }
}
