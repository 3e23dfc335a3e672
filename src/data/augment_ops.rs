//! The image operations of the augmentation policies, on a uint8 planar RGB image (CHW, as the
//! decode workers produce it), with Pillow's arithmetic: what torchvision's functional ops and
//! timm's `auto_augment.py` run on PIL images. Each function names the Pillow routine it follows;
//! tests/augment.rs checks them against Pillow 13 / torchvision 0.26 / timm 1.0.31 outputs.
//!
//! - Affine warps (`Image.transform(AFFINE)`): the output pixel (x, y) reads the input at
//!   a·(x + ½, y + ½). Nearest takes Pillow's three engines (a pure scale/translate table, 16.16
//!   fixed point, float), bilinear and bicubic its generic per-pixel filters; outside: `fill`.
//! - Enhancements (`ImageEnhance`): `Image.blend(degenerate, image, factor)` in float32,
//!   truncated (clipped when extrapolating); the degenerate image is black (brightness), the
//!   ITU-R 601 grey (color), the grey mean (contrast) or the 3x3 SMOOTH filter (sharpness).
//! - Lookup tables (`ImageOps`): posterize, solarize, solarize-add, autocontrast, equalize, invert.

/// Resampling of the affine warps (Pillow's NEAREST, BILINEAR, BICUBIC transform filters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interp {
    Nearest,
    Bilinear,
    Bicubic,
}

/// Per-thread buffers the ops reuse.
#[derive(Default)]
pub struct Scratch {
    bytes: Vec<u8>,
    floats: Vec<f32>,
    index: Vec<u32>,
    /// AugMix's float32 sum and its chain image.
    pub(super) mix: Vec<f32>,
    pub(super) chain: Vec<u8>,
}

/// A planar RGB uint8 image: `px[c * h * w + y * w + x]`.
pub struct Planes<'a> {
    pub px: &'a mut [u8],
    pub h: usize,
    pub w: usize,
}

impl Planes<'_> {
    fn plane(&self) -> usize {
        self.h * self.w
    }
}

/// Pillow's `COORD`: -1 below zero, else truncation.
#[inline]
fn coord(v: f64) -> i64 {
    if v < 0.0 {
        -1
    } else {
        v as i64
    }
}

/// Pillow's `FLOOR`, without libm's call (baseline x86-64 has no rounding instruction): the
/// truncation, one less for negative non-integers. Exact for |v| < 2^63, saturating beyond.
#[inline]
fn floor_i(v: f64) -> i64 {
    let t = v as i64;
    t.saturating_sub(i64::from((t as f64) > v))
}

/// `Image.transform(size, AFFINE, a, resample, fillcolor=fill)` at the image's own size.
pub fn affine(img: &mut Planes, a: [f64; 6], interp: Interp, fill: [u8; 3], s: &mut Scratch) {
    let src = &mut s.bytes;
    src.clear();
    src.extend_from_slice(img.px);
    match interp {
        Interp::Nearest => affine_nearest(src, img, &a, fill, &mut s.index),
        Interp::Bilinear | Interp::Bicubic => affine_filtered(src, img, &a, interp, fill),
    }
}

/// Marks a pixel whose source lies outside the image (it takes the fill).
const OUTSIDE: u32 = u32::MAX;

/// `ImagingTransformAffine` with NEAREST: the scale engine when the matrix has no rotation or
/// shear, 16.16 fixed point when the corners stay within ±32768, else floats.
fn affine_nearest(src: &[u8], img: &mut Planes, a: &[f64; 6], fill: [u8; 3], map: &mut Vec<u32>) {
    let (h, w, plane) = (img.h, img.w, img.plane());
    let (hi, wi) = (h as i64, w as i64);
    // First where each output pixel reads (Pillow's engines below), then one gather per plane.
    map.clear();
    map.resize(plane, OUTSIDE);
    let mut put = |o: usize, yin: i64, xin: i64| {
        if (0..wi).contains(&xin) && (0..hi).contains(&yin) {
            map[o] = (yin as usize * w + xin as usize) as u32;
        }
    };
    nearest_map(a, h, w, &mut put);
    for (c, &f) in fill.iter().enumerate() {
        let (s, d) = (&src[c * plane..(c + 1) * plane], &mut img.px[c * plane..(c + 1) * plane]);
        for (d, &i) in d.iter_mut().zip(map.iter()) {
            *d = if i == OUTSIDE { f } else { s[i as usize] };
        }
    }
}

