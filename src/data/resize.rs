//! Antialiased bilinear and bicubic resampling of 8-bit RGB, with Pillow's arithmetic (what
//! torchvision's and timm's PIL paths run): the triangle or cubic (a = -0.5) filter stretched by
//! the downscale factor, coefficients normalised and quantised to 22 fractional bits, a horizontal
//! pass rounded to uint8, then a vertical pass.
//!
//! Coordinates: an `Axis` maps output pixels `window` of an `out_size`-pixel output to source
//! pixels of an `in_size`-pixel input whose `[box0, box1)` span is resized (Pillow's `box`).
//! Computing only a window of the output is how a center crop after a resize costs only the crop.

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The resampling filter (Pillow's `BILINEAR` and `BICUBIC`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    /// The triangle filter, support 1 (torchvision's default).
    #[default]
    Bilinear,
    /// Keys' cubic with a = -0.5, support 2 (timm's ResNets are evaluated with it).
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    /// Pillow's `bilinear_filter` / `bicubic_filter`.
    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => (1.0 - x).max(0.0),
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Filter::Bilinear => "bilinear",
            Filter::Bicubic => "bicubic",
        }
    }
}

/// Per output pixel: first source index and the fixed-point weights.
pub struct Axis {
    starts: Vec<usize>,
    counts: Vec<usize>,
    ksize: usize,
    weights: Vec<i32>,
}

