//! What the Talk2DINO commands (`name`, `segment`) share in their settings: the class (prompt) list, from text
//! flags and list files.
//!
//! Contract: text flags are text, never paths (`--prompt car` is the prompt "car" even when a file `./car`
//! exists); a value may hold a comma-separated list. Files come only from their own flags, one name per line,
//! `#` starting a comment, and a file that cannot be read is an error naming it. Names are trimmed; an empty name,
//! a name listed twice, a file without names and an empty list are refused. Order: the text flags' names, then
//! each file's, as given.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

/// One source of names: a flag's value or a file, for messages.
enum Source<'a> {
    Text { flag: &'a str, value: &'a str },
    File { flag: &'a str, path: &'a PathBuf },
}

impl std::fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Text { flag, value } => write!(f, "{flag} `{value}`"),
            Self::File { flag, path } => write!(f, "{flag} {}", path.display()),
        }
    }
}

/// The names of `texts` (the values of `text_flag`) and of `files` (of `file_flag`); see the module docs.
pub fn class_list(text_flag: &str, texts: &[String], file_flag: &str, files: &[PathBuf]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for value in texts {
        let source = Source::Text { flag: text_flag, value };
        add(&mut out, value.split(',').map(str::trim), &source)?;
    }
    for path in files {
        let source = Source::File { flag: file_flag, path };
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {source}"))?;
        let names: Vec<&str> = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .collect();
        if names.is_empty() {
            bail!("{source} lists no names");
        }
        add(&mut out, names.into_iter(), &source)?;
    }
    if out.is_empty() {
        bail!("no names given ({text_flag} or {file_flag})");
    }
    Ok(out)
}

fn add<'a>(out: &mut Vec<String>, names: impl Iterator<Item = &'a str>, source: &Source<'_>) -> Result<()> {
    for name in names {
        if name.is_empty() {
            bail!("empty name in {source}");
        }
        if out.iter().any(|n| n == name) {
            bail!("`{name}` is listed twice ({source})");
        }
        out.push(name.to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_text_and_files_are_files() {
        let text = |values: &[&str]| -> Vec<String> { values.iter().map(|s| s.to_string()).collect() };
        assert_eq!(
            class_list(
                "--classes",
                &text(&["car, traffic light", "person"]),
                "--classes-file",
                &[]
            )
            .unwrap(),
            vec!["car", "traffic light", "person"]
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("classes.txt");
        std::fs::write(&file, "# road users\ncar,bus\n\n  tram  # long ones\n").unwrap();
        // A text value naming an existing file is still text.
        let as_text = class_list("--prompt", &[file.display().to_string()], "--prompts-file", &[]).unwrap();
        assert_eq!(as_text, vec![file.display().to_string()]);
        // File lines are names as they are (no comma split); they follow the text flags.
        assert_eq!(
            class_list(
                "--classes",
                &text(&["sky"]),
                "--classes-file",
                std::slice::from_ref(&file)
            )
            .unwrap(),
            vec!["sky", "car,bus", "tram"]
        );
        let err = class_list(
            "--classes",
            &text(&["tram"]),
            "--classes-file",
            std::slice::from_ref(&file),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("`tram` is listed twice (--classes-file"),
            "{err}"
        );
        let missing = dir.path().join("nosuch.txt");
        let err = format!(
            "{:#}",
            class_list("--classes", &[], "--classes-file", std::slice::from_ref(&missing)).unwrap_err()
        );
        assert!(
            err.contains("cannot read --classes-file") && err.contains("nosuch.txt"),
            "{err}"
        );
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "# nothing\n\n").unwrap();
        let err = class_list("--classes", &[], "--classes-file", &[empty])
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty.txt lists no names"), "{err}");
        assert!(class_list("--classes", &text(&["car,car"]), "f", &[])
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert!(class_list("--classes", &text(&["car,,bus"]), "f", &[])
            .unwrap_err()
            .to_string()
            .contains("empty name in --classes `car,,bus`"));
        assert!(class_list("--classes", &[], "--classes-file", &[]).is_err());
    }
}
