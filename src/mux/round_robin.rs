//! Fair order for the data tier: one queue per stream (or UDP session), served in turns.
//!
//! Frames of one stream keep their order, so a half-close still follows its data; across
//! streams, a frame waits for at most one frame of every other busy stream instead of behind a
//! bulk transfer's whole window.

use std::collections::{HashMap, VecDeque};

/// Emptied queues kept for reuse, so a stream that sends one frame at a time does not allocate
/// a queue per frame.
const SPARE_QUEUES: usize = 64;

#[derive(Debug)]
pub(crate) struct RoundRobin<T> {
    queues: HashMap<u32, VecDeque<T>>,
    /// Ids with queued items, in the order they get their next turn.
    turns: VecDeque<u32>,
    spare: Vec<VecDeque<T>>,
    len: usize,
}

impl<T> Default for RoundRobin<T> {
    fn default() -> Self {
        Self {
            queues: HashMap::new(),
            turns: VecDeque::new(),
            spare: Vec::new(),
            len: 0,
        }
    }
}

impl<T> RoundRobin<T> {
    pub(crate) fn push(&mut self, id: u32, item: T) {
        let queue = self.queues.entry(id).or_insert_with(|| {
            self.turns.push_back(id);
            self.spare.pop().unwrap_or_default()
        });
        queue.push_back(item);
        self.len += 1;
    }

    /// The next item of the stream whose turn it is; that stream then goes to the back.
    pub(crate) fn pop(&mut self) -> Option<T> {
        let id = self.turns.pop_front()?;
        let queue = self.queues.get_mut(&id)?;
        let item = queue.pop_front();
        if queue.is_empty() {
            if let Some(queue) = self.queues.remove(&id) {
                if self.spare.len() < SPARE_QUEUES {
                    self.spare.push(queue);
                }
            }
        } else {
            self.turns.push_back(id);
        }
        if item.is_some() {
            self.len -= 1;
        }
        item
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether `id` has items waiting.
    pub(crate) fn contains(&self, id: u32) -> bool {
        self.queues.contains_key(&id)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_take_turns_and_keep_their_own_order() {
        let mut rr = RoundRobin::default();
        for i in 0..4 {
            rr.push(1, ("bulk", i));
        }
        rr.push(2, ("small", 0));
        rr.push(3, ("other", 0));
        rr.push(3, ("other", 1));
        let order: Vec<_> = std::iter::from_fn(|| rr.pop()).collect();
        assert_eq!(
            order,
            vec![
                ("bulk", 0),
                ("small", 0),
                ("other", 0),
                ("bulk", 1),
                ("other", 1),
                ("bulk", 2),
                ("bulk", 3)
            ]
        );
        assert!(rr.is_empty());
    }

    #[test]
    fn a_late_small_frame_waits_for_one_bulk_frame_at_most() {
        let mut rr = RoundRobin::default();
        for i in 0..1000 {
            rr.push(1, i);
        }
        assert_eq!(rr.pop(), Some(0));
        rr.push(2, -1);
        assert_eq!(rr.pop(), Some(1));
        assert_eq!(rr.pop(), Some(-1));
        assert_eq!(rr.len(), 998);
    }

    #[test]
    fn a_stream_that_drains_and_returns_goes_to_the_back() {
        let mut rr = RoundRobin::default();
        rr.push(1, 'a');
        assert_eq!(rr.pop(), Some('a'));
        rr.push(2, 'b');
        rr.push(1, 'c');
        assert_eq!(rr.pop(), Some('b'));
        assert_eq!(rr.pop(), Some('c'));
        assert_eq!(rr.pop(), None);
        assert!(rr.spare.len() <= SPARE_QUEUES);
    }
}
