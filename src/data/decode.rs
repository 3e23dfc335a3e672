//! Image decoding to RGB. The format is sniffed from the bytes, not the extension (ImageNet has a
//! PNG inside a `.JPEG` file); grayscale and CMYK become RGB. EXIF orientation is ignored, as
//! torchvision's default PIL loader ignores it.

use crate::error::{Error, Result};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Images whose header claims more pixels than this are refused before any pixel buffer is
/// allocated (a 1.6 KB JPEG can claim 65000 x 65000: 12.7 GB of RGB). PIL's DecompressionBombError
/// threshold; ImageNet's largest train images have ~14 M pixels (`max_image_pixels` sets it).
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 178_956_970;
static MAX_IMAGE_PIXELS: AtomicU64 = AtomicU64::new(DEFAULT_MAX_IMAGE_PIXELS);

/// Sets the process's decode limit (pixels per image).
pub fn set_max_image_pixels(n: u64) {
    MAX_IMAGE_PIXELS.store(n, Ordering::Relaxed);
}

/// Refuses an image of `width` x `height` beyond the decode limit, naming the file.
pub fn check_pixels(width: usize, height: usize, path: &Path) -> Result<()> {
    let limit = MAX_IMAGE_PIXELS.load(Ordering::Relaxed);
    let pixels = width as u64 * height as u64;
    if pixels > limit {
        return Err(Error::file(
            path,
            format!(
                "its header claims {width} x {height} = {pixels} pixels, over the limit of {limit} \
                 (a decompression bomb? raise max_image_pixels for real images this large)"
            ),
        ));
    }
    Ok(())
}

/// An 8-bit RGB image, row-major HWC.
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

pub fn decode_bytes(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(Error::file(path, "empty file"));
    }
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    if reader.format().is_none() {
        return Err(Error::file(path, "not a recognised image format"));
    }
    // The header's size first: a separate reader, as reading the dimensions consumes one.
    let probe = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    let (w, h) =
        probe.into_dimensions().map_err(|e| Error::file(path, format!("cannot decode image: {e}")))?;
    check_pixels(w as usize, h as usize, path)?;
    let img = reader.decode().map_err(|e| Error::file(path, format!("cannot decode image: {e}")))?;
    let rgb = img.into_rgb8();
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    Ok(RgbImage { width, height, pixels: rgb.into_raw() })
}

pub fn decode_file(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_bytes(&bytes, path)
}