/// Calls `put(output index, yin, xin)` for every output pixel, with Pillow's coordinates.
fn nearest_map(a: &[f64; 6], h: usize, w: usize, put: &mut impl FnMut(usize, i64, i64)) {
    if a[1] == 0.0 && a[3] == 0.0 {
        // ImagingScaleAffine
        let mut xo = a[2] + a[0] * 0.5;
        let xin: Vec<i64> = (0..w)
            .map(|_| {
                let v = coord(xo);
                xo += a[0];
                v
            })
            .collect();
        let mut yo = a[5] + a[4] * 0.5;
        for y in 0..h {
            let yin = coord(yo);
            for (x, &xi) in xin.iter().enumerate() {
                put(y * w + x, yin, xi);
            }
            yo += a[4];
        }
        return;
    }
    let fits = |x: f64, y: f64| {
        (x * a[0] + y * a[1] + a[2]).abs() < 32768.0 && (x * a[3] + y * a[4] + a[5]).abs() < 32768.0
    };
    let (wf, hf) = (w as f64, h as f64);
    if fits(0.0, 0.0) && fits(wf, hf) && fits(0.0, hf) && fits(wf, 0.0) {
        // affine_fixed
        let fix = |v: f64| floor_i(v * 65536.0 + 0.5) as i32;
        let (a0, a1, a3, a4) = (fix(a[0]), fix(a[1]), fix(a[3]), fix(a[4]));
        let mut a2 = fix(a[2] + a[0] * 0.5 + a[1] * 0.5);
        let mut a5 = fix(a[5] + a[3] * 0.5 + a[4] * 0.5);
        for y in 0..h {
            let (mut xx, mut yy) = (a2, a5);
            for x in 0..w {
                put(y * w + x, (yy >> 16) as i64, (xx >> 16) as i64);
                xx = xx.wrapping_add(a0);
                yy = yy.wrapping_add(a3);
            }
            a2 = a2.wrapping_add(a1);
            a5 = a5.wrapping_add(a4);
        }
        return;
    }
    let mut xo = a[2] + a[1] * 0.5 + a[0] * 0.5;
    let mut yo = a[5] + a[4] * 0.5 + a[3] * 0.5;
    for y in 0..h {
        let (mut xx, mut yy) = (xo, yo);
        for x in 0..w {
            put(y * w + x, coord(yy), coord(xx));
            xx += a[0];
            yy += a[3];
        }
        xo += a[1];
        yo += a[4];
    }
}

/// Where one output pixel of the filtered warp reads: 4 columns and 4 row offsets (bilinear
/// uses the first 2 of each), the fractions, and whether it lies inside the input at all.
#[derive(Clone, Copy, Default)]
struct Tap {
    cols: [u32; 4],
    rows: [u32; 4],
    dx: f64,
    dy: f64,
    inside: bool,
}

