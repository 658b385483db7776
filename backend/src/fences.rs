//! Fenced replies waiting for the renderer: one FIFO per timeline, completed in order.
//!
//! The global timeline (fences without INFO_RING_IDX) comes back from virglrenderer as 32-bit
//! ids in submission order, so a completion releases every waiting reply up to and including
//! the one with that id. A ring of a context releases every reply whose fence id is not above
//! the completed one. Rings complete independently of each other.

use std::collections::{BTreeMap, VecDeque};

use virgl_bridge::{FenceDone, FenceTimeline};

/// A reply waiting for its fence.
pub struct Pending<T> {
    pub fence_id: u64,
    pub item: T,
}

/// Waiting replies by timeline.
pub struct PendingFences<T> {
    queues: BTreeMap<FenceTimeline, VecDeque<Pending<T>>>,
}

impl<T> Default for PendingFences<T> {
    fn default() -> Self {
        PendingFences {
            queues: BTreeMap::new(),
        }
    }
}

impl<T> PendingFences<T> {
    /// Queues a reply behind its fence.
    pub fn push(&mut self, timeline: FenceTimeline, fence_id: u64, item: T) {
        self.queues
            .entry(timeline)
            .or_default()
            .push_back(Pending { fence_id, item });
    }

    /// The replies a completed fence releases, oldest first.
    pub fn complete(&mut self, done: FenceDone) -> Vec<T> {
        let Some(q) = self.queues.get_mut(&done.timeline) else {
            return Vec::new();
        };
        let n = match done.timeline {
            FenceTimeline::Global => q
                .iter()
                .position(|p| u64::from(p.fence_id as u32) == done.fence_id)
                .map_or(0, |i| i + 1),
            FenceTimeline::Ring { .. } => {
                q.iter().take_while(|p| p.fence_id <= done.fence_id).count()
            }
        };
        q.drain(..n).map(|p| p.item).collect()
    }

    /// Every reply waiting on a ring of `ctx_id` (the context is gone).
    pub fn take_context(&mut self, ctx_id: u32) -> Vec<T> {
        let keys: Vec<FenceTimeline> = self
            .queues
            .keys()
            .filter(|t| matches!(t, FenceTimeline::Ring { ctx_id: c, .. } if *c == ctx_id))
            .copied()
            .collect();
        keys.into_iter()
            .filter_map(|k| self.queues.remove(&k))
            .flat_map(|q| q.into_iter().map(|p| p.item))
            .collect()
    }

    /// The newest fence id waiting on the global timeline.
    pub fn last_global(&self) -> Option<u64> {
        self.queues
            .get(&FenceTimeline::Global)
            .and_then(|q| q.back())
            .map(|p| p.fence_id)
    }

    /// Replies waiting in all.
    pub fn len(&self) -> usize {
        self.queues.values().map(|q| q.len()).sum()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything (the queues were reset).
    pub fn clear(&mut self) {
        self.queues.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_complete_in_order_and_independently() {
        let mut p = PendingFences::default();
        let r0 = FenceTimeline::Ring {
            ctx_id: 1,
            ring_idx: 0,
        };
        let r1 = FenceTimeline::Ring {
            ctx_id: 1,
            ring_idx: 1,
        };
        for i in 1..=3 {
            p.push(r0, i, format!("r0-{i}"));
            p.push(r1, i, format!("r1-{i}"));
        }
        assert_eq!(
            p.complete(FenceDone {
                timeline: r1,
                fence_id: 2
            }),
            vec!["r1-1", "r1-2"]
        );
        assert_eq!(
            p.complete(FenceDone {
                timeline: r0,
                fence_id: 1
            }),
            vec!["r0-1"]
        );
        assert_eq!(
            p.complete(FenceDone {
                timeline: r0,
                fence_id: 9
            }),
            vec!["r0-2", "r0-3"]
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p.take_context(1), vec!["r1-3"]);
        assert!(p.is_empty());
    }

    #[test]
    fn global_matches_low_32_bits_and_releases_earlier_ones() {
        let mut p = PendingFences::default();
        let g = FenceTimeline::Global;
        p.push(g, (1 << 32) + 5, "a");
        p.push(g, (1 << 32) + 6, "b");
        p.push(g, (1 << 32) + 7, "c");
        assert_eq!(
            p.complete(FenceDone {
                timeline: g,
                fence_id: 42
            }),
            Vec::<&str>::new()
        );
        assert_eq!(
            p.complete(FenceDone {
                timeline: g,
                fence_id: 6
            }),
            vec!["a", "b"]
        );
        assert_eq!(p.last_global(), Some((1 << 32) + 7));
    }
}
