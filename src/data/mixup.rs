//! Mixup and CutMix on the device, per batch, with timm's `Mixup` semantics (mode "batch"): with
//! probability `prob` a batch is mixed with its reverse (`x.flip(0)`), by Mixup (`lam x + (1 -
//! lam) x.flip(0)`) or, chosen with `switch_prob` when both are on, CutMix (a box of the reversed
//! batch pasted in; its area corrects lam); lam ~ Beta(alpha, alpha). The targets become
//! `lam * onehot(y) + (1 - lam) * onehot(y.flip(0))` with label smoothing folded in (off = s / C,
//! on = 1 - s + off). Draws come from a generator keyed by (seed, step, rank, micro-batch), so a
//! resumed run mixes as the uninterrupted one did.
//!
//! Modes "elem" and "pair" (timm's `mode`): every sample i draws its own mix (whether, Mixup or
//! CutMix, lam, box) against sample N-1-i; in "pair" the two samples of a pair share one draw and
//! each takes the other's pixels. Vectorised on the device (per-sample lam and box masks).

use crate::error::Result;
use crate::rng::SplitMix64;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// timm's Mixup `mode`: one draw per batch, per pair of samples, or per sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MixMode {
    #[default]
    Batch,
    Pair,
    Elem,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MixupConfig {
    /// Mixup's Beta alpha (0: off).
    pub mixup_alpha: f64,
    /// CutMix's Beta alpha (0: off).
    pub cutmix_alpha: f64,
    /// CutMix box size as fractions of the image side, drawn uniformly in [min, max] (instead of
    /// from lam; lam then follows from the box).
    pub cutmix_minmax: Option<(f64, f64)>,
    /// Probability that a batch is mixed at all.
    pub prob: f64,
    /// Probability of CutMix rather than Mixup when both are on.
    pub switch_prob: f64,
    pub label_smoothing: f64,
    pub mode: MixMode,
}

impl MixupConfig {
    pub fn active(&self) -> bool {
        self.prob > 0.0 && (self.mixup_alpha > 0.0 || self.cutmix_alpha > 0.0 || self.cutmix_minmax.is_some())
    }
}

/// One batch's draw: lam, and the CutMix box (y0, y1, x0, x1) when it is CutMix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MixParams {
    pub lam: f64,
    pub cutmix_box: Option<(i64, i64, i64, i64)>,
}

/// Beta(a, a).
pub fn beta(rng: &mut SplitMix64, a: f64) -> f64 {
    rng.beta(a, a)
}

/// timm's `rand_bbox` / `rand_bbox_minmax` and the lam correction (`correct_lam`, always on as in
/// timm's train.py): the box of an (h, w) image and the lam its area implies.
pub fn cutmix_box(
    rng: &mut SplitMix64,
    h: i64,
    w: i64,
    lam: f64,
    minmax: Option<(f64, f64)>,
) -> (i64, i64, i64, i64, f64) {
    let (y0, y1, x0, x1) = match minmax {
        Some((lo, hi)) => {
            let cut_h = (h as f64 * rng.range(lo, hi)) as i64;
            let cut_w = (w as f64 * rng.range(lo, hi)) as i64;
            let y0 = rng.below((h - cut_h + 1).max(1) as u64) as i64;
            let x0 = rng.below((w - cut_w + 1).max(1) as u64) as i64;
            (y0, y0 + cut_h, x0, x0 + cut_w)
        }
        None => {
            let ratio = (1.0 - lam).sqrt();
            let (cut_h, cut_w) = ((h as f64 * ratio) as i64, (w as f64 * ratio) as i64);
            let cy = rng.below(h as u64) as i64;
            let cx = rng.below(w as u64) as i64;
            (
                (cy - cut_h / 2).clamp(0, h),
                (cy + cut_h / 2).clamp(0, h),
                (cx - cut_w / 2).clamp(0, w),
                (cx + cut_w / 2).clamp(0, w),
            )
        }
    };
    let lam = 1.0 - ((y1 - y0) * (x1 - x0)) as f64 / (h * w) as f64;
    (y0, y1, x0, x1, lam)
}