/// `ImagingGenericTransform` with `affine_transform` and the bilinear / bicubic RGB filters.
/// Row by row: the taps of a row first (shared by the three planes), then each plane.
fn affine_filtered(src: &[u8], img: &mut Planes, a: &[f64; 6], interp: Interp, fill: [u8; 3]) {
    let (h, w, plane) = (img.h, img.w, img.plane());
    let (hi, wi) = (h as i64, w as i64);
    let xclip = |x: i64| x.clamp(0, wi - 1) as u32;
    let bicubic = interp == Interp::Bicubic;
    let support = if bicubic { 4 } else { 2 };
    let mut taps = vec![Tap::default(); w];
    let src: Vec<&[u8]> = src.chunks_exact(plane).collect();
    let [src_r, src_g, src_b] = src[..] else { return };
    let [out_r, out_g, out_b] = &mut img.px.chunks_exact_mut(plane).collect::<Vec<_>>()[..] else { return };
    for y in 0..h {
        for (x, t) in taps.iter_mut().enumerate() {
            let (xin, yin) = (x as f64 + 0.5, y as f64 + 0.5);
            let xs = a[0] * xin + a[1] * yin + a[2];
            let ys = a[3] * xin + a[4] * yin + a[5];
            t.inside = !(xs < 0.0 || xs >= w as f64 || ys < 0.0 || ys >= h as f64);
            if !t.inside {
                continue;
            }
            let (xs, ys) = (xs - 0.5, ys - 0.5);
            let (x0, y0) = (floor_i(xs), floor_i(ys));
            (t.dx, t.dy) = (xs - x0 as f64, ys - y0 as f64);
            // Bicubic reads from x0 - 1 / y0 - 1, bilinear from x0 / y0. Pillow reads the first row
            // clipped and the next ones only when inside, else repeats the previous value: the
            // same as repeating the previous row.
            let (xf, yf) = if bicubic { (x0 - 1, y0 - 1) } else { (x0, y0) };
            for k in 0..support {
                t.cols[k] = xclip(xf + k as i64);
                let yk = yf + k as i64;
                t.rows[k] = if k == 0 {
                    (yk.clamp(0, hi - 1) as usize * w) as u32
                } else if (0..hi).contains(&yk) {
                    (yk as usize * w) as u32
                } else {
                    t.rows[k - 1]
                };
            }
        }
        let src = [src_r, src_g, src_b];
        let row = y * w..(y + 1) * w;
        let (r, g, b) = (&mut out_r[row.clone()], &mut out_g[row.clone()], &mut out_b[row]);
        for (j, t) in taps.chunks(LANES).enumerate() {
            let span = j * LANES..j * LANES + t.len();
            let out = [&mut r[span.clone()], &mut g[span.clone()], &mut b[span]];
            if bicubic {
                bicubic_lanes(src, t, fill, out);
            } else {
                bilinear_lanes(src, t, fill, out);
            }
        }
    }
}

/// Output pixels computed together: the gathers stay scalar (one 4-byte load per row where the
/// columns are consecutive, the three planes together), the filter arithmetic runs over arrays of
/// this many lanes, which the compiler vectorises. Each lane does Pillow's operations in Pillow's
/// order (no fused multiply-adds), so the results are bit for bit the scalar ones.
const LANES: usize = 8;

/// The `N` consecutive-or-clipped columns of row offset `row` of plane `p` (one load when they
/// are consecutive, the common case away from the borders).
#[inline(always)]
fn gather<const N: usize>(p: &[u8], row: u32, cols: &[u32; 4]) -> [u8; N] {
    let base = (row + cols[0]) as usize;
    if cols[N - 1] == cols[0] + N as u32 - 1 {
        let mut v = [0u8; N];
        v.copy_from_slice(&p[base..base + N]);
        v
    } else {
        std::array::from_fn(|k| p[(row + cols[k]) as usize])
    }
}

/// Pillow's `bicubic_filter32RGB` for up to LANES pixels (`taps.len()`) of the three planes.
#[inline]
fn bicubic_lanes(src: [&[u8]; 3], taps: &[Tap], fill: [u8; 3], out: [&mut [u8]; 3]) {
    // q[c][r][k][j]: plane c, row r, column k of pixel j's 4x4 neighbourhood. Outside pixels'
    // taps hold in-range indices (a previous pixel's, or zeros), read and then discarded.
    let mut q = [[[[0u8; LANES]; 4]; 4]; 3];
    let (mut dx, mut dy) = ([0f64; LANES], [0f64; LANES]);
    for (j, t) in taps.iter().enumerate() {
        for (r, &row) in t.rows.iter().enumerate() {
            for (qc, p) in q.iter_mut().zip(src) {
                let v: [u8; 4] = gather(p, row, &t.cols);
                for k in 0..4 {
                    qc[r][k][j] = v[k];
                }
            }
        }
        (dx[j], dy[j]) = (t.dx, t.dy);
    }
    for ((qc, out), fill) in q.iter().zip(out).zip(fill) {
        let mut rows = [[0f64; LANES]; 4];
        for (row, q) in rows.iter_mut().zip(qc) {
            let v = q.map(|k| k.map(f64::from));
            cubic_lanes(&v, &dx, row);
        }
        let mut v = [0f64; LANES];
        cubic_lanes(&rows, &dy, &mut v);
        for ((o, t), &v) in out.iter_mut().zip(taps).zip(&v) {
            *o = if !t.inside {
                fill
            } else if v <= 0.0 {
                0
            } else if v >= 255.0 {
                255
            } else {
                v as u8
            };
        }
    }
}

