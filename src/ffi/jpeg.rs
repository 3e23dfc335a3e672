//! JPEG decoding through libjpeg-turbo (built and bundled by `turbojpeg-sys`), via a small C shim
//! over the libjpeg API (jpeg_shim.c): DCT-domain scaling (num/8), decoding only a region, and
//! stopping after the region's last row.

use std::ffi::{c_char, c_int, c_uchar, c_ulong};
// Links the static libjpeg-turbo that jpeg_shim.c calls into (nothing else uses the crate).
extern crate turbojpeg_sys;

extern "C" {
    fn rt_jpeg_header(
        data: *const c_uchar,
        len: c_ulong,
        w: *mut c_int,
        h: *mut c_int,
        colorspace: *mut c_int,
        msg: *mut c_char,
        msg_len: usize,
    ) -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn rt_jpeg_decode(
        data: *const c_uchar,
        len: c_ulong,
        num: c_int,
        x: c_int,
        y: c_int,
        w: c_int,
        h: c_int,
        out: *mut c_uchar,
        out_cap: usize,
        rx: *mut c_int,
        ry: *mut c_int,
        rw: *mut c_int,
        rh: *mut c_int,
        msg: *mut c_char,
        msg_len: usize,
    ) -> c_int;
}

/// What a JPEG header says.
#[derive(Clone, Copy, Debug)]
pub struct JpegHeader {
    pub width: usize,
    pub height: usize,
    pub colorspace: ColorSpace,
}

/// The colour space a JPEG is stored in (libjpeg's J_COLOR_SPACE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ColorSpace {
    Gray,
    Rgb,
    YCbCr,
    Cmyk,
    Ycck,
    Unknown,
}

/// A decoded region of a (scaled) JPEG: RGB rows of `width * 3` bytes whose top-left pixel sits at
/// (`x`, `y`) of the scaled image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

/// Size of `dim` at scale `num/8`, as libjpeg computes it (rounded up).
pub fn scaled(dim: usize, num: usize) -> usize {
    (dim * num).div_ceil(8)
}

/// The widest iMCU (4:1:1 subsampling, 32 px): how far a region's left edge may move left.
const MAX_IMCU: usize = 32;

fn message(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

pub fn header(data: &[u8]) -> Result<JpegHeader, String> {
    let (mut w, mut h, mut cs) = (0, 0, 0);
    let mut msg = [0u8; 256];
    // SAFETY: valid slice and out-pointers; the shim writes at most msg.len() bytes of message.
    let rc = unsafe {
        rt_jpeg_header(
            data.as_ptr(),
            data.len() as c_ulong,
            &mut w,
            &mut h,
            &mut cs,
            msg.as_mut_ptr() as *mut c_char,
            msg.len(),
        )
    };
    if rc != 0 {
        return Err(message(&msg));
    }
    if w <= 0 || h <= 0 {
        return Err(format!("bad JPEG dimensions {w}x{h}"));
    }
    let colorspace = match cs {
        1 => ColorSpace::Gray,
        2 => ColorSpace::Rgb,
        3 => ColorSpace::YCbCr,
        4 => ColorSpace::Cmyk,
        5 => ColorSpace::Ycck,
        _ => ColorSpace::Unknown,
    };
    Ok(JpegHeader { width: w as usize, height: h as usize, colorspace })
}

/// Decodes `data` at scale `num/8` (1..=8) into RGB in `out`. With `want = Some(region)` (scaled
/// coordinates, inside the scaled image) only that region is decoded; its left edge moves left
/// to the iMCU boundary, so the returned region may be wider. Truncated files are errors (as PIL
/// treats them); other libjpeg warnings are not. CMYK files are errors (the caller falls back).
pub fn decode(
    data: &[u8],
    header: &JpegHeader,
    num: usize,
    want: Option<Region>,
    out: &mut Vec<u8>,
) -> Result<Region, String> {
    let num = num.clamp(1, 8);
    let (sw, sh) = (scaled(header.width, num), scaled(header.height, num));
    let r = match want {
        Some(r) => {
            let x = r.x.min(sw - 1);
            let y = r.y.min(sh - 1);
            Region { x, y, width: r.width.clamp(1, sw - x), height: r.height.clamp(1, sh - y) }
        }
        None => Region { x: 0, y: 0, width: sw, height: sh },
    };
    let cap = (r.width + MAX_IMCU).min(sw) * r.height * 3;
    out.clear();
    out.resize(cap, 0);
    let (mut rx, mut ry, mut rw, mut rh) = (0, 0, 0, 0);
    let mut msg = [0u8; 256];
    // SAFETY: valid input slice; `out` holds `cap` bytes, which the shim checks before writing;
    // valid out-pointers; the message buffer's length is passed.
    let rc = unsafe {
        rt_jpeg_decode(
            data.as_ptr(),
            data.len() as c_ulong,
            num as c_int,
            r.x as c_int,
            r.y as c_int,
            r.width as c_int,
            r.height as c_int,
            out.as_mut_ptr(),
            cap,
            &mut rx,
            &mut ry,
            &mut rw,
            &mut rh,
            msg.as_mut_ptr() as *mut c_char,
            msg.len(),
        )
    };
    if rc != 0 {
        return Err(message(&msg));
    }
    let region = Region { x: rx as usize, y: ry as usize, width: rw as usize, height: rh as usize };
    out.truncate(region.width * region.height * 3);
    Ok(region)
}
