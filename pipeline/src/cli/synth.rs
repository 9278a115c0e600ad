//! Flags of `mrdino synth`.

use std::path::PathBuf;

use mrdino_datasets::synth::{SynthParams, TextureStyle};

use super::groups::RunArgs;
use super::values;

#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// Output directory (created if missing); frames/, flow/, instances/, meta/ and synth.json go there. A
    /// directory of a stopped run with the same parameters is completed; any other non-empty one is refused.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Seed of the generator; the same seed and sizes give byte-identical files.
    #[arg(long, value_name = "S", default_value_t = SynthParams::default().seed, allow_hyphen_values = true)]
    pub seed: u64,
    /// Number of sequences (1..=1000).
    #[arg(long, value_name = "N", default_value_t = SynthParams::default().sequences)]
    pub sequences: usize,
    /// Frames per sequence (2..=100000).
    #[arg(long, value_name = "F", default_value_t = SynthParams::default().frames)]
    pub frames: usize,
    /// Frame size in pixels, width x height (the convention of every size flag, as `labels --resize`; each side
    /// 32..=4096).
    #[arg(long, value_name = "WxH", default_value = "320x128", value_parser = parse_size)]
    pub size: FrameSize,
    /// Surface colouring: `textured` (noise and stripes, for estimated flow) or `flat` (one colour per surface;
    /// labels need `--flow import`).
    #[arg(long, value_name = "STYLE", default_value = "textured")]
    pub texture: TextureStyle,
    /// Base object size in percent of the frame's shorter side (1..=100; rectangles 1–2× as wide, ellipses
    /// 0.9–1.8×, stars 1.4–2×).
    #[arg(long, value_name = "PCT", default_value_t = SynthParams::default().object_size_percent)]
    pub object_size: u32,
    #[command(flatten)]
    pub run: RunArgs,
}

/// A frame size in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameSize {
    pub height: usize,
    pub width: usize,
}

/// `--size WxH`.
fn parse_size(text: &str) -> Result<FrameSize, String> {
    let (width, height) = values::size(text)?;
    Ok(FrameSize { height, width })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_width_by_height_like_every_size_flag() {
        assert_eq!(
            parse_size("320x128"),
            Ok(FrameSize {
                height: 128,
                width: 320
            })
        );
        assert_eq!(parse_size("96X64"), Ok(FrameSize { height: 64, width: 96 }));
        assert!(parse_size("128").is_err());
        assert!(parse_size("ax3").is_err());
        assert!(parse_size("0x3").is_err());
    }
}