impl Axis {
    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`, for outputs `window`, reading
    /// source pixels in `[lo, hi)` only (Pillow: `[0, in_size)`; a crop-then-resize: the crop).
    pub fn new(
        filter: Filter,
        lo: usize,
        hi: usize,
        box0: f64,
        box1: f64,
        out_size: usize,
        window: std::ops::Range<usize>,
    ) -> Self {
        let scale = (box1 - box0) / out_size as f64;
        let filterscale = scale.max(1.0);
        let ss = 1.0 / filterscale;
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let n = window.len();
        let mut starts = Vec::with_capacity(n);
        let mut counts = Vec::with_capacity(n);
        let mut weights = vec![0i32; n * ksize];
        let mut k = vec![0f64; ksize];
        for (o, xx) in window.enumerate() {
            let center = box0 + (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(lo as i64) as usize; // C's truncating cast
            let xmax = ((center + support + 0.5) as i64).clamp(lo as i64, hi as i64) as usize;
            let count = xmax.saturating_sub(xmin).min(ksize);
            let mut total = 0.0;
            for (x, kx) in k.iter_mut().enumerate().take(count) {
                let t = ((x + xmin) as f64 - center + 0.5) * ss;
                *kx = filter.weight(t);
                total += *kx;
            }
            for x in 0..count {
                let w = if total != 0.0 { k[x] / total } else { k[x] };
                let f = w * (1u32 << PRECISION_BITS) as f64;
                weights[o * ksize + x] = if w < 0.0 { (f - 0.5).trunc() } else { (f + 0.5).trunc() } as i32;
            }
            starts.push(xmin);
            counts.push(count);
        }
        Self { starts, counts, ksize, weights }
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The source indices `[lo, hi)` this axis reads.
    pub fn source_range(&self) -> (usize, usize) {
        let lo = self.starts.iter().copied().min().unwrap_or(0);
        let hi = self.starts.iter().zip(&self.counts).map(|(s, c)| s + c).max().unwrap_or(0);
        (lo, hi)
    }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// A source image view: RGB rows of `stride` bytes whose first pixel sits at (`x0`, `y0`) in the
/// coordinates the axes use. It must cover the axes' source ranges.
pub struct Source<'a> {
    pub pixels: &'a [u8],
    pub stride: usize,
    pub x0: usize,
    pub y0: usize,
}

/// Resamples `src` through `h` (columns) and `v` (rows) into `dst`, CHW uint8 of
/// `3 x v.len() x h.len()`, mirrored left-right when `flip`. `tmp` is scratch space.
///
/// Pillow runs the horizontal pass first; `vertical_first` swaps the order, which is cheaper when
/// the vertical pass shrinks the image (fewer rows for the scalar horizontal pass) and differs from
/// Pillow only in where the intermediate rounds to uint8.
#[multiversion::multiversion(targets("x86_64+avx2+fma", "x86_64+sse4.1"))]
pub fn resample(
    src: &Source,
    h: &Axis,
    v: &Axis,
    flip: bool,
    vertical_first: bool,
    tmp: &mut Vec<u8>,
    dst: &mut [u8],
) {
    let (out_w, out_h) = (h.len(), v.len());
    debug_assert_eq!(dst.len(), 3 * out_w * out_h);
    let plane = out_w * out_h;
    let half = 1i32 << (PRECISION_BITS - 1);
    if vertical_first {
        // Vertical pass over the columns the horizontal pass needs, whole rows at a time, stored
        // transposed (column-major: one contiguous `out_h x 3` run per source column) so that the
        // horizontal pass also accumulates whole contiguous runs instead of gathering taps.
        let (col_lo, col_hi) = h.source_range();
        let cols = col_hi - col_lo;
        let run = out_h * 3;
        tmp.clear();
        tmp.resize(cols * run, 0);
        let mut acc = vec![0i32; cols * 3];
        // Rows are rounded whole (vectorised) into a block of BLOCK rows, which is then
        // transposed: each source column receives BLOCK pixels in one contiguous store.
        const BLOCK: usize = 16;
        let line = cols * 3;
        let mut block = vec![0u8; BLOCK * line];
        for y0 in (0..out_h).step_by(BLOCK) {
            let rows = BLOCK.min(out_h - y0);
            for (r, row8) in block.chunks_exact_mut(line).take(rows).enumerate() {
                let yo = y0 + r;
                acc.fill(half);
                let ws = &v.weights[yo * v.ksize..yo * v.ksize + v.counts[yo]];
                for (k, &w) in ws.iter().enumerate() {
                    let start = (v.starts[yo] + k - src.y0) * src.stride + (col_lo - src.x0) * 3;
                    for (a, &p) in acc.iter_mut().zip(&src.pixels[start..start + line]) {
                        *a += p as i32 * w;
                    }
                }
                clip_run(&acc, row8);
            }
            for (x, column) in tmp.chunks_exact_mut(run).enumerate() {
                let out = &mut column[y0 * 3..(y0 + rows) * 3];
                for (o, row8) in out.chunks_exact_mut(3).zip(block.chunks_exact(line)) {
                    o.copy_from_slice(&row8[x * 3..x * 3 + 3]);
                }
            }
        }
        // Horizontal pass: per output column, a weighted sum of whole source-column runs.
        let mut acc = vec![0i32; run];
        let mut col8 = vec![0u8; run];
        for xo in 0..out_w {
            acc.fill(half);
            let start = h.starts[xo] - col_lo;
            let ws = &h.weights[xo * h.ksize..xo * h.ksize + h.counts[xo]];
            for (k, &w) in ws.iter().enumerate() {
                for (a, &p) in acc.iter_mut().zip(&tmp[(start + k) * run..(start + k + 1) * run]) {
                    *a += p as i32 * w;
                }
            }
            clip_run(&acc, &mut col8);
            let xd = if flip { out_w - 1 - xo } else { xo };
            scatter_column(&col8, dst, plane, out_w, xd);
        }
        return;
    }
    let (row_lo, row_hi) = v.source_range();
    // Horizontal pass over the rows the vertical pass needs; HWC uint8 as in Pillow.
    tmp.clear();
    tmp.resize((row_hi - row_lo) * out_w * 3, 0);
    for (r, y) in (row_lo..row_hi).enumerate() {
        let row = &src.pixels[(y - src.y0) * src.stride..];
        let out = &mut tmp[r * out_w * 3..(r + 1) * out_w * 3];
        for xo in 0..out_w {
            let start = h.starts[xo] - src.x0;
            let ws = &h.weights[xo * h.ksize..xo * h.ksize + h.counts[xo]];
            let (a0, a1, a2) = taps(ws, &row[start * 3..(start + ws.len()) * 3], half);
            out[xo * 3] = a0;
            out[xo * 3 + 1] = a1;
            out[xo * 3 + 2] = a2;
        }
    }
    // Vertical pass: accumulate whole rows (vectorisable), then scatter into the CHW planes.
    let mut acc = vec![0i32; out_w * 3];
    let mut row8 = vec![0u8; out_w * 3];
    let (r, rest) = dst.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for yo in 0..out_h {
        acc.fill(half);
        let start = v.starts[yo] - row_lo;
        let ws = &v.weights[yo * v.ksize..yo * v.ksize + v.counts[yo]];
        for (k, &w) in ws.iter().enumerate() {
            let row = &tmp[(start + k) * out_w * 3..(start + k + 1) * out_w * 3];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += p as i32 * w;
            }
        }
        clip_run(&acc, &mut row8);
        let line = yo * out_w..(yo + 1) * out_w;
        let (r, g, b) = (&mut r[line.clone()], &mut g[line.clone()], &mut b[line]);
        if flip {
            for (((pr, pg), pb), px) in
                r.iter_mut().rev().zip(g.iter_mut().rev()).zip(b.iter_mut().rev()).zip(row8.chunks_exact(3))
            {
                (*pr, *pg, *pb) = (px[0], px[1], px[2]);
            }
        } else {
            for (((pr, pg), pb), px) in
                r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()).zip(row8.chunks_exact(3))
            {
                (*pr, *pg, *pb) = (px[0], px[1], px[2]);
            }
        }
    }
}

/// `acc >> PRECISION_BITS` clamped to 0..=255, a whole run at once (vectorises).
#[inline(always)]
fn clip_run(acc: &[i32], out: &mut [u8]) {
    for (o, &a) in out.iter_mut().zip(acc) {
        *o = (a >> PRECISION_BITS).clamp(0, 255) as u8;
    }
}

/// Writes one output column of RGB pixels (`out_h x 3`) into column `x` of the CHW planes.
#[inline(always)]
fn scatter_column(px: &[u8], dst: &mut [u8], plane: usize, out_w: usize, x: usize) {
    let (r, rest) = dst.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (((pr, pg), pb), px) in r[x..]
        .iter_mut()
        .step_by(out_w)
        .zip(g[x..].iter_mut().step_by(out_w))
        .zip(b[x..].iter_mut().step_by(out_w))
        .zip(px.chunks_exact(3))
    {
        (*pr, *pg, *pb) = (px[0], px[1], px[2]);
    }
}

/// One output pixel of a horizontal pass: the weighted sum of RGB pixels `px`.
#[inline(always)]
fn taps(ws: &[i32], px: &[u8], half: i32) -> (u8, u8, u8) {
    let (mut a0, mut a1, mut a2) = (half, half, half);
    for (w, p) in ws.iter().zip(px.chunks_exact(3)) {
        a0 += p[0] as i32 * w;
        a1 += p[1] as i32 * w;
        a2 += p[2] as i32 * w;
    }
    (clip8(a0), clip8(a1), clip8(a2))
}
