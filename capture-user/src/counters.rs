//! Named counter tables: a stats struct lists each counter once (name, field, whether it
//! counts a loss), and summaries, loss lists and the sum over framing threads derive from
//! that one list.

/// Marks of a counter table's rows: a counter of traffic lost or not recorded whole, or a
/// tally of what went through.
pub const LOSS: bool = true;
pub const TALLY: bool = false;

/// A row of a counter table: the counter's name (as in summaries and metrics), its field,
/// and whether it is a loss.
pub type CounterRow<S> = (&'static str, fn(&mut S) -> &mut u64, bool);

/// A stats struct described by a table of its counters.
pub trait CounterTable: Copy + 'static {
    /// Every counter once, in summary order; a unit test per struct checks it against the
    /// fields.
    const COUNTERS: &'static [CounterRow<Self>];

    /// `name=value` pairs.
    fn pairs(&self) -> Vec<(&'static str, u64)> {
        Self::COUNTERS
            .iter()
            .map(|(name, field, _)| (*name, *field(&mut { *self })))
            .collect()
    }

    /// Adds another's counters to these (framing threads' counters into one view).
    fn add(&mut self, other: &Self) {
        let mut other = *other;
        for (_, field, _) in Self::COUNTERS {
            *field(self) += *field(&mut other);
        }
    }

    /// The loss counters as `name=value` pairs, zero values included.
    fn losses(&self) -> Vec<(&'static str, u64)> {
        Self::COUNTERS
            .iter()
            .filter(|(_, _, loss)| *loss)
            .map(|(name, field, _)| (*name, *field(&mut { *self })))
            .collect()
    }
}

/// Checks a counter table against its struct: `stats` (every field a distinct value) lists
/// in its table every field, in declaration order (as `Debug` prints them), and exactly
/// `losses` are marked as losses, zero values included.
#[cfg(test)]
pub fn check_table<S: CounterTable + std::fmt::Debug + Default>(stats: S, losses: &[&str]) {
    let debug = format!("{stats:?}");
    let inner = &debug[debug.find('{').unwrap() + 1..debug.rfind('}').unwrap()];
    let fields: Vec<(String, u64)> = inner
        .split(',')
        .map(|field| {
            let (name, value) = field.split_once(':').unwrap();
            (name.trim().to_string(), value.trim().parse().unwrap())
        })
        .collect();
    let pairs: Vec<(String, u64)> = stats
        .pairs()
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
    assert_eq!(pairs, fields);
    let want: Vec<_> = stats
        .pairs()
        .into_iter()
        .filter(|(name, _)| losses.contains(name))
        .collect();
    assert_eq!(stats.losses(), want);
    let zero = S::default().losses();
    assert_eq!(zero.len(), losses.len(), "zero values are listed too");
}
