//! Ticket QR codes as PNG images, for e-mail clients (most do not show SVG).
//!
//! The PNG is written here (1-bit grayscale: signature, `IHDR`, one zlib `IDAT`, `IEND`) rather
//! than through the `image` crate, which would bring a whole imaging stack for one format.

use qrcode::{Color, EcLevel, QrCode};

/// Pixels per QR module.
const SCALE: usize = 6;
/// White modules around the code, as the QR specification asks for a reliable scan.
const QUIET_ZONE: usize = 4;

/// Why a QR image could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode a QR code: {0}")]
pub struct QrError(#[from] qrcode::types::QrError);

/// A PNG image of `text` as a QR code (error correction level M: survives a scuffed printout).
pub fn png(text: &str) -> Result<Vec<u8>, QrError> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M)?;
    let modules = code.width();
    let dark = code.to_colors();
    let side = (modules + 2 * QUIET_ZONE) * SCALE;
    let row_bytes = side.div_ceil(8);
    let mut raw = Vec::with_capacity((row_bytes + 1) * side);
    for y in 0..side {
        raw.push(0); // filter: none
        let mut row = vec![0xff_u8; row_bytes]; // 1 = white
        for x in 0..side {
            let (mx, my) = (x / SCALE, y / SCALE);
            let inside =
                (QUIET_ZONE..QUIET_ZONE + modules).contains(&mx) && (QUIET_ZONE..QUIET_ZONE + modules).contains(&my);
            if inside && dark[(my - QUIET_ZONE) * modules + (mx - QUIET_ZONE)] == Color::Dark {
                row[x / 8] &= !(0x80 >> (x % 8));
            }
        }
        raw.extend_from_slice(&row);
    }
    let side = u32::try_from(side).expect("a QR image is a few hundred pixels wide");
    let mut header = Vec::with_capacity(13);
    header.extend_from_slice(&side.to_be_bytes());
    header.extend_from_slice(&side.to_be_bytes());
    // Bit depth 1, colour type 0 (grayscale), deflate, adaptive filtering, no interlace.
    header.extend_from_slice(&[1, 0, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &header);
    chunk(&mut png, b"IDAT", &miniz_oxide::deflate::compress_to_vec_zlib(&raw, 9));
    chunk(&mut png, b"IEND", &[]);
    Ok(png)
}

fn chunk(png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    let length = u32::try_from(data.len()).expect("a chunk is far below 4 GiB");
    png.extend_from_slice(&length.to_be_bytes());
    png.extend_from_slice(kind);
    png.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    png.extend_from_slice(&crc.finalize().to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixel_is_dark(png: &[u8], x: usize, y: usize) -> bool {
        let side = u32::from_be_bytes(png[16..20].try_into().unwrap()) as usize;
        let idat_len = u32::from_be_bytes(png[33..37].try_into().unwrap()) as usize;
        assert_eq!(&png[37..41], b"IDAT");
        let raw = miniz_oxide::inflate::decompress_to_vec_zlib(&png[41..41 + idat_len]).unwrap();
        let row_bytes = side.div_ceil(8);
        assert_eq!(raw.len(), (row_bytes + 1) * side);
        let byte = raw[y * (row_bytes + 1) + 1 + x / 8];
        byte & (0x80 >> (x % 8)) == 0
    }

    #[test]
    fn a_ticket_code_becomes_a_png_with_its_finder_pattern_after_the_quiet_zone() {
        let png = png("Xq3v9H0f2kTnq1YcWmB7aQ").unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        assert!(png.ends_with(&[0xae, 0x42, 0x60, 0x82]), "IEND with its fixed CRC");
        let side = u32::from_be_bytes(png[16..20].try_into().unwrap()) as usize;
        assert_eq!(side % SCALE, 0);
        let edge = QUIET_ZONE * SCALE;
        // The quiet zone is white, the top-left finder pattern's corner is dark.
        assert!(!pixel_is_dark(&png, 0, 0));
        assert!(!pixel_is_dark(&png, edge - 1, edge - 1));
        assert!(pixel_is_dark(&png, edge, edge));
        assert!(pixel_is_dark(&png, side - edge - 1, edge));
    }
}
