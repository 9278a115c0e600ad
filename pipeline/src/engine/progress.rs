//! Progress bars, in two styles: a counter of units (with the current unit's id and an ETA) and a rate (items
//! per second). Hidden when the job is quiet; indicatif draws nothing either when stderr is not a terminal, and
//! then the driver prints a line per unit instead (for Slurm logs). Results go to stdout through
//! [`print_stdout`], which a closed pipe (`mrdino … | head -1`) does not turn into a panic.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// A bar counting `len` units, prefixed `prefix`, showing the current unit and an ETA.
pub fn counter(len: u64, prefix: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(style("{prefix:>9} [{bar:30}] {pos}/{len} {msg} eta {eta}"));
    bar.set_prefix(prefix);
    bar
}

/// A bar counting `len` items with their rate.
pub fn rate(len: u64, prefix: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(style("{prefix:>9} [{bar:30}] {pos}/{len} {per_sec} eta {eta}"));
    bar.set_prefix(prefix);
    bar
}

/// [`counter`], drawn on stderr unless `quiet`.
pub fn units(len: u64, prefix: &'static str, quiet: bool) -> ProgressBar {
    let bar = counter(len, prefix);
    if quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

/// Writes `text` to stdout. A closed pipe (the reader stopped reading, as `head` does) ends the output quietly
/// where `print!` would panic; other write errors are returned.
pub fn print_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
