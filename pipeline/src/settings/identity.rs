//! Weights identities inside a command's resolved parameters, and the migration rule for identities that earlier
//! versions recorded (see `mrdino_outputs::weights_id`).
//!
//! A command records the weights it used by their identity inside its parameters, so the identity is part of the
//! parameter hash that names the output partition. A directory written by an earlier version holds the same
//! parameters with the earlier value (the SHA-256 of the weights file) instead. The rule: when `OUT` has no
//! partition for this run's parameters but has one for the same parameters with the earlier values of the
//! weights at hand, the run continues that partition (its files keep recording the earlier values, which the
//! readers accept for these weights). A comparison of recorded parameters (a resume) treats an earlier value of
//! the weights at hand as their identity.

use std::path::Path;

use anyhow::Result;
use mrdino_outputs::bookkeeping::partitions;
use mrdino_outputs::weights_id::Identity;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Replaces, anywhere in `value`, a string equal to `from` of a pair by its `to`; returns whether it did.
fn replace_strings(value: &mut serde_json::Value, pairs: &[(&str, &str)]) -> bool {
    match value {
        serde_json::Value::String(s) => match pairs.iter().find(|(from, _)| s == from) {
            Some((_, to)) => {
                *s = (*to).to_string();
                true
            }
            None => false,
        },
        serde_json::Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, v| replace_strings(v, pairs) | changed),
        serde_json::Value::Object(map) => map
            .values_mut()
            .fold(false, |changed, v| replace_strings(v, pairs) | changed),
        _ => false,
    }
}

/// `params` with the identity of each of `known` replaced by its earlier value; `None` when no identity with an
/// earlier value occurs in them.
pub fn with_earlier_ids<P: Serialize + DeserializeOwned>(params: &P, known: &[&Identity]) -> Result<Option<P>> {
    let pairs: Vec<(&str, &str)> = known
        .iter()
        .filter_map(|i| i.earlier.as_deref().map(|e| (i.id.as_str(), e)))
        .collect();
    let mut value = serde_json::to_value(params)?;
    if !replace_strings(&mut value, &pairs) {
        return Ok(None);
    }
    Ok(Some(serde_json::from_value(value)?))
}

/// The parameters a run in `out` continues with: `params` itself, unless `out` lacks their partition but holds
/// the one of the same parameters recorded with the earlier values of `known` (then those; see the module docs).
/// `data_dirs` are the job's data directories (see [`partitions`]); `hash` is the job's parameter hash.
pub fn continue_earlier_partition<P: Serialize + DeserializeOwned>(
    out: &Path,
    data_dirs: &[&str],
    params: P,
    known: &[&Identity],
    hash: impl Fn(&P) -> String,
) -> Result<P> {
    let present = partitions(out, data_dirs);
    if present.is_empty() || present.contains(&hash(&params)) {
        return Ok(params);
    }
    match with_earlier_ids(&params, known)? {
        Some(earlier) if present.contains(&hash(&earlier)) => {
            eprintln!(
                "note: {} holds this run under the weights' file SHA-256 of an earlier mrdino (params={}); \
                 continuing it",
                out.display(),
                hash(&earlier)
            );
            Ok(earlier)
        }
        _ => Ok(params),
    }
}

/// `value` with the earlier values of `known` replaced by their identities, for comparing recorded parameters.
pub fn canonical_ids(value: &serde_json::Value, known: &[&Identity]) -> serde_json::Value {
    let pairs: Vec<(&str, &str)> = known
        .iter()
        .filter_map(|i| i.earlier.as_deref().map(|e| (e, i.id.as_str())))
        .collect();
    let mut value = value.clone();
    replace_strings(&mut value, &pairs);
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct P {
        name: String,
        weights: String,
        nested: Vec<String>,
    }

    fn hash(p: &P) -> String {
        format!("{}-{}", p.weights.len(), p.weights.chars().take(4).collect::<String>())
    }

    #[test]
    fn an_earlier_partition_of_the_same_weights_is_continued_and_nothing_else() {
        let id = Identity::new(format!("tensors-sha256:{}", "a".repeat(64)), Some("b".repeat(64)));
        let params = P {
            name: "x".into(),
            weights: id.id.clone(),
            nested: vec![id.id.clone()],
        };
        let earlier = with_earlier_ids(&params, &[&id]).unwrap().unwrap();
        assert_eq!(earlier.weights, "b".repeat(64));
        assert_eq!(earlier.nested, vec!["b".repeat(64)]);
        assert!(with_earlier_ids(&params, &[&Identity::new(id.id.clone(), None)]).unwrap().is_none());

        let dir = tempfile::tempdir().unwrap();
        // An empty directory: the new partition.
        let chosen = continue_earlier_partition(dir.path(), &["frames"], params.clone(), &[&id], hash).unwrap();
        assert_eq!(chosen, params);
        // A directory holding the earlier partition: continued.
        std::fs::create_dir_all(dir.path().join("frames").join(format!("params={}", hash(&earlier)))).unwrap();
        let chosen = continue_earlier_partition(dir.path(), &["frames"], params.clone(), &[&id], hash).unwrap();
        assert_eq!(chosen, earlier);
        // Once the new partition exists too, it wins.
        std::fs::create_dir_all(dir.path().join("frames").join(format!("params={}", hash(&params)))).unwrap();
        let chosen = continue_earlier_partition(dir.path(), &["frames"], params.clone(), &[&id], hash).unwrap();
        assert_eq!(chosen, params);
        // Comparing recorded parameters: the earlier value of these weights is their identity.
        let saved = serde_json::to_value(&earlier).unwrap();
        let now = serde_json::to_value(&params).unwrap();
        assert_eq!(canonical_ids(&saved, &[&id]), canonical_ids(&now, &[&id]));
        assert_ne!(canonical_ids(&saved, &[]), canonical_ids(&now, &[]));
    }
}