/// `cubic` over LANES pixels: out[j] = cubic([v[0][j], v[1][j], v[2][j], v[3][j]], d[j]).
#[inline]
fn cubic_lanes(v: &[[f64; LANES]; 4], d: &[f64; LANES], out: &mut [f64; LANES]) {
    for j in 0..LANES {
        out[j] = cubic([v[0][j], v[1][j], v[2][j], v[3][j]], d[j]);
    }
}

/// Pillow's `bilinear_filter32RGB` for up to LANES pixels of the three planes.
#[inline]
fn bilinear_lanes(src: [&[u8]; 3], taps: &[Tap], fill: [u8; 3], out: [&mut [u8]; 3]) {
    // q[c][r][k][j] as in `bicubic_lanes`, 2 x 2.
    let mut q = [[[[0u8; LANES]; 2]; 2]; 3];
    let (mut dx, mut dy) = ([0f64; LANES], [0f64; LANES]);
    for (j, t) in taps.iter().enumerate() {
        for r in 0..2 {
            for (qc, p) in q.iter_mut().zip(src) {
                let v: [u8; 2] = gather(p, t.rows[r], &t.cols);
                (qc[r][0][j], qc[r][1][j]) = (v[0], v[1]);
            }
        }
        (dx[j], dy[j]) = (t.dx, t.dy);
    }
    for ((qc, out), fill) in q.iter().zip(out).zip(fill) {
        let mut v = [0f64; LANES];
        for j in 0..LANES {
            let lerp = |r: usize| {
                let (va, vb) = (i32::from(qc[r][0][j]), i32::from(qc[r][1][j]));
                va as f64 + (vb - va) as f64 * dx[j]
            };
            let (v1, v2) = (lerp(0), lerp(1));
            v[j] = v1 + (v2 - v1) * dy[j];
        }
        for ((o, t), &v) in out.iter_mut().zip(taps).zip(&v) {
            *o = if t.inside { v as u8 } else { fill }; // within [0, 255]
        }
    }
}

/// Pillow's `BICUBIC` macro (a = -1 cubic convolution), in its order of operations.
#[inline]
fn cubic(v: [f64; 4], d: f64) -> f64 {
    let p1 = v[1];
    let p2 = -v[0] + v[2];
    let p3 = 2.0 * (v[0] - v[1]) + v[2] - v[3];
    let p4 = -v[0] + v[1] - v[2] + v[3];
    p1 + d * (p2 + d * (p3 + d * p4))
}

/// Python's `round(v, 15)` (correctly rounded through the decimal string, as CPython does).
fn round15(v: f64) -> f64 {
    format!("{v:.15}").parse().unwrap_or(v)
}

/// `Image.rotate(degrees, resample, expand=False, fillcolor=fill)`: counter-clockwise about the
/// centre; 0, 180 (and 90, 270 on a square) are exact transposes, as in Pillow.
pub fn rotate(img: &mut Planes, degrees: f64, interp: Interp, fill: [u8; 3], s: &mut Scratch) {
    let angle = degrees.rem_euclid(360.0);
    if angle == 0.0 {
        return;
    }
    let square = img.h == img.w;
    if angle == 180.0 || (square && (angle == 90.0 || angle == 270.0)) {
        let src = &mut s.bytes;
        src.clear();
        src.extend_from_slice(img.px);
        let (h, w, plane) = (img.h, img.w, img.plane());
        for c in 0..3 {
            let (s, d) = (&src[c * plane..(c + 1) * plane], &mut img.px[c * plane..(c + 1) * plane]);
            for r in 0..h {
                for col in 0..w {
                    d[r * w + col] = match angle as u32 {
                        180 => s[(h - 1 - r) * w + (w - 1 - col)],
                        90 => s[col * w + (w - 1 - r)], // Transpose.ROTATE_90
                        _ => s[(h - 1 - col) * w + r],  // Transpose.ROTATE_270
                    };
                }
            }
        }
        return;
    }
    let (cx, cy) = (img.w as f64 / 2.0, img.h as f64 / 2.0);
    let t = -angle.to_radians();
    let mut m = [round15(t.cos()), round15(t.sin()), 0.0, round15(-t.sin()), round15(t.cos()), 0.0];
    let (x, y) = (-cx, -cy);
    let (m2, m5) = (m[0] * x + m[1] * y + m[2], m[3] * x + m[4] * y + m[5]);
    m[2] = m2 + cx;
    m[5] = m5 + cy;
    affine(img, m, interp, fill, s);
}

