//! The one check every weight loader makes before reading tensors: the file's tensor names and shapes against
//! what the model expects, so a wrong or truncated file is refused naming the first key that is wrong.

use std::collections::BTreeMap;
use std::collections::HashSet;

/// What is wrong with a weight file's tensors, by key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    #[error("missing key `{key}` (expected shape {})", format_shape(.expected))]
    Missing { key: String, expected: Vec<i64> },
    #[error("key `{key}` has shape {}, expected {}", format_shape(.found), format_shape(.expected))]
    Shape {
        key: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error("unexpected key `{key}` with shape {}", format_shape(.found))]
    Unexpected { key: String, found: Vec<i64> },
}

/// `[2, 64, 3, 3]`.
pub fn format_shape(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// Every expected key must be in `found` with its shape, unless it is in `optional` and absent; no other key
/// may be there. Expected keys are checked in their order, then the unexpected ones in name order.
pub fn check_keys(
    found: &BTreeMap<String, Vec<i64>>,
    expected: &[(String, Vec<i64>)],
    optional: &[&str],
) -> Result<(), KeyProblem> {
    for (key, shape) in expected {
        match found.get(key) {
            None if optional.contains(&key.as_str()) => {}
            None => {
                return Err(KeyProblem::Missing {
                    key: key.clone(),
                    expected: shape.clone(),
                })
            }
            Some(s) if s != shape => {
                return Err(KeyProblem::Shape {
                    key: key.clone(),
                    expected: shape.clone(),
                    found: s.clone(),
                })
            }
            Some(_) => {}
        }
    }
    let names: HashSet<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
    match found.iter().find(|(k, _)| !names.contains(k.as_str())) {
        Some((key, shape)) => Err(KeyProblem::Unexpected {
            key: key.clone(),
            found: shape.clone(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_wrong_key_is_named() {
        let expected = vec![("a".to_string(), vec![2, 3]), ("b".to_string(), vec![4])];
        let found = |pairs: &[(&str, &[i64])]| -> BTreeMap<String, Vec<i64>> {
            pairs.iter().map(|(k, s)| (k.to_string(), s.to_vec())).collect()
        };
        assert_eq!(check_keys(&found(&[("a", &[2, 3]), ("b", &[4])]), &expected, &[]), Ok(()));
        assert_eq!(check_keys(&found(&[("a", &[2, 3])]), &expected, &["b"]), Ok(()));
        let missing = check_keys(&found(&[("a", &[2, 3])]), &expected, &[]).unwrap_err();
        assert_eq!(missing.to_string(), "missing key `b` (expected shape [4])");
        let shape = check_keys(&found(&[("a", &[3, 2]), ("b", &[4])]), &expected, &[]).unwrap_err();
        assert_eq!(shape.to_string(), "key `a` has shape [3, 2], expected [2, 3]");
        let extra = check_keys(&found(&[("a", &[2, 3]), ("b", &[4]), ("c", &[])]), &expected, &[]).unwrap_err();
        assert_eq!(extra.to_string(), "unexpected key `c` with shape []");
    }
}