impl MixupConfig {
    /// timm's `_params_per_batch` (and the box) for a batch of (h, w) images.
    pub fn draw(&self, keys: &[u64], h: i64, w: i64) -> MixParams {
        let mut rng = SplitMix64::keyed(keys);
        let none = MixParams { lam: 1.0, cutmix_box: None };
        if !self.active() || rng.uniform() >= self.prob {
            return none;
        }
        let mixup_on = self.mixup_alpha > 0.0;
        let cutmix_on = self.cutmix_alpha > 0.0 || self.cutmix_minmax.is_some();
        let use_cutmix = match (mixup_on, cutmix_on) {
            (true, true) => rng.uniform() < self.switch_prob,
            (false, true) => true,
            _ => false,
        };
        let alpha = if use_cutmix { self.cutmix_alpha } else { self.mixup_alpha };
        let lam = if alpha > 0.0 { beta(&mut rng, alpha) } else { 1.0 };
        if !use_cutmix {
            return MixParams { lam, cutmix_box: None };
        }
        let (y0, y1, x0, x1, lam) = cutmix_box(&mut rng, h, w, lam, self.cutmix_minmax);
        MixParams { lam, cutmix_box: Some((y0, y1, x0, x1)) }
    }

    /// The draws for a batch of `n` (h, w) images: one for the whole batch (mode "batch"), else
    /// one per sample (timm's `_params_per_elem`; lam kept in float32 as timm's array; in "pair"
    /// sample N-1-i repeats sample i's draw).
    pub fn draw_samples(&self, keys: &[u64], n: usize, h: i64, w: i64) -> Vec<MixParams> {
        if self.mode == MixMode::Batch {
            return vec![self.draw(keys, h, w)];
        }
        let mut rng = SplitMix64::keyed(keys);
        let m = if self.mode == MixMode::Pair { n / 2 } else { n };
        let mixup_on = self.mixup_alpha > 0.0;
        let cutmix_on = self.cutmix_alpha > 0.0 || self.cutmix_minmax.is_some();
        let mut own: Vec<MixParams> = (0..m)
            .map(|_| {
                let use_cutmix = match (mixup_on, cutmix_on) {
                    (true, true) => rng.uniform() < self.switch_prob,
                    (false, true) => true,
                    _ => false,
                };
                let alpha = if use_cutmix { self.cutmix_alpha } else { self.mixup_alpha };
                let lam = if alpha > 0.0 { beta(&mut rng, alpha) as f32 as f64 } else { 1.0 };
                let lam = if rng.uniform() < self.prob { lam } else { 1.0 };
                if lam == 1.0 || !use_cutmix {
                    return MixParams { lam, cutmix_box: None };
                }
                let (y0, y1, x0, x1, lam) = cutmix_box(&mut rng, h, w, lam, self.cutmix_minmax);
                MixParams { lam: lam as f32 as f64, cutmix_box: Some((y0, y1, x0, x1)) }
            })
            .collect();
        if self.mode == MixMode::Pair {
            let mirrored: Vec<MixParams> = own.iter().rev().copied().collect();
            if n % 2 == 1 {
                own.push(MixParams { lam: 1.0, cutmix_box: None });
            }
            own.extend(mirrored);
        }
        own
    }