/// torchvision's `_get_inverse_affine_matrix(center, angle, translate, scale, shear)` (degrees).
pub fn inverse_affine_matrix(
    center: [f64; 2],
    angle: f64,
    translate: [f64; 2],
    scale: f64,
    shear: [f64; 2],
) -> [f64; 6] {
    let (rot, sx, sy) = (angle.to_radians(), shear[0].to_radians(), shear[1].to_radians());
    let ([cx, cy], [tx, ty]) = (center, translate);
    let a = (rot - sy).cos() / sy.cos();
    let b = -(rot - sy).cos() * sx.tan() / sy.cos() - rot.sin();
    let c = (rot - sy).sin() / sy.cos();
    let d = -(rot - sy).sin() * sx.tan() / sy.cos() + rot.cos();
    let mut m = [d, -b, 0.0, -c, a, 0.0].map(|v| v / scale);
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty);
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty);
    m[2] += cx;
    m[5] += cy;
    m
}

/// One value of `Image.blend(degenerate, image, alpha)`: float32, truncated; clipped when
/// extrapolating (`alpha` outside [0, 1]).
#[inline]
fn blend1(d: u8, v: u8, alpha: f32) -> u8 {
    let t = d as f32 + alpha * (v as i32 - d as i32) as f32;
    if (0.0..=1.0).contains(&alpha) {
        t as u8
    } else {
        t.clamp(0.0, 255.0) as u8
    }
}

/// `Image.blend(img, other, alpha)` for alpha in [0, 1] (`other`: the same layout as `img`).
pub fn blend_with(img: &mut Planes, other: &[u8], alpha: f32) {
    img.px.iter_mut().zip(other).for_each(|(v, &o)| *v = blend1(*v, o, alpha));
}

/// Blend towards a constant degenerate image: a lookup table of `blend1`.
fn blend_const(img: &mut Planes, d: u8, alpha: f64) {
    let alpha = alpha as f32;
    let lut: [u8; 256] = std::array::from_fn(|v| blend1(d, v as u8, alpha));
    for v in img.px.iter_mut() {
        *v = lut[*v as usize];
    }
}

/// Blend towards a degenerate image of the same layout (`deg_plane(c)` is channel c's plane).
fn blend_planes<'d>(img: &mut Planes, alpha: f64, deg_plane: impl Fn(usize) -> &'d [u8]) {
    let (alpha, plane) = (alpha as f32, img.plane());
    let inside = (0.0..=1.0).contains(&alpha);
    for c in 0..3 {
        let d = deg_plane(c);
        let px = &mut img.px[c * plane..(c + 1) * plane];
        // The same arithmetic as `blend1`, with its branch hoisted so that the loops vectorise.
        let t = |dv: u8, v: u8| dv as f32 + alpha * (v as i32 - dv as i32) as f32;
        if inside {
            px.iter_mut().zip(d).for_each(|(v, &dv)| *v = t(dv, *v) as u8);
        } else {
            px.iter_mut().zip(d).for_each(|(v, &dv)| *v = t(dv, *v).clamp(0.0, 255.0) as u8);
        }
    }
}

/// Pillow's RGB -> L: (R·19595 + G·38470 + B·7471 + 0x8000) >> 16.
fn grey(img: &Planes, out: &mut Vec<u8>) {
    let plane = img.plane();
    let (r, rest) = img.px.split_at(plane);
    let (g, b) = rest.split_at(plane);
    out.clear();
    out.extend(r.iter().zip(g).zip(&b[..plane]).map(|((&r, &g), &b)| {
        ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
    }));
}

