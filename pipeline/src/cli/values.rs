//! The parsers of flag values every command shares: a value that means nothing is a usage error (exit code 2)
//! naming the value, before any work.

use std::num::NonZeroU64;
use std::path::PathBuf;
use std::time::Duration;

use mrdino_datasets::DatasetKind;
use mrdino_outputs::bookkeeping::Shard;
use mrdino_stages::ground_truth::GtFormat;

/// `--dataset`.
pub fn dataset(s: &str) -> Result<DatasetKind, String> {
    DatasetKind::parse(s).ok_or_else(|| {
        let names: Vec<&str> = DatasetKind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown dataset `{s}` (expected one of: {})", names.join(", "))
    })
}

/// `--gt-format`: a ground-truth layout by name (`movi-e` = `kubric`).
pub fn gt_format(s: &str) -> Result<GtFormat, String> {
    GtFormat::parse(s).ok_or_else(|| {
        let names: Vec<&str> = GtFormat::ALL.iter().map(|f| f.name()).collect();
        format!(
            "unknown ground-truth format `{s}` (expected one of: {}, movi-e)",
            names.join(", ")
        )
    })
}

/// The one size convention of every flag (`--resize`, `--size`): `WxH`, width first, both positive.
pub fn size(s: &str) -> Result<(usize, usize), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("expected WxH (width x height), e.g. 320x128, got `{s}`"))?;
    let w: usize = w.trim().parse().map_err(|_| format!("bad width `{w}` in `{s}`"))?;
    let h: usize = h.trim().parse().map_err(|_| format!("bad height `{h}` in `{s}`"))?;
    if w == 0 || h == 0 {
        return Err(format!("width and height must be positive, got `{s}`"));
    }
    Ok((w, h))
}

/// `--shard I/N`.
pub fn shard(s: &str) -> Result<Shard, String> {
    Shard::parse(s).map_err(|e| e.to_string())
}

/// `--time-budget`: seconds, finite and not negative.
pub fn time_budget(s: &str) -> Result<Duration, String> {
    let seconds: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("`{s}` is not a finite, non-negative number of seconds"));
    }
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{s}`: {e}"))
}

/// A count that must be at least 1 (`--threads`, `--workers`, `--batch`, …).
pub fn count(s: &str) -> Result<usize, String> {
    let n: usize = s.trim().parse().map_err(|_| format!("`{s}` is not a whole number"))?;
    if n == 0 {
        return Err("must be at least 1".into());
    }
    Ok(n)
}

/// `--torch-threads`: at least 1, at most what libtorch takes (an i32).
pub fn torch_threads(s: &str) -> Result<i32, String> {
    let n = count(s)?;
    i32::try_from(n).map_err(|_| format!("`{s}` threads is more than libtorch takes"))
}

/// A seed: a whole number ≥ 0 (as `synth` and PyTorch's `manual_seed` take them).
pub fn seed(s: &str) -> Result<i64, String> {
    let n: i64 = s.trim().parse().map_err(|_| format!("`{s}` is not a whole number"))?;
    if n < 0 {
        return Err(format!("a seed must be at least 0, got {n}"));
    }
    Ok(n)
}

/// A memory size (`--memory-limit`): a number with an optional unit K, M, G or T (also KiB…TiB, KB…TB), each a
/// power of 1024 as in Slurm's `--mem`; a bare number is bytes. Zero, negative and non-finite sizes are refused.
/// Written here because the size crates read `8G` as 8·10⁹ bytes, which is not what a Slurm user means.
pub fn memory_size(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.trim().is_empty() {
        return Err(format!("`{s}` is not a memory size (e.g. 6G, 500M)"));
    }
    let scale = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "K" | "KB" | "KIB" => 1024.0,
        "M" | "MB" | "MIB" => 1024f64.powi(2),
        "G" | "GB" | "GIB" => 1024f64.powi(3),
        "T" | "TB" | "TIB" => 1024f64.powi(4),
        _ => return Err(format!("`{}` in `{s}` is not a unit (K, M, G or T)", unit.trim())),
    };
    let v: f64 = number.trim().parse().map_err(|_| format!("`{s}` is not a memory size (e.g. 6G, 500M)"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("a memory size must be more than 0, got `{s}`"));
    }
    Ok(v * scale)
}

/// A finite number (any sign); range checks belong to the resolved parameters.
pub fn finite(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !v.is_finite() {
        return Err(format!("`{s}` is not a finite number"));
    }
    Ok(v)
}

/// A file that must exist (`--classes-file`, `--prompts-file`): a missing path is refused, never read as text.
pub fn existing_file(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    if !path.exists() {
        return Err(format!("no such file `{s}`"));
    }
    if !path.is_file() {
        return Err(format!("`{s}` is not a file"));
    }
    Ok(path)
}

/// `--num-shards N` of `status`.
pub fn shard_count(s: &str) -> Result<NonZeroU64, String> {
    let n: u64 = s.trim().parse().map_err(|_| format!("`{s}` is not a whole number"))?;
    NonZeroU64::new(n).ok_or_else(|| "must be at least 1".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_are_powers_of_1024_and_nonsense_is_refused() {
        let gib = 1024.0 * 1024.0 * 1024.0;
        assert_eq!(memory_size("6G"), Ok(6.0 * gib));
        assert_eq!(memory_size("6GiB"), Ok(6.0 * gib));
        assert_eq!(memory_size(" 1.5 gb "), Ok(1.5 * gib));
        assert_eq!(memory_size("500M"), Ok(500.0 * 1024.0 * 1024.0));
        assert_eq!(memory_size("2048"), Ok(2048.0));
        assert_eq!(memory_size("1T"), Ok(1024.0 * gib));
        for bad in ["0", "-1G", "nanG", "inf", "6X", "G", "", "6 GB extra"] {
            assert!(memory_size(bad).is_err(), "{bad}");
        }
        assert!(memory_size("6X").unwrap_err().contains("`X`"));
        assert!(memory_size("-1G").unwrap_err().contains("more than 0"));
    }

    #[test]
    fn meaningless_values_are_refused_with_the_value_named() {
        assert!(time_budget("nan").unwrap_err().contains("nan"));
        assert!(time_budget("-1").is_err());
        assert!(time_budget("inf").is_err());
        assert_eq!(time_budget("1.5").unwrap(), Duration::from_millis(1500));
        assert!(count("0").is_err());
        assert!(count("-2").is_err());
        assert_eq!(count("3").unwrap(), 3);
        assert!(torch_threads("4294967296").is_err());
        assert!(seed("-1").unwrap_err().contains("-1"));
        assert!(finite("nan").is_err());
        assert!(size("0x4").is_err());
        assert_eq!(size("320x128").unwrap(), (320, 128));
        assert!(shard("3/3").is_err());
        assert!(shard_count("0").is_err());
        assert!(existing_file("no/such/file.txt").unwrap_err().contains("no/such/file.txt"));
        assert!(existing_file(".").unwrap_err().contains("not a file"));
        assert_eq!(gt_format("movi-e"), Ok(GtFormat::Kubric));
        assert_eq!(gt_format("tri-pd"), Ok(GtFormat::TriPd));
        assert!(gt_format("coco").unwrap_err().contains("`coco`"));
    }
}
