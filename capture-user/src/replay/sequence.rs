//! Which recorded HTTP/2 requests were sequential: a request that started after every earlier
//! request of its connection had been answered is replayed the same way (its stream waits
//! for those answers), so a client that waited for each answer still does, while streams that
//! were in flight together stay concurrent. Sans-IO: fed recorded times.

use std::collections::HashMap;
use std::time::Duration;

/// Connections remembered at most; beyond, the memory starts over (the next request of a
/// forgotten connection is taken as concurrent, which only loses the wait).
const MAX_CONNECTIONS: usize = 100_000;

/// The end of the last recorded answer per connection.
#[derive(Debug, Default)]
pub struct AnswerOrder {
    answered_at: HashMap<u64, u64>,
}

impl AnswerOrder {
    /// Whether the request of connection `conn` that started at `start_ns` came after every
    /// earlier request of its connection was answered; notes when its own answer ended
    /// (`latency`: to the answer's last byte; None when no answer was recorded).
    pub fn after_earlier_answers(
        &mut self,
        conn: u64,
        start_ns: u64,
        latency: Option<Duration>,
    ) -> bool {
        if self.answered_at.len() >= MAX_CONNECTIONS && !self.answered_at.contains_key(&conn) {
            self.answered_at.clear();
        }
        let end = start_ns.saturating_add(latency.map_or(0, |l| l.as_nanos() as u64));
        match self.answered_at.get_mut(&conn) {
            Some(last) => {
                let sequential = start_ns >= *last;
                *last = (*last).max(end);
                sequential
            }
            None => {
                self.answered_at.insert(conn, end);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_request_after_the_last_answer_waits_and_overlapping_ones_do_not() {
        let mut order = AnswerOrder::default();
        let ms = |n| Some(Duration::from_millis(n));
        // Connection 1: sequential calls.
        assert!(!order.after_earlier_answers(1, 0, ms(5)));
        assert!(order.after_earlier_answers(1, 6 * MS, ms(5)));
        assert!(order.after_earlier_answers(1, 11 * MS, ms(1)));
        // Connection 2: three streams in flight together, then one after all answers.
        assert!(!order.after_earlier_answers(2, 0, ms(10)));
        assert!(!order.after_earlier_answers(2, MS, ms(20)));
        assert!(!order.after_earlier_answers(2, 2 * MS, ms(1)));
        assert!(!order.after_earlier_answers(2, 15 * MS, ms(1)));
        assert!(order.after_earlier_answers(2, 21 * MS, None));
        // An unanswered request holds nothing up.
        assert!(order.after_earlier_answers(2, 21 * MS, ms(1)));
    }
}
