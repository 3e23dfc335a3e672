//! Which samples each rank sees in an epoch, with `torch.utils.data.DistributedSampler`'s rules:
//! a permutation that depends only on (seed, epoch); without `drop_last` the list is padded by
//! repeating its start until it divides by the world size, with it truncated; rank r takes every
//! world-th index starting at r. Batches are consecutive chunks of that list. Evaluation shards
//! `uneven`ly instead (no padding: every sample once over all ranks, so that sharded counts add up
//! to the single-process evaluation exactly).
//!
//! With `repeats` > 1 it is timm's `RepeatAugSampler` (RASampler, `aug_repeats`): the shuffled
//! list has each sample `repeats` times in a row, is padded to divide by the world size and
//! sharded like DistributedSampler, and each rank keeps its first `selected` draws per epoch
//! (floor(len // 256 * 256 / world), timm's `selected_round = 256`; below 256 samples,
//! ceil(len / world)). Each copy of a sample carries its repeat number, so that its augmentation
//! differs from the other copies'.

use crate::rng::SplitMix64;

#[derive(Clone, Copy, Debug)]
pub struct Sampler {
    pub len: usize,
    pub shuffle: bool,
    pub seed: u64,
    pub rank: usize,
    pub world: usize,
    /// Drop the tail that does not divide by the world size (instead of padding).
    pub drop_last: bool,
    /// Neither pad nor drop: ranks' shares differ by at most one sample (evaluation).
    pub uneven: bool,
    /// Repeated augmentation: each sample this many times per epoch (0 or 1: off).
    pub repeats: usize,
}

impl Sampler {
    pub fn new(len: usize, shuffle: bool, seed: u64) -> Self {
        Self { len, shuffle, seed, rank: 0, world: 1, drop_last: false, uneven: false, repeats: 0 }
    }

    /// This rank's dataset indices for `epoch`.
    pub fn indices(&self, epoch: u64) -> Vec<usize> {
        self.draws(epoch).into_iter().map(|(i, _)| i).collect()
    }

    /// This rank's draws for `epoch`: (dataset index, repeat number; 0 without repeats).
    pub fn draws(&self, epoch: u64) -> Vec<(usize, usize)> {
        let mut order: Vec<usize> = (0..self.len).collect();
        if self.shuffle {
            // Fisher-Yates with a generator keyed by (seed, epoch) only.
            let mut rng = SplitMix64::keyed(&[self.seed, epoch, 0x5A3D_1E5E]);
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        let world = self.world.max(1);
        if self.repeats > 1 {
            let reps = self.repeats;
            let mut list: Vec<(usize, usize)> =
                order.iter().flat_map(|&i| (0..reps).map(move |k| (i, k))).collect();
            let total = (self.len * reps).div_ceil(world) * world;
            let n = list.len();
            for k in 0..total.saturating_sub(n) {
                list.push(list[k % n.max(1)]);
            }
            return list.into_iter().skip(self.rank).step_by(world).take(self.per_rank()).collect();
        }
        let total = if self.uneven {
            self.len
        } else if self.drop_last {
            self.len / world * world
        } else {
            self.len.div_ceil(world) * world
        };
        if total > order.len() && !order.is_empty() {
            let mut k = 0;
            while order.len() < total {
                order.push(order[k % self.len]);
                k += 1;
            }
        }
        order.truncate(total);
        order.into_iter().skip(self.rank).step_by(world).map(|i| (i, 0)).collect()
    }

    /// Samples per rank per epoch.
    pub fn per_rank(&self) -> usize {
        let world = self.world.max(1);
        if self.repeats > 1 {
            if self.len >= 256 {
                self.len / 256 * 256 / world
            } else {
                self.len.div_ceil(world)
            }
        } else if self.uneven {
            (self.len + world - 1 - self.rank.min(world - 1)) / world
        } else if self.drop_last {
            self.len / world
        } else {
            self.len.div_ceil(world)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// timm's RepeatAugSampler: copies in a row before sharding, padded, the first `selected`.
    #[test]
    fn repeated_augmentation_follows_timm() {
        let s = Sampler { repeats: 3, world: 2, rank: 0, ..Sampler::new(600, false, 0) };
        // 600 // 256 * 256 / 2 = 256 per rank.
        assert_eq!(s.per_rank(), 256);
        let d = s.draws(0);
        assert_eq!(d.len(), 256);
        // [0,0,0,1,1,1,...] sharded over 2 ranks: rank 0 takes positions 0, 2, 4, ...
        assert_eq!(&d[..4], &[(0, 0), (0, 2), (1, 1), (2, 0)]);
        let r1 = Sampler { rank: 1, ..s }.draws(0);
        assert_eq!(&r1[..3], &[(0, 1), (1, 0), (1, 2)]);
        // Shuffled: each epoch another order, every draw of a sample with a distinct repeat.
        let sh = Sampler { shuffle: true, world: 1, rank: 0, ..s };
        let (e0, e1) = (sh.draws(0), sh.draws(1));
        assert_ne!(e0, e1);
        assert_eq!(e0.len(), 512);
        for w in e0.chunks(3).take(10) {
            assert!(w.iter().all(|d| d.0 == w[0].0));
            assert_eq!(w.iter().map(|d| d.1).collect::<Vec<_>>(), vec![0, 1, 2]);
        }
        // Under 256 samples: every sample's copies, ceil(len / world) per rank.
        let small = Sampler { repeats: 2, world: 3, ..Sampler::new(10, true, 5) };
        assert_eq!(small.per_rank(), 4);
        assert_eq!(small.draws(0).len(), 4);
    }
}
