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
//!
//! WebDataset shards read as a stream (`ShardStream`, timm's wds order) shuffle shards instead of
//! samples: the shards in an order drawn from (seed, epoch), their samples concatenated, rank r
//! taking the r-th of `world` equal contiguous slices of that stream (the tail of fewer than
//! `world` samples dropped, so every rank has the same number of steps), and the slice passed
//! through a shuffle buffer (webdataset's `shuffle(n)`) seeded by (seed, epoch, rank). Each rank
//! thus reads about 1/world of the shards, in order; every draw is a function of those numbers
//! alone, so a resumed epoch re-derives the buffer's state exactly.

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

/// How a split of WebDataset shards is ordered each epoch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ShardOrder {
    /// timm's: shards shuffled, each rank an equal contiguous slice, a shuffle buffer.
    #[default]
    Stream,
    /// One permutation of all samples, as an ImageFolder's (local shards only).
    Global,
}

/// The shards of a split read as a stream: their lengths (samples, in the split's order) and the
/// shuffle buffer's size (0 or 1: no sample shuffle within the stream).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardStream {
    pub lengths: Vec<usize>,
    pub buffer: usize,
}

impl Sampler {
    /// This rank's draws for `epoch` when the dataset is read as a shard stream (see the module
    /// doc). Evaluation (`uneven`) takes contiguous, unshuffled shares of the split.
    pub fn stream_draws(&self, stream: &ShardStream, epoch: u64) -> Vec<(usize, usize)> {
        let world = self.world.max(1);
        let starts: Vec<usize> = stream
            .lengths
            .iter()
            .scan(0, |acc, n| {
                let s = *acc;
                *acc += n;
                Some(s)
            })
            .collect();
        let mut shards: Vec<usize> = (0..stream.lengths.len()).collect();
        if self.shuffle {
            let mut rng = SplitMix64::keyed(&[self.seed, epoch, 0x5A4D_0DE2]);
            for i in (1..shards.len()).rev() {
                shards.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        let (from, to) = self.stream_slice(stream.lengths.iter().sum());
        let slice: Vec<usize> = shards
            .iter()
            .flat_map(|&s| starts[s]..starts[s] + stream.lengths[s])
            .skip(from)
            .take(to - from)
            .collect();
        if !self.shuffle || stream.buffer <= 1 || world == 0 {
            return slice.into_iter().map(|i| (i, 0)).collect();
        }
        // webdataset's shuffle buffer: fill it, then each sample in sends a random one out.
        let mut rng = SplitMix64::keyed(&[self.seed, epoch, self.rank as u64, 0xB0FF_E12D]);
        let mut buf = Vec::with_capacity(stream.buffer);
        let mut out = Vec::with_capacity(slice.len());
        for i in slice {
            buf.push(i);
            if buf.len() >= stream.buffer {
                out.push((buf.swap_remove(rng.below(buf.len() as u64) as usize), 0));
            }
        }
        while !buf.is_empty() {
            out.push((buf.swap_remove(rng.below(buf.len() as u64) as usize), 0));
        }
        out
    }

    /// This rank's [from, to) positions in the epoch's shard stream of `total` samples: equal
    /// slices, the tail of fewer than `world` samples dropped (evaluation: shares differing by at
    /// most one, nothing dropped).
    fn stream_slice(&self, total: usize) -> (usize, usize) {
        let (world, rank) = (self.world.max(1), self.rank);
        if self.uneven {
            let (base, extra) = (total / world, total % world);
            let from = rank * base + rank.min(extra);
            (from, from + base + usize::from(rank < extra))
        } else {
            let per = total / world;
            (rank * per, (rank + 1) * per)
        }
    }

    /// Samples per rank per epoch of a shard stream.
    pub fn stream_per_rank(&self, stream: &ShardStream) -> usize {
        let (from, to) = self.stream_slice(stream.lengths.iter().sum());
        to - from
    }

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

    /// The shard stream: equal steps on every rank (tail dropped), each rank's draws from
    /// contiguous stretches of whole shards, every sample at most once per epoch, a permutation
    /// within the buffer's reach, other orders in other epochs, and the same draws every time.
    #[test]
    fn shard_streams_split_evenly_and_shuffle_within_the_buffer() {
        let stream = ShardStream { lengths: vec![10, 7, 10, 3, 10], buffer: 4 };
        let total = 40;
        let s = Sampler { world: 3, ..Sampler::new(total, true, 7) };
        let ranks: Vec<Vec<usize>> = (0..3)
            .map(|r| Sampler { rank: r, ..s }.stream_draws(&stream, 2).iter().map(|d| d.0).collect())
            .collect();
        assert!(ranks
            .iter()
            .all(|r| r.len() == 13 && Sampler { rank: 0, ..s }.stream_per_rank(&stream) == 13));
        let mut all: Vec<usize> = ranks.concat();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 39, "one sample (40 mod 3) dropped, none twice");
        // Unshuffled buffer: the slice is the shards' samples in the drawn shard order.
        let plain = Sampler { rank: 1, ..s }.stream_draws(&ShardStream { buffer: 0, ..stream.clone() }, 2);
        let mut sorted = ranks[1].clone();
        sorted.sort();
        let mut p: Vec<usize> = plain.iter().map(|d| d.0).collect();
        p.sort();
        assert_eq!(sorted, p, "the buffer permutes the rank's slice");
        // Within reach: the k-th draw is among the first k + buffer samples of the slice.
        let pos: std::collections::HashMap<usize, usize> =
            plain.iter().enumerate().map(|(k, d)| (d.0, k)).collect();
        for (k, i) in ranks[1].iter().enumerate() {
            assert!(pos[i] < k + 4);
        }
        assert_eq!(
            Sampler { rank: 1, ..s }.stream_draws(&stream, 2),
            Sampler { rank: 1, ..s }.stream_draws(&stream, 2)
        );
        assert_ne!(
            Sampler { rank: 1, ..s }.stream_draws(&stream, 3),
            Sampler { rank: 1, ..s }.stream_draws(&stream, 2)
        );
        // Evaluation: contiguous shares in split order, nothing dropped.
        let e = Sampler { uneven: true, shuffle: false, ..s };
        let shares: Vec<Vec<usize>> = (0..3)
            .map(|r| Sampler { rank: r, ..e }.stream_draws(&stream, 0).iter().map(|d| d.0).collect())
            .collect();
        assert_eq!(shares.concat(), (0..40).collect::<Vec<_>>());
        assert_eq!(shares.iter().map(Vec::len).collect::<Vec<_>>(), [14, 13, 13]);
    }

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