/// torchvision's `rgb_to_grayscale(img, num_output_channels=3)` on a PIL image: Pillow's
/// `convert("L")` (ITU-R 601-2 luma, 16.16 fixed point) copied into the three planes.
pub fn grayscale(img: &mut Planes, s: &mut Scratch) {
    grey(img, &mut s.bytes);
    let plane = img.plane();
    for c in img.px.chunks_exact_mut(plane) {
        c.copy_from_slice(&s.bytes[..plane]);
    }
}

/// torchvision's `gaussian_blur(img, [k, k], [sigma, sigma])` on a uint8 image: the float32
/// kernel exp(-x²/2σ²) over x = -(k-1)/2..(k-1)/2, normalised; reflect padding (mirroring
/// about the edge pixel, indices clamped when the image is smaller than the kernel, where
/// torchvision refuses); rounded half to even. torchvision convolves once with the outer
/// product of the kernel; this runs it as two 1-D passes in float32, which agrees but for
/// values within float32 rounding of a .5 tie (one level off; tests/augment.rs measures it).
pub fn gaussian_blur(img: &mut Planes, k: usize, sigma: f32, s: &mut Scratch) {
    let (h, w) = (img.h, img.w);
    let half = (k as i64 - 1) / 2;
    // torch.linspace(-half, half, k) is exact here: integers.
    let pdf: Vec<f32> =
        (0..k as i64).map(|i| (-0.5f32 * ((i - half) as f32 / sigma).powi(2)).exp()).collect();
    let sum: f32 = pdf.iter().sum();
    let kernel: Vec<f32> = pdf.iter().map(|p| p / sum).collect();
    let reflect = |i: i64, n: usize| -> usize {
        let n = n as i64;
        let mut i = i;
        if n == 1 {
            return 0;
        }
        while i < 0 || i >= n {
            i = if i < 0 { -i } else { 2 * (n - 1) - i };
        }
        i as usize
    };
    let plane = h * w;
    let half = half as usize;
    s.floats.clear();
    s.floats.resize(plane, 0.0);
    let mut acc = vec![0f32; w];
    let mut padded: Vec<f32> = Vec::with_capacity(w + 2 * half);
    for c in img.px.chunks_exact_mut(plane) {
        // Horizontal pass over a reflect-padded row into floats, tap by tap (vectorises over x).
        for y in 0..h {
            padded.clear();
            padded.extend((0..w + 2 * half).map(|x| c[y * w + reflect(x as i64 - half as i64, w)] as f32));
            let out = &mut s.floats[y * w..(y + 1) * w];
            out.iter_mut().for_each(|o| *o = 0.0);
            for (j, kv) in kernel.iter().enumerate() {
                for (o, v) in out.iter_mut().zip(&padded[j..j + w]) {
                    *o += kv * v;
                }
            }
        }
        // Vertical pass, row by row (the taps' rows reflected), back to bytes.
        for y in 0..h {
            acc.iter_mut().for_each(|a| *a = 0.0);
            for (i, kv) in kernel.iter().enumerate() {
                let r = reflect(y as i64 + i as i64 - half as i64, h);
                for (a, v) in acc.iter_mut().zip(&s.floats[r * w..(r + 1) * w]) {
                    *a += kv * v;
                }
            }
            for (o, a) in c[y * w..(y + 1) * w].iter_mut().zip(&acc) {
                *o = a.round_ties_even().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// `ImageEnhance.Brightness(img).enhance(factor)`.
pub fn brightness(img: &mut Planes, factor: f64) {
    blend_const(img, 0, factor);
}

/// `ImageEnhance.Color(img).enhance(factor)` (torchvision's `adjust_saturation`).
pub fn color(img: &mut Planes, factor: f64, s: &mut Scratch) {
    grey(img, &mut s.bytes);
    let g = &s.bytes[..];
    blend_planes(img, factor, |_| g);
}

/// `ImageEnhance.Contrast(img).enhance(factor)`: towards the grey image's mean, rounded.
pub fn contrast(img: &mut Planes, factor: f64, s: &mut Scratch) {
    grey(img, &mut s.bytes);
    let sum: u64 = s.bytes.iter().map(|&v| v as u64).sum();
    let mean = (sum as f64 / s.bytes.len().max(1) as f64 + 0.5) as u8;
    blend_const(img, mean, factor);
}

/// `ImageEnhance.Sharpness(img).enhance(factor)`: towards `filter(SMOOTH)` (3x3, 1 1 1 / 1 5 1 /
/// 1 1 1, divided by 13 in float32; the border rows and columns copied), as `ImagingFilter3x3`.
pub fn sharpness(img: &mut Planes, factor: f64, s: &mut Scratch) {
    let (h, w, plane) = (img.h, img.w, img.plane());
    let smooth = &mut s.bytes;
    smooth.clear();
    smooth.extend_from_slice(img.px);
    if h >= 3 && w >= 3 {
        let (k, k5) = (1.0f32 / 13.0, 5.0f32 / 13.0);
        // Each row's two horizontal sums (as an outer row, and as the centre row), in Pillow's
        // float order, so that the per-pixel sums below vectorise across x.
        let f = &mut s.floats;
        f.clear();
        f.resize(2 * plane, 0.0);
        let (outer, centre) = f.split_at_mut(plane);
        for c in 0..3 {
            let src = &img.px[c * plane..(c + 1) * plane];
            for y in 0..h {
                let r = &src[y * w..(y + 1) * w];
                let (o, m) = (&mut outer[y * w..(y + 1) * w], &mut centre[y * w..(y + 1) * w]);
                for x in 1..w - 1 {
                    let (a, b, d) = (r[x - 1] as f32, r[x] as f32, r[x + 1] as f32);
                    o[x] = a * k + b * k + d * k;
                    m[x] = a * k + b * k5 + d * k;
                }
            }
            let dst = &mut smooth[c * plane..(c + 1) * plane];
            for y in 1..h - 1 {
                let below = &outer[(y + 1) * w..(y + 2) * w];
                let here = &centre[y * w..(y + 1) * w];
                let above = &outer[(y - 1) * w..y * w];
                let out = &mut dst[y * w..(y + 1) * w];
                for x in 1..w - 1 {
                    // Pillow's order: 0.5, then the row below, this row, the row above.
                    out[x] = (((0.5f32 + below[x]) + here[x]) + above[x]).clamp(0.0, 255.0) as u8;
                }
            }
        }
    }
    let smooth = &s.bytes[..];
    blend_planes(img, factor, |c| &smooth[c * plane..(c + 1) * plane]);
}

/// Pillow's RGB -> HSV (`rgb2hsv_row`, after colorsys), with its float32/float64 steps.
fn rgb_to_hsv(r: u8, g: u8, b: u8) -> (u8, u8, u8) {
    let (maxc, minc) = (r.max(g).max(b), r.min(g).min(b));
    if minc == maxc {
        return (0, 0, maxc);
    }
    let cr = (maxc - minc) as f32;
    let s = cr / maxc as f32;
    let (rc, gc, bc) = ((maxc - r) as f32 / cr, (maxc - g) as f32 / cr, (maxc - b) as f32 / cr);
    let h: f32 = if r == maxc {
        bc - gc
    } else if g == maxc {
        (2.0 + rc as f64 - bc as f64) as f32
    } else {
        (4.0 + gc as f64 - rc as f64) as f32
    };
    let h = ((h as f64 / 6.0 + 1.0) % 1.0) as f32;
    let clip = |v: f64| (v as i32).clamp(0, 255) as u8;
    (clip(h as f64 * 255.0), clip(s as f64 * 255.0), maxc)
}

/// Pillow's HSV -> RGB (`hsv2rgb`).
fn hsv_to_rgb(h: u8, s: u8, v: u8) -> (u8, u8, u8) {
    if s == 0 {
        return (v, v, v);
    }
    let hd = h as f32 as f64 * 6.0 / 255.0;
    let i = hd.floor() as i32;
    let f = (hd - i as f32 as f64) as f32;
    let fs = (s as f32 as f64 / 255.0) as f32;
    let vf = v as f32 as f64;
    let clip = |x: f64| (x.round() as i32).clamp(0, 255) as u8;
    let p = clip(vf * (1.0 - fs as f64));
    let q = clip(vf * (1.0 - (fs * f) as f64));
    let t = clip(vf * (1.0 - fs as f64 * (1.0 - f as f64)));
    match i % 6 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// torchvision's `adjust_hue` on a PIL image: to HSV, H shifted by `int(factor * 255)` modulo
/// 256, back to RGB (`factor` in [-0.5, 0.5]).
pub fn hue(img: &mut Planes, factor: f64) {
    let shift = (factor * 255.0) as i32 as u8; // np.int32(...).astype(np.uint8): wraps
    let plane = img.plane();
    let (r, rest) = img.px.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b[..plane].iter_mut()) {
        let (h, s, v) = rgb_to_hsv(*r, *g, *b);
        (*r, *g, *b) = hsv_to_rgb(h.wrapping_add(shift), s, v);
    }
}

fn apply_lut(img: &mut Planes, lut: &[[u8; 256]; 3]) {
    let plane = img.plane();
    for (c, table) in lut.iter().enumerate() {
        for v in &mut img.px[c * plane..(c + 1) * plane] {
            *v = table[*v as usize];
        }
    }
}

fn same_lut(f: impl Fn(usize) -> u8) -> [[u8; 256]; 3] {
    let t: [u8; 256] = std::array::from_fn(f);
    [t; 3]
}

/// `ImageOps.posterize(img, bits)`: keep the top `bits` bits (8 or more: unchanged, as timm).
pub fn posterize(img: &mut Planes, bits: i64) {
    if bits >= 8 {
        return;
    }
    let mask = !((1u32 << (8 - bits.clamp(0, 8))) - 1) as u8;
    let lut = same_lut(|i| i as u8 & mask);
    apply_lut(img, &lut);
}

/// `ImageOps.solarize(img, threshold)`: values at or above the threshold inverted.
pub fn solarize(img: &mut Planes, threshold: f64) {
    let lut = same_lut(|i| if (i as f64) < threshold { i as u8 } else { 255 - i as u8 });
    apply_lut(img, &lut);
}

/// timm's `solarize_add(img, add, thresh=128)`: `add` added below the threshold, capped at 255.
pub fn solarize_add(img: &mut Planes, add: i64, threshold: i64) {
    let lut = same_lut(|i| if (i as i64) < threshold { (i as i64 + add).min(255) as u8 } else { i as u8 });
    apply_lut(img, &lut);
}

/// `ImageOps.invert`.
pub fn invert(img: &mut Planes) {
    for v in img.px.iter_mut() {
        *v = 255 - *v;
    }
}

fn histograms(img: &Planes) -> [[u64; 256]; 3] {
    let plane = img.plane();
    let mut h = [[0u64; 256]; 3];
    for (c, hc) in h.iter_mut().enumerate() {
        for &v in &img.px[c * plane..(c + 1) * plane] {
            hc[v as usize] += 1;
        }
    }
    h
}

/// `ImageOps.autocontrast(img)`: each channel stretched from its [lo, hi] to [0, 255].
pub fn autocontrast(img: &mut Planes) {
    let hist = histograms(img);
    let lut: [[u8; 256]; 3] = std::array::from_fn(|c| {
        let h = &hist[c];
        let lo = (0..256).find(|&i| h[i] != 0).unwrap_or(255);
        let hi = (0..256).rev().find(|&i| h[i] != 0).unwrap_or(0);
        if hi <= lo {
            return std::array::from_fn(|i| i as u8);
        }
        let scale = 255.0 / (hi - lo) as f64;
        let offset = -(lo as f64) * scale;
        std::array::from_fn(|i| ((i as f64 * scale + offset) as i64).clamp(0, 255) as u8)
    });
    apply_lut(img, &lut);
}

/// `ImageOps.equalize(img)`: each channel through its cumulative histogram, Pillow's integer steps.
pub fn equalize(img: &mut Planes) {
    let hist = histograms(img);
    let lut: [[u8; 256]; 3] = std::array::from_fn(|c| {
        let h = &hist[c];
        let used: Vec<u64> = h.iter().copied().filter(|&n| n != 0).collect();
        let identity = std::array::from_fn(|i| i as u8);
        if used.len() <= 1 {
            return identity;
        }
        let step = (used.iter().sum::<u64>() - used[used.len() - 1]) / 255;
        if step == 0 {
            return identity;
        }
        let mut n = step / 2;
        std::array::from_fn(|i| {
            let v = (n / step).min(255) as u8;
            n += h[i];
            v
        })
    });
    apply_lut(img, &lut);
}