    /// The mixed batch and its soft targets for `draw_samples`' draws: timm's `_mix_batch`
    /// (one draw) or `_mix_elem` / `_mix_pair` (one per sample; the partner of i is N-1-i).
    pub fn apply_samples(
        &self,
        x: &Tensor,
        y: &Tensor,
        p: &[MixParams],
        num_classes: i64,
    ) -> Result<(Tensor, Tensor)> {
        if let [one] = p {
            return self.apply(x, y, one, num_classes);
        }
        let (n, h, w) = (p.len() as i64, x.size()[2], x.size()[3]);
        let dev = x.device();
        let col = |v: Vec<f32>| -> Result<Tensor> { Ok(Tensor::from_slice(&v).f_to_device(dev)?) };
        // Mixup samples blend with their partner; the others keep their pixels (lam 1 is exact).
        let blend: Vec<f32> =
            p.iter().map(|q| if q.cutmix_box.is_none() { q.lam as f32 } else { 1.0 }).collect();
        let blend = col(blend)?.f_view([n, 1, 1, 1])?.f_to_kind(x.kind())?;
        let flipped = x.f_flip([0])?;
        let mut out = (x * &blend + &flipped * (blend.f_neg()? + 1.0)).f_to_kind(x.kind())?;
        if p.iter().any(|q| q.cutmix_box.is_some()) {
            let boxes: Vec<[i64; 4]> =
                p.iter().map(|q| q.cutmix_box.map_or([0; 4], |b| [b.0, b.1, b.2, b.3])).collect();
            let edge = |k: usize| -> Result<Tensor> {
                let v: Vec<i64> = boxes.iter().map(|b| b[k]).collect();
                Ok(Tensor::from_slice(&v).f_to_device(dev)?.f_view([n, 1, 1, 1])?)
            };
            let rows = Tensor::f_arange(h, (Kind::Int64, dev))?.f_view([1, 1, h, 1])?;
            let cols = Tensor::f_arange(w, (Kind::Int64, dev))?.f_view([1, 1, 1, w])?;
            let inside = rows
                .f_ge_tensor(&edge(0)?)?
                .f_logical_and(&rows.f_lt_tensor(&edge(1)?)?)?
                .f_logical_and(&cols.f_ge_tensor(&edge(2)?)?)?
                .f_logical_and(&cols.f_lt_tensor(&edge(3)?)?)?;
            out = flipped.f_where_self(&inside, &out)?;
        }
        let lam = col(p.iter().map(|q| q.lam as f32).collect())?.f_view([n, 1])?;
        Ok((out, mixup_target_per_sample(y, num_classes, &lam, self.label_smoothing)?))
    }

    /// The mixed batch and its soft targets (timm's `Mixup.__call__`, mode "batch").
    pub fn apply(&self, x: &Tensor, y: &Tensor, p: &MixParams, num_classes: i64) -> Result<(Tensor, Tensor)> {
        let mixed = match p.cutmix_box {
            Some((y0, y1, x0, x1)) => {
                let mut out = x.f_zeros_like()?; // keeps x's memory format
                tch::no_grad(|| out.f_copy_(x))?;
                let flipped = x.f_flip([0])?;
                let src = flipped.f_narrow(2, y0, y1 - y0)?.f_narrow(3, x0, x1 - x0)?;
                tch::no_grad(|| out.f_narrow(2, y0, y1 - y0)?.f_narrow(3, x0, x1 - x0)?.f_copy_(&src))?;
                out
            }
            None if p.lam < 1.0 => (x * p.lam + x.f_flip([0])? * (1.0 - p.lam)).f_to_kind(x.kind())?,
            None => x.shallow_clone(),
        };
        Ok((mixed, mixup_target(y, num_classes, p.lam, self.label_smoothing)?))
    }
}

/// timm's smoothed one-hot targets: off = s / C everywhere, on = 1 - s + off at the label.
fn smoothed_one_hot(labels: &Tensor, num_classes: i64, smoothing: f64) -> Result<Tensor> {
    let off = smoothing / num_classes as f64;
    let base = Tensor::f_full([labels.size()[0], num_classes], off, (Kind::Float, labels.device()))?;
    Ok(base.f_scatter_value(1, &labels.f_view([-1, 1])?, 1.0 - smoothing + off)?)
}

/// `mixup_target` with one lam per sample (`lam`: [N, 1]).
pub fn mixup_target_per_sample(y: &Tensor, num_classes: i64, lam: &Tensor, smoothing: f64) -> Result<Tensor> {
    let (a, b) = (
        smoothed_one_hot(y, num_classes, smoothing)?,
        smoothed_one_hot(&y.f_flip([0])?, num_classes, smoothing)?,
    );
    Ok(a * lam + b * (lam.f_neg()? + 1.0))
}

