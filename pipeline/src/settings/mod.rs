//! Settings: command-line flags + a dataset preset + an optional JSON config file → one validated, hashed
//! parameter set per command, resolved before any input is read or output written.
//!
//! Two phases, as in ripgrep's low/high args: the raw values (flags parsed by `crate::cli`, a config file read by
//! [`read_config`]) are resolved with the precedence preset < config file < flags, then the whole parameter set is
//! checked ([`check::Checks`], every value named in the message) and hashed once ([`params_hash`]). The hash names the
//! output partition (`params=<hash>`), so outputs of different parameters are never mixed. The per-dataset
//! recipes of every command live in one table ([`presets`]).

pub mod analyze;
pub mod check;
pub mod eval;
pub mod features;
pub mod identity;
pub mod infer;
pub mod labels;
pub mod name;
pub mod presets;
pub mod refine;
pub mod segment;
pub mod synth;
pub mod talk2dino;
pub mod train;

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The one parameter hash: the first 16 hex digits of the SHA-256 of the parameters' canonical JSON (fields in
/// declaration order, as serde writes them).
pub fn params_hash<P: Serialize + ?Sized>(params: &P) -> Result<String> {
    let json = serde_json::to_string(params).context("parameters do not serialise")?;
    Ok(Sha256::digest(json.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Reads a JSON config file of parameter overrides (a JSON object), naming the file in every error.
pub fn read_config(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("invalid JSON in {}", path.display()))?;
    anyhow::ensure!(
        value.is_object(),
        "config file {} must hold a JSON object",
        path.display()
    );
    Ok(value)
}

/// Merges `over` into `base` key by key (nested objects recursively), as config files override presets.
pub fn merge(base: &mut serde_json::Value, over: &serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_stable_and_follows_every_value() {
        #[derive(Serialize)]
        struct P {
            a: f64,
            b: &'static str,
        }
        let h = params_hash(&P { a: 1.5, b: "x" }).unwrap();
        assert_eq!(h.len(), 16);
        assert_eq!(h, params_hash(&P { a: 1.5, b: "x" }).unwrap());
        assert_ne!(h, params_hash(&P { a: 1.25, b: "x" }).unwrap());
        let mut base = serde_json::json!({"a": 1, "m": {"x": 1, "y": 2}});
        merge(&mut base, &serde_json::json!({"m": {"y": 3}, "b": 4}));
        assert_eq!(base, serde_json::json!({"a": 1, "m": {"x": 1, "y": 3}, "b": 4}));
    }
}
