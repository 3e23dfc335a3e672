//! Image decoding to RGB. The format is sniffed from the bytes, not the extension (ImageNet has a
//! PNG inside a `.JPEG` file); grayscale and CMYK become RGB. EXIF orientation is ignored, as
//! torchvision's default PIL loader ignores it.

use crate::error::{Error, Result};
use std::path::Path;

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
    let img = reader.decode().map_err(|e| Error::file(path, format!("cannot decode image: {e}")))?;
    let rgb = img.into_rgb8();
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    Ok(RgbImage { width, height, pixels: rgb.into_raw() })
}

pub fn decode_file(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_bytes(&bytes, path)
}
