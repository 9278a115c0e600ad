//! Checks of resolved parameters: every value that means nothing (NaN, infinite, negative or zero where it must be
//! positive, out of the range its method defines) is refused before any work, the message naming the key, the
//! value and the range. All failed checks are reported together.

use std::fmt::Display;

use anyhow::{bail, Result};

/// Collects failed checks of one parameter set.
#[derive(Debug, Default)]
pub struct Checks {
    errors: Vec<String>,
}

/// One end of an allowed range.
#[derive(Clone, Copy, Debug)]
pub enum Bound {
    /// The end itself is allowed.
    Closed(f64),
    /// The end itself is not allowed.
    Open(f64),
    None,
}

impl Checks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a failed check when `ok` is false.
    pub fn require(&mut self, ok: bool, message: impl FnOnce() -> String) -> &mut Self {
        if !ok {
            self.errors.push(message());
        }
        self
    }

    /// `value` must be a finite number within `low` and `high`.
    pub fn float(&mut self, key: &str, value: f64, low: Bound, high: Bound) -> &mut Self {
        let low_ok = match low {
            Bound::Closed(l) => value >= l,
            Bound::Open(l) => value > l,
            Bound::None => true,
        };
        let high_ok = match high {
            Bound::Closed(h) => value <= h,
            Bound::Open(h) => value < h,
            Bound::None => true,
        };
        let ok = value.is_finite() && low_ok && high_ok;
        self.require(ok, || format!("{key} = {value} must be {}", describe(low, high)))
    }

    /// `value` must be a finite number > 0.
    pub fn positive(&mut self, key: &str, value: f64) -> &mut Self {
        self.float(key, value, Bound::Open(0.0), Bound::None)
    }

    /// `value` must be a finite number ≥ 0.
    pub fn non_negative(&mut self, key: &str, value: f64) -> &mut Self {
        self.float(key, value, Bound::Closed(0.0), Bound::None)
    }

    /// An integer `value` must be at least `low` (and at most `high` when given).
    pub fn int<T: PartialOrd + Display + Copy>(&mut self, key: &str, value: T, low: T, high: Option<T>) -> &mut Self {
        let ok = value >= low && high.is_none_or(|h| value <= h);
        self.require(ok, || match high {
            Some(h) => format!("{key} = {value} must be in {low}..={h}"),
            None => format!("{key} = {value} must be at least {low}"),
        })
    }

    /// Fails with every recorded message (one per line), or succeeds when all checks passed.
    pub fn finish(&mut self, what: &str) -> Result<()> {
        if self.errors.is_empty() {
            return Ok(());
        }
        let errors = std::mem::take(&mut self.errors);
        if errors.len() == 1 {
            bail!("invalid {what}: {}", errors[0]);
        }
        bail!("invalid {what}:\n  {}", errors.join("\n  "))
    }
}

fn describe(low: Bound, high: Bound) -> String {
    let low_text = match low {
        Bound::Closed(l) => Some(format!(">= {l}")),
        Bound::Open(l) => Some(format!("> {l}")),
        Bound::None => None,
    };
    let high_text = match high {
        Bound::Closed(h) => Some(format!("<= {h}")),
        Bound::Open(h) => Some(format!("< {h}")),
        Bound::None => None,
    };
    match (low_text, high_text) {
        (Some(l), Some(h)) => format!("a finite number {l} and {h}"),
        (Some(l), None) => format!("a finite number {l}"),
        (None, Some(h)) => format!("a finite number {h}"),
        (None, None) => "a finite number".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failed_check_is_named() {
        let mut c = Checks::new();
        c.positive("lr", f64::NAN)
            .float("adam_beta1", 2.0, Bound::Closed(0.0), Bound::Open(1.0))
            .non_negative("fg", 0.0)
            .int("steps", 0u64, 1, None);
        let err = c.finish("training parameters").unwrap_err().to_string();
        assert!(err.contains("lr = NaN must be a finite number > 0"), "{err}");
        assert!(err.contains("adam_beta1 = 2 must be a finite number >= 0 and < 1"), "{err}");
        assert!(err.contains("steps = 0 must be at least 1"), "{err}");
        assert!(!err.contains("fg"), "{err}");
        assert!(Checks::new().positive("x", 1.0).finish("p").is_ok());
    }
}
