//! COCO run-length encoding of binary masks, byte-for-byte as pycocotools writes it.
//!
//! Runs are taken over the mask flattened in **column-major** order (down each column, then the next),
//! starting with a run of zeros (possibly empty) and alternating. The compressed string stores each count
//! as a signed difference to the count two places earlier (from the third count on), 5 bits per character
//! (low bits first), bit 0x20 meaning "more follows", bit 0x10 of the last group carrying the sign, each
//! group offset by 48 (`'0'`). `mask_utils.decode({"size": [h, w], "counts": s.encode()})` decodes it.

/// A compressed COCO RLE: `size` = [height, width].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CocoRle {
    pub height: u32,
    pub width: u32,
    pub counts: String,
}

/// Error decoding a compressed RLE string.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RleError {
    #[error("RLE string ends inside a count")]
    Truncated,
    #[error("RLE character {0:?} outside the alphabet")]
    BadCharacter(char),
    #[error("RLE runs cover {covered} pixels but the mask has {expected}")]
    WrongLength { covered: u64, expected: u64 },
}

/// Run lengths (zeros first) of a mask given by its pixels as row-major indices (row·width + col).
pub fn runs_from_pixels(pixels: &[u32], height: u32, width: u32) -> Vec<u32> {
    let mut column_major: Vec<u64> = pixels
        .iter()
        .map(|&p| {
            let (r, c) = (u64::from(p / width), u64::from(p % width));
            c * u64::from(height) + r
        })
        .collect();
    column_major.sort_unstable();
    column_major.dedup();
    let total = u64::from(height) * u64::from(width);
    let mut runs = Vec::new();
    let mut position = 0u64;
    let mut i = 0;
    while i < column_major.len() {
        let start = column_major[i];
        let mut end = start + 1;
        i += 1;
        while i < column_major.len() && column_major[i] == end {
            end += 1;
            i += 1;
        }
        runs.push((start - position) as u32);
        runs.push((end - start) as u32);
        position = end;
    }
    if position < total || runs.is_empty() {
        runs.push((total - position) as u32);
    }
    runs
}

/// pycocotools' `rleToString`.
pub fn encode_counts(runs: &[u32]) -> String {
    let mut out = String::with_capacity(runs.len() * 2);
    for (i, &count) in runs.iter().enumerate() {
        let mut x = i64::from(count);
        if i > 2 {
            x -= i64::from(runs[i - 2]);
        }
        loop {
            let mut c = (x & 0x1f) as u8;
            x >>= 5;
            let more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
            if more {
                c |= 0x20;
            }
            out.push((c + 48) as char);
            if !more {
                break;
            }
        }
    }
    out
}

/// pycocotools' `rleFrString`.
pub fn decode_counts(s: &str) -> Result<Vec<u32>, RleError> {
    let bytes = s.as_bytes();
    let mut runs: Vec<u32> = Vec::new();
    let mut p = 0;
    while p < bytes.len() {
        let (mut x, mut k) = (0i64, 0u32);
        loop {
            let Some(&b) = bytes.get(p) else {
                return Err(RleError::Truncated);
            };
            if !(48..48 + 64).contains(&b) {
                return Err(RleError::BadCharacter(b as char));
            }
            let c = i64::from(b - 48);
            x |= (c & 0x1f) << (5 * k);
            p += 1;
            k += 1;
            if c & 0x20 == 0 {
                if c & 0x10 != 0 {
                    x |= -1i64 << (5 * k);
                }
                break;
            }
        }
        if runs.len() > 2 {
            x += i64::from(runs[runs.len() - 2]);
        }
        runs.push(x as u32);
    }
    Ok(runs)
}

impl CocoRle {
    /// Encodes a mask given by its pixels (row-major indices).
    pub fn from_pixels(pixels: &[u32], height: u32, width: u32) -> Self {
        Self {
            height,
            width,
            counts: encode_counts(&runs_from_pixels(pixels, height, width)),
        }
    }

    /// Encodes run lengths (column-major, zeros first) that cover the `height`×`width` mask.
    pub fn from_runs(runs: &[u32], height: u32, width: u32) -> Self {
        Self {
            height,
            width,
            counts: encode_counts(runs),
        }
    }

    /// The run lengths (column-major, zeros first), checked to cover the mask exactly.
    pub fn runs(&self) -> Result<Vec<u32>, RleError> {
        let runs = decode_counts(&self.counts)?;
        let expected = u64::from(self.height) * u64::from(self.width);
        let covered: u64 = runs.iter().map(|&r| u64::from(r)).sum();
        if covered != expected {
            return Err(RleError::WrongLength { covered, expected });
        }
        Ok(runs)
    }

    /// Decodes into row-major pixel indices, ascending.
    pub fn to_pixels(&self) -> Result<Vec<u32>, RleError> {
        let runs = self.runs()?;
        let (h, w) = (u64::from(self.height), u64::from(self.width));
        let mut pixels = Vec::new();
        let mut position = 0u64;
        for (i, &run) in runs.iter().enumerate() {
            if i % 2 == 1 {
                for cm in position..position + u64::from(run) {
                    let (c, r) = (cm / h, cm % h);
                    pixels.push((r * w + c) as u32);
                }
            }
            position += u64::from(run);
        }
        pixels.sort_unstable();
        Ok(pixels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_column_major_and_start_with_zeros() {
        // 3×4 mask, ones at (0,0), (1,0), (2,1), (0,3):
        // column-major: c0 = [1,1,0], c1 = [0,0,1], c2 = [0,0,0], c3 = [1,0,0]
        let pixels = [0, 4, 9, 3];
        assert_eq!(runs_from_pixels(&pixels, 3, 4), vec![0, 2, 3, 1, 3, 1, 2]);
        assert_eq!(runs_from_pixels(&[], 3, 4), vec![12]);
        let all: Vec<u32> = (0..12).collect();
        assert_eq!(runs_from_pixels(&all, 3, 4), vec![0, 12]);
    }

    #[test]
    fn known_strings() {
        // Values checked against pycocotools.mask.encode.
        assert_eq!(encode_counts(&[12]), "<");
        assert_eq!(encode_counts(&[0, 12]), "0<");
        assert_eq!(encode_counts(&[0, 2, 3, 1, 3, 1, 2]), "023O00O");
        assert_eq!(encode_counts(&[100, 50, 1000]), "T3b1Xo0");
    }

    #[test]
    fn round_trip_random_masks() {
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..200 {
            let h = 1 + (next() % 40) as u32;
            let w = 1 + (next() % 40) as u32;
            let density = next() % 100;
            let pixels: Vec<u32> = (0..h * w).filter(|_| next() % 100 < density).collect();
            let rle = CocoRle::from_pixels(&pixels, h, w);
            assert_eq!(rle.to_pixels().unwrap(), pixels);
        }
    }

    #[test]
    fn bad_strings_are_errors() {
        assert_eq!(decode_counts("0\u{7f}"), Err(RleError::BadCharacter('\u{7f}')));
        assert_eq!(decode_counts("T"), Err(RleError::Truncated));
        let rle = CocoRle {
            height: 2,
            width: 2,
            counts: "3".into(),
        };
        assert_eq!(
            rle.to_pixels(),
            Err(RleError::WrongLength {
                covered: 3,
                expected: 4
            })
        );
    }
}
