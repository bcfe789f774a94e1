//! Public images (profile photos, group icons): the one kind of media the server decodes.
//! [`process`] refuses what is not a PNG or JPEG, or is larger than the pixel limit
//! (checked from the header before any pixel is decoded, against decompression bombs),
//! applies the EXIF orientation, and re-encodes square renditions of fixed sizes from the
//! pixels alone, so no EXIF (GPS position, camera serial), XMP or ICC metadata survives.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

/// Edge lengths of the renditions, px (square, centre-cropped).
pub const SIZES: [u32; 2] = [96, 640];
/// JPEG quality of the renditions.
const QUALITY: u8 = 85;

/// Why an image was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Not a PNG or JPEG, or corrupt.
    #[error("not a supported image (PNG or JPEG): {0}")]
    NotAnImage(String),
    /// More pixels than allowed (or more bytes).
    #[error("image too large: {0}")]
    TooLarge(String),
    /// Encoding the rendition failed.
    #[error("could not encode the thumbnail: {0}")]
    Encode(String),
}

/// One rendition.
#[derive(Debug, Clone)]
pub struct Rendition {
    /// Edge length, px.
    pub size: u32,
    /// A baseline JPEG without metadata.
    pub jpeg: Vec<u8>,
}

/// Decodes `bytes` (at most `max_bytes`, at most `max_pixels` pixels) and returns one
/// JPEG per entry of [`SIZES`] (a smaller source is not enlarged).
pub fn process(bytes: &[u8], max_bytes: usize, max_pixels: u64) -> Result<Vec<Rendition>, ImageError> {
    if bytes.len() > max_bytes {
        return Err(ImageError::TooLarge(format!("{} bytes, at most {max_bytes}", bytes.len())));
    }
    let format = image::guess_format(bytes).map_err(|e| ImageError::NotAnImage(e.to_string()))?;
    if !matches!(format, ImageFormat::Png | ImageFormat::Jpeg) {
        return Err(ImageError::NotAnImage(format!("{format:?}")));
    }
    // The header alone first: a 100 000 × 100 000 PNG is a few hundred bytes of zeros.
    let (w, h) = ImageReader::with_format(Cursor::new(bytes), format).into_dimensions().map_err(|e| ImageError::NotAnImage(e.to_string()))?;
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(ImageError::TooLarge(format!("{w}×{h} pixels, at most {max_pixels}")));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(max_pixels.saturating_mul(8));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| ImageError::NotAnImage(e.to_string()))?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| match e {
        image::ImageError::Limits(l) => ImageError::TooLarge(l.to_string()),
        other => ImageError::NotAnImage(other.to_string()),
    })?;
    image.apply_orientation(orientation);
    let side = image.width().min(image.height());
    let square = image.crop_imm((image.width() - side) / 2, (image.height() - side) / 2, side, side);
    SIZES
        .iter()
        .map(|&size| {
            let edge = size.min(side).max(1);
            let scaled = square.resize_exact(edge, edge, image::imageops::FilterType::Lanczos3).to_rgb8();
            let mut jpeg = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, QUALITY)
                .encode_image(&scaled)
                .map_err(|e| ImageError::Encode(e.to_string()))?;
            Ok(Rendition { size, jpeg })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 90]));
        let mut out = Vec::new();
        DynamicImage::ImageRgb8(img).write_to(&mut Cursor::new(&mut out), ImageFormat::Png).expect("png");
        out
    }

    #[test]
    fn renditions_are_square_jpegs_of_the_fixed_sizes() {
        let out = process(&png(1200, 800), 10 << 20, 40_000_000).expect("processed");
        assert_eq!(out.iter().map(|r| r.size).collect::<Vec<_>>(), SIZES.to_vec());
        for r in &out {
            let img = image::load_from_memory(&r.jpeg).expect("decodes");
            assert_eq!((img.width(), img.height()), (r.size, r.size));
            assert_eq!(image::guess_format(&r.jpeg).expect("format"), ImageFormat::Jpeg);
        }
        let small = process(&png(50, 60), 10 << 20, 40_000_000).expect("small");
        assert_eq!(image::load_from_memory(&small[1].jpeg).expect("decodes").width(), 50, "not enlarged");
    }

    #[test]
    fn oversized_and_non_images_are_refused_before_decoding() {
        assert!(matches!(process(&png(300, 300), 10 << 20, 80_000), Err(ImageError::TooLarge(_))));
        assert!(matches!(process(&png(10, 10), 100, 40_000_000), Err(ImageError::TooLarge(_))));
        assert!(matches!(process(b"GIF89a not really", 1 << 20, 1 << 20), Err(ImageError::NotAnImage(_))));
        assert!(matches!(process(b"plain text", 1 << 20, 1 << 20), Err(ImageError::NotAnImage(_))));
    }
}
