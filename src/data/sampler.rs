//! Which samples each rank sees in an epoch, with `torch.utils.data.DistributedSampler`'s rules:
//! a permutation that depends only on (seed, epoch); without `drop_last` the list is padded by
//! repeating its start until it divides by the world size, with it truncated; rank r takes every
//! world-th index starting at r. Batches are consecutive chunks of that list. Evaluation shards
//! `uneven`ly instead (no padding: every sample once over all ranks, so that sharded counts add up
//! to the single-process evaluation exactly).

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
}

impl Sampler {
    pub fn new(len: usize, shuffle: bool, seed: u64) -> Self {
        Self { len, shuffle, seed, rank: 0, world: 1, drop_last: false, uneven: false }
    }

    /// This rank's dataset indices for `epoch`.
    pub fn indices(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len).collect();
        if self.shuffle {
            // Fisher-Yates with a generator keyed by (seed, epoch) only.
            let mut rng = SplitMix64::keyed(&[self.seed, epoch, 0x5A3D_1E5E]);
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        let world = self.world.max(1);
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
        order.into_iter().skip(self.rank).step_by(world).collect()
    }

    /// Samples per rank per epoch.
    pub fn per_rank(&self) -> usize {
        let world = self.world.max(1);
        if self.uneven {
            (self.len + world - 1 - self.rank.min(world - 1)) / world
        } else if self.drop_last {
            self.len / world
        } else {
            self.len.div_ceil(world)
        }
    }
}