/// timm's `mixup_target`: smoothed one-hot targets of `y`, mixed with those of `y.flip(0)`.
pub fn mixup_target(y: &Tensor, num_classes: i64, lam: f64, smoothing: f64) -> Result<Tensor> {
    let (a, b) = (
        smoothed_one_hot(y, num_classes, smoothing)?,
        smoothed_one_hot(&y.f_flip([0])?, num_classes, smoothing)?,
    );
    Ok(a * lam + b * (1.0 - lam))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_has_the_right_mean_and_variance() {
        // Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)).
        for a in [0.2f64, 1.0, 0.8] {
            let mut rng = SplitMix64::keyed(&[a.to_bits()]);
            let n = 200_000;
            let xs: Vec<f64> = (0..n).map(|_| beta(&mut rng, a)).collect();
            let mean = xs.iter().sum::<f64>() / n as f64;
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
            assert!((mean - 0.5).abs() < 0.005, "a {a}: mean {mean}");
            let want = 1.0 / (4.0 * (2.0 * a + 1.0));
            assert!((var - want).abs() < 0.01 * want.max(0.05), "a {a}: var {var} vs {want}");
            assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)));
        }
    }

    #[test]
    fn mixup_and_cutmix_follow_timm() {
        let x = Tensor::arange(2 * 4 * 4, (Kind::Float, tch::Device::Cpu)).reshape([2, 1, 4, 4]);
        let y = Tensor::from_slice(&[0i64, 2]);
        let cfg = MixupConfig {
            mixup_alpha: 1.0,
            cutmix_alpha: 0.0,
            cutmix_minmax: None,
            prob: 1.0,
            switch_prob: 0.5,
            label_smoothing: 0.1,
            mode: MixMode::Batch,
        };
        // Mixup at lam 0.7: x and targets mixed with the reversed batch.
        let (mx, t) = cfg.apply(&x, &y, &MixParams { lam: 0.7, cutmix_box: None }, 3).unwrap();
        let want = &x * 0.7 + x.flip([0]) * 0.3;
        assert!(mx.allclose(&want, 1e-6, 1e-6, false));
        // off = 0.1 / 3, on = 0.9 + off: sample 0 = 0.7 onehot(0) + 0.3 onehot(2).
        let t0 = Vec::<f32>::try_from(&t.get(0)).unwrap();
        let off = 0.1 / 3.0;
        let on = 0.9 + off;
        let expect = [0.7 * on + 0.3 * off, off, 0.7 * off + 0.3 * on];
        for (a, b) in t0.iter().zip(expect) {
            assert!((*a as f64 - b).abs() < 1e-6, "{t0:?} vs {expect:?}");
        }
        assert!(t.sum_dim_intlist(1, false, Kind::Double).allclose(
            &Tensor::ones([2], (Kind::Double, tch::Device::Cpu)),
            1e-6,
            1e-6,
            false
        ));
        // CutMix: the box comes from the reversed batch, the rest is untouched; lam = 1 - area.
        let p = MixParams { lam: 1.0 - 4.0 / 16.0, cutmix_box: Some((1, 3, 0, 2)) };
        let (cx, _) = cfg.apply(&x, &y, &p, 3).unwrap();
        let flipped = x.flip([0]);
        for yy in 0..4 {
            for xx in 0..4 {
                let inside = (1..3).contains(&yy) && (0..2).contains(&xx);
                let src = if inside { &flipped } else { &x };
                assert_eq!(cx.double_value(&[0, 0, yy, xx]), src.double_value(&[0, 0, yy, xx]));
            }
        }
        // The box's lam is the uncovered fraction, and draws are reproducible from their keys.
        let both = MixupConfig { cutmix_alpha: 1.0, ..cfg };
        let mut kinds = (0, 0);
        for k in 0..200u64 {
            let p = both.draw(&[3, k], 32, 32);
            assert_eq!(p, both.draw(&[3, k], 32, 32));
            match p.cutmix_box {
                Some((y0, y1, x0, x1)) => {
                    kinds.1 += 1;
                    assert!((p.lam - (1.0 - ((y1 - y0) * (x1 - x0)) as f64 / 1024.0)).abs() < 1e-12);
                }
                None => kinds.0 += 1,
            }
        }
        assert!(kinds.0 > 70 && kinds.1 > 70, "switch_prob 0.5 picks both: {kinds:?}");
        let never = MixupConfig { prob: 0.0, ..both };
        assert_eq!(never.draw(&[1], 8, 8), MixParams { lam: 1.0, cutmix_box: None });
    }

    #[test]
    fn mixed_batches_and_targets_equal_timms() {
        // tests/golden/make_mixup_golden.py: timm 1.0.31's Mixup._mix_batch and mixup_target with
        // lam (Mixup 0.3) and the CutMix box (rows 2..6, cols 1..5) fixed.
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/mixup.safetensors");
        let g = crate::model::weights::read(&p).unwrap().tensors;
        let cfg = MixupConfig {
            mixup_alpha: 1.0,
            cutmix_alpha: 1.0,
            cutmix_minmax: None,
            prob: 1.0,
            switch_prob: 0.5,
            label_smoothing: 0.1,
            mode: MixMode::Batch,
        };
        let (x, y) = (&g["x"], &g["y"]);
        let (mx, t) = cfg.apply(x, y, &MixParams { lam: 0.3, cutmix_box: None }, 5).unwrap();
        assert!(mx.allclose(&g["mixup.x"], 1e-6, 1e-6, false));
        assert!(t.allclose(&g["mixup.target"], 1e-7, 1e-7, false));
        let lam = g["cutmix.lam"].double_value(&[0]);
        let (cx, ct) = cfg.apply(x, y, &MixParams { lam, cutmix_box: Some((2, 6, 1, 5)) }, 5).unwrap();
        assert!(cx.equal(&g["cutmix.x"]));
        assert!(ct.allclose(&g["cutmix.target"], 1e-7, 1e-7, false));
        assert_eq!(lam, 0.75);
    }

    #[test]
    fn elem_and_pair_modes_equal_timms() {
        // tests/golden/make_mixup_golden.py: timm's _mix_elem / _mix_pair with the per-sample lams
        // and boxes fixed.
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/mixup.safetensors");
        let g = crate::model::weights::read(&p).unwrap().tensors;
        let (x, y) = (&g["x"], &g["y"]);
        let boxes = [(0, 4, 0, 4), (2, 6, 1, 5), (1, 3, 3, 8), (4, 8, 2, 6)];
        for mode in [MixMode::Elem, MixMode::Pair] {
            let name = if mode == MixMode::Elem { "elem" } else { "pair" };
            for cut in [false, true] {
                let kind = if cut { "cutmix" } else { "mixup" };
                let lams = Vec::<f64>::try_from(&g[&format!("{name}.{kind}.lam")].flatten(0, -1)).unwrap();
                let params: Vec<MixParams> = (0..4)
                    .map(|i| {
                        let k = if mode == MixMode::Pair { i.min(3 - i) } else { i };
                        MixParams { lam: lams[i], cutmix_box: cut.then_some(boxes[k]) }
                    })
                    .collect();
                let cfg = MixupConfig {
                    mixup_alpha: 1.0,
                    cutmix_alpha: 1.0,
                    cutmix_minmax: None,
                    prob: 1.0,
                    switch_prob: 0.5,
                    label_smoothing: 0.1,
                    mode,
                };
                let (mx, t) = cfg.apply_samples(x, y, &params, 5).unwrap();
                assert!(
                    mx.allclose(&g[&format!("{name}.{kind}.x")], 1e-6, 1e-6, false),
                    "{name} {kind}: images"
                );
                assert!(
                    t.allclose(&g[&format!("{name}.{kind}.target")], 1e-6, 1e-6, false),
                    "{name} {kind}: targets"
                );
            }
        }
        // Draws: pair mirrors, elem draws each sample; lam is float32 and a box's lam is its area's.
        let cfg = MixupConfig {
            mixup_alpha: 0.4,
            cutmix_alpha: 1.0,
            cutmix_minmax: None,
            prob: 0.8,
            switch_prob: 0.5,
            label_smoothing: 0.0,
            mode: MixMode::Pair,
        };
        let d = cfg.draw_samples(&[9], 8, 16, 16);
        assert_eq!(d.len(), 8);
        for i in 0..4 {
            assert_eq!(d[i], d[7 - i]);
        }
        let e = MixupConfig { mode: MixMode::Elem, ..cfg }.draw_samples(&[9], 64, 16, 16);
        assert_eq!(e.len(), 64);
        assert!(
            e.iter().any(|q| q.cutmix_box.is_some())
                && e.iter().any(|q| q.cutmix_box.is_none() && q.lam < 1.0)
        );
        for q in &e {
            assert_eq!(q.lam, q.lam as f32 as f64);
            if let Some((y0, y1, x0, x1)) = q.cutmix_box {
                assert!((q.lam - (1.0 - ((y1 - y0) * (x1 - x0)) as f64 / 256.0)).abs() < 1e-6);
            }
        }
    }
}
