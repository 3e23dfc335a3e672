//! Random erasing (timm's `RandomErasing`, as its GPU prefetcher applies it: on the normalised
//! batch, per sample): with probability `prob`, `count` boxes of 2%-33% of the image area and
//! aspect ratio in [0.3, 1/0.3] (log-uniform), each tried up to 10 times until it fits, are filled
//! with per-pixel normal values (`pixel`), one normal value per channel (`rand`) or zeros
//! (`const`). The boxes come from a generator keyed by (seed, step, rank, micro-batch, sample); the
//! normal values from libtorch's generator, which the engine seeds per step: resumes are exact.

use crate::error::Result;
use crate::rng::SplitMix64;
use tch::Tensor;

/// What fills an erased box (timm's `remode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EraseMode {
    /// A normal value per pixel and channel.
    Pixel,
    /// A normal value per channel.
    Rand,
    /// Zeros.
    Const,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ErasingConfig {
    pub prob: f64,
    pub mode: EraseMode,
    pub count: usize,
}

/// The boxes (top, left, height, width) erased in one (h, w) sample: timm's `_erase` draws.
pub fn boxes(cfg: &ErasingConfig, rng: &mut SplitMix64, h: i64, w: i64) -> Vec<(i64, i64, i64, i64)> {
    let mut out = Vec::new();
    if rng.uniform() >= cfg.prob {
        return out;
    }
    let area = (h * w) as f64;
    let (log_lo, log_hi) = (0.3f64.ln(), (1.0f64 / 0.3).ln());
    for _ in 0..cfg.count.max(1) {
        for _attempt in 0..10 {
            let target = rng.range(0.02, 1.0 / 3.0) * area / cfg.count.max(1) as f64;
            let aspect = rng.range(log_lo, log_hi).exp();
            let eh = (target * aspect).sqrt().round() as i64;
            let ew = (target / aspect).sqrt().round() as i64;
            if ew < w && eh < h && eh > 0 && ew > 0 {
                let top = rng.below((h - eh + 1) as u64) as i64;
                let left = rng.below((w - ew + 1) as u64) as i64;
                out.push((top, left, eh, ew));
                break;
            }
        }
    }
    out
}

/// The batch with boxes erased (a new tensor; `x` is not modified); the first `spared` images
/// are left as they are (timm's `num_splits`: the clean split with `resplit`).
pub fn erase(cfg: &ErasingConfig, x: &Tensor, keys: &[u64], spared: i64) -> Result<Tensor> {
    let mut out = x.f_zeros_like()?;
    tch::no_grad(|| out.f_copy_(x))?;
    let (n, c, h, w) = x.size4()?;
    for i in spared..n {
        let mut k = keys.to_vec();
        k.push(i as u64);
        let mut rng = SplitMix64::keyed(&k);
        for (top, left, eh, ew) in boxes(cfg, &mut rng, h, w) {
            let mut region = out.f_get(i)?.f_narrow(1, top, eh)?.f_narrow(2, left, ew)?;
            let opts = (x.kind(), x.device());
            let fill = match cfg.mode {
                EraseMode::Pixel => Tensor::f_randn([c, eh, ew], opts)?,
                EraseMode::Rand => Tensor::f_randn([c, 1, 1], opts)?.f_expand([c, eh, ew], false)?,
                EraseMode::Const => Tensor::f_zeros([c, eh, ew], opts)?,
            };
            tch::no_grad(|| region.f_copy_(&fill))?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn boxes_follow_timms_ranges() {
        let cfg = ErasingConfig { prob: 1.0, mode: EraseMode::Pixel, count: 1 };
        let mut rng = SplitMix64::keyed(&[1]);
        let (mut n, mut frac_sum) = (0, 0.0);
        for _ in 0..5000 {
            for (top, left, eh, ew) in boxes(&cfg, &mut rng, 64, 48) {
                assert!(top >= 0 && left >= 0 && top + eh <= 64 && left + ew <= 48);
                let frac = (eh * ew) as f64 / (64.0 * 48.0);
                assert!((0.015..0.36).contains(&frac), "area fraction {frac}");
                let ar = eh as f64 / ew as f64;
                assert!((0.25..=4.0).contains(&ar), "aspect {ar}");
                frac_sum += frac;
                n += 1;
            }
        }
        // Almost every draw fits at this size; the mean area is about (0.02 + 1/3) / 2.
        assert!(n > 4500, "{n}");
        assert!((frac_sum / n as f64 - 0.1767).abs() < 0.02, "{}", frac_sum / n as f64);
        let never = ErasingConfig { prob: 0.0, ..cfg };
        assert!(boxes(&never, &mut rng, 64, 48).is_empty());
    }

    #[test]
    fn erase_fills_only_the_boxes() {
        let x = Tensor::full([3, 3, 16, 16], 5.0, (Kind::Float, Device::Cpu));
        for mode in [EraseMode::Pixel, EraseMode::Rand, EraseMode::Const] {
            let cfg = ErasingConfig { prob: 1.0, mode, count: 1 };
            let y = erase(&cfg, &x, &[7], 0).unwrap();
            assert!(x.eq(5.0).all().int64_value(&[]) == 1, "x untouched");
            // resplit: the spared first image is untouched, the others erased as before.
            let spared = erase(&cfg, &x, &[7], 1).unwrap();
            assert!(spared.get(0).eq(5.0).all().int64_value(&[]) == 1, "{mode:?}: the clean split is spared");
            if mode == EraseMode::Const {
                assert!(spared.narrow(0, 1, 2).equal(&y.narrow(0, 1, 2)), "the rest draws the same boxes");
            }
            for i in 0..3 {
                let b = boxes(&cfg, &mut SplitMix64::keyed(&[7, i as u64]), 16, 16);
                let changed = y.get(i).ne(5.0).sum(Kind::Int64).int64_value(&[]);
                let area: i64 = b.iter().map(|(_, _, h, w)| 3 * h * w).sum();
                assert_eq!(changed, area, "{mode:?}: only the box changes");
                if mode == EraseMode::Const {
                    assert_eq!(y.get(i).eq(0.0).sum(Kind::Int64).int64_value(&[]), area);
                }
            }
        }
    }
}
