//! The queue from the feed thread to the pacer thread: bounded, and woken in batches. A
//! blocked feed is woken only once the pacer has taken half the queue, not for every send
//! taken (with `std::sync::mpsc::sync_channel`, a full queue at `--max` cost one wake-up and
//! two context switches per request on a 2-core node).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Why nothing was received.
#[derive(Debug, PartialEq, Eq)]
pub enum Empty {
    /// Nothing yet; the sender is still there.
    Waiting,
    /// The sender is gone and everything it sent was taken.
    Closed,
}

struct State<T> {
    items: VecDeque<T>,
    sender_gone: bool,
    receiver_gone: bool,
    sender_waiting: bool,
    receiver_waiting: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    not_empty: Condvar,
    not_full: Condvar,
    capacity: usize,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The feed's end.
pub struct Sender<T>(Arc<Shared<T>>);

/// The pacer's end.
pub struct Receiver<T>(Arc<Shared<T>>);

/// A queue of at most `capacity` items.
pub fn handoff<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            sender_gone: false,
            receiver_gone: false,
            sender_waiting: false,
            receiver_waiting: false,
        }),
        not_empty: Condvar::new(),
        not_full: Condvar::new(),
        capacity: capacity.max(1),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T> Sender<T> {
    /// Queues `item`, waiting while the queue is full; gives it back if the receiver is gone.
    pub fn send(&self, item: T) -> Result<(), T> {
        let mut state = self.0.lock();
        while state.items.len() >= self.0.capacity && !state.receiver_gone {
            state.sender_waiting = true;
            state = self
                .0
                .not_full
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        if state.receiver_gone {
            return Err(item);
        }
        state.items.push_back(item);
        if state.receiver_waiting {
            state.receiver_waiting = false;
            self.0.not_empty.notify_one();
        }
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.0.lock().sender_gone = true;
        self.0.not_empty.notify_one();
    }
}

impl<T> Receiver<T> {
    /// The next item if one is queued.
    pub fn try_recv(&self) -> Result<T, Empty> {
        let mut state = self.0.lock();
        self.take(&mut state)
    }

    /// The next item, waiting at most `within` for one.
    pub fn recv_timeout(&self, within: Duration) -> Result<T, Empty> {
        let deadline = Instant::now() + within;
        let mut state = self.0.lock();
        loop {
            match self.take(&mut state) {
                Err(Empty::Waiting) => {}
                done => return done,
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Empty::Waiting);
            }
            state.receiver_waiting = true;
            state = self
                .0
                .not_empty
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Every item, waiting for each, until the sender is gone.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(|| {
            loop {
                match self.recv_timeout(Duration::from_secs(1)) {
                    Ok(item) => return Some(item),
                    Err(Empty::Closed) => return None,
                    Err(Empty::Waiting) => {}
                }
            }
        })
    }

    /// Pops one item, waking a waiting sender once half the queue is free.
    fn take(&self, state: &mut State<T>) -> Result<T, Empty> {
        let Some(item) = state.items.pop_front() else {
            return Err(if state.sender_gone {
                Empty::Closed
            } else {
                Empty::Waiting
            });
        };
        if state.sender_waiting && state.items.len() <= self.0.capacity / 2 {
            state.sender_waiting = false;
            self.0.not_full.notify_one();
        }
        Ok(item)
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.receiver_gone = true;
        state.items.clear();
        drop(state);
        self.0.not_full.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_out_in_order_and_the_end_is_seen() {
        let (tx, rx) = handoff(4);
        let feeder = std::thread::spawn(move || {
            for i in 0..1000 {
                tx.send(i).unwrap();
            }
        });
        let got: Vec<i32> = rx.iter().collect();
        feeder.join().unwrap();
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
        assert_eq!(rx.try_recv(), Err(Empty::Closed));
    }

    #[test]
    fn a_full_queue_blocks_the_sender_until_half_is_taken() {
        let (tx, rx) = handoff(4);
        for i in 0..4 {
            tx.send(i).unwrap();
        }
        let sent = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = sent.clone();
        let feeder = std::thread::spawn(move || {
            tx.send(4).unwrap();
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !sent.load(std::sync::atomic::Ordering::SeqCst),
            "sent into a full queue"
        );
        assert_eq!(rx.try_recv(), Ok(0));
        assert_eq!(rx.try_recv(), Ok(1));
        feeder.join().unwrap();
        assert!(sent.load(std::sync::atomic::Ordering::SeqCst));
        let rest: Vec<i32> = rx.iter().collect();
        assert_eq!(rest, vec![2, 3, 4]);
    }

    #[test]
    fn a_gone_receiver_gives_the_item_back_and_frees_a_blocked_sender() {
        let (tx, rx) = handoff(1);
        tx.send(1).unwrap();
        let feeder = std::thread::spawn(move || tx.send(2));
        std::thread::sleep(Duration::from_millis(20));
        drop(rx);
        assert_eq!(feeder.join().unwrap(), Err(2));
    }

    #[test]
    fn an_empty_queue_waits_then_says_so() {
        let (tx, rx) = handoff::<u8>(2);
        let started = Instant::now();
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(20)),
            Err(Empty::Waiting)
        );
        assert!(started.elapsed() >= Duration::from_millis(20));
        let feeder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            tx.send(7).unwrap();
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(7));
        feeder.join().unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Err(Empty::Closed));
    }
}
