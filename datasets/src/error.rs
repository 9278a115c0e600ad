//! Errors of the readers. Every variant names the file or directory it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Layout { path: PathBuf, message: String },
    #[error("{path}: cannot decode image: {message}")]
    Decode { path: PathBuf, message: String },
    #[error("{path}: frame is {got_width}x{got_height} but the sequence started at {width}x{height}")]
    SizeChange {
        path: PathBuf,
        width: usize,
        height: usize,
        got_width: usize,
        got_height: usize,
    },
    #[error("{path}: video ended after {frames} frames: {message}")]
    Video {
        path: PathBuf,
        frames: usize,
        message: String,
    },
    #[error("invalid option: {0}")]
    Option(String),
}

impl DatasetError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn layout(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Layout {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The file the error is about, when there is one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Self::Io { path, .. }
            | Self::Layout { path, .. }
            | Self::Decode { path, .. }
            | Self::SizeChange { path, .. }
            | Self::Video { path, .. } => Some(path),
            Self::Option(_) => None,
        }
    }
}
