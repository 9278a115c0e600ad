//! The parameters of `mrdino synth`: its flags as the generator's parameters, checked against the generator's
//! documented bounds (`mrdino_datasets::synth`) before any file is written.

use anyhow::Result;
use mrdino_datasets::synth::SynthParams;

use crate::cli::synth::SynthArgs;

/// The generator's parameters of `args`; a value outside the bounds is refused, named.
pub fn resolve(args: &SynthArgs) -> Result<SynthParams> {
    let params = SynthParams {
        seed: args.seed,
        sequences: args.sequences,
        frames: args.frames,
        height: args.size.height,
        width: args.size.width,
        texture: args.texture,
        object_size_percent: args.object_size,
    };
    params.validate()?;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SynthArgs,
    }

    fn refusal(extra: &[&str]) -> String {
        let cli = Cli::try_parse_from(["synth", "--out", "o"].iter().chain(extra));
        match cli {
            Err(e) => e.to_string(),
            Ok(cli) => resolve(&cli.args).err().map(|e| e.to_string()).unwrap_or_default(),
        }
    }

    #[test]
    fn values_outside_the_generators_bounds_are_refused_naming_them() {
        assert!(refusal(&["--frames", "1"]).contains("got 1"));
        assert!(refusal(&["--sequences", "0"]).contains("got 0"));
        assert!(refusal(&["--sequences", "1001"]).contains("got 1001"));
        assert!(refusal(&["--size", "16x128"]).contains("width must be in 32..=4096 px, got 16"));
        assert!(refusal(&["--size", "0x128"]).contains("0x128"));
        assert!(refusal(&["--object-size", "0"]).contains("got 0"));
        assert!(refusal(&["--object-size", "101"]).contains("got 101"));
        assert!(refusal(&["--time-budget", "nan"]).contains("nan"));
        assert_eq!(refusal(&[]), "");
    }
}
