//! Local files and glob patterns.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::{SourceError, SourceUnit, decoded, source_failure};

/// The files matched by the patterns, in sorted order, each once.
pub(super) struct FileUnits {
    paths: std::collections::btree_set::IntoIter<PathBuf>,
}

impl FileUnits {
    /// Expands the patterns now, so that a pattern matching nothing fails the
    /// pull before anything is read.
    pub(super) fn open(patterns: &[String]) -> Result<Self> {
        let mut paths = BTreeSet::new();
        for pattern in patterns {
            let matches = expand(pattern)?;
            if matches.is_empty() {
                if is_literal(pattern) {
                    bail!(
                        "source.paths: `{pattern}` does not exist; check the path (relative paths start at the repository root)"
                    );
                }
                bail!(
                    "source.paths: `{pattern}` matches no file; check the pattern (relative paths start at the repository root)"
                );
            }
            paths.extend(matches);
        }
        Ok(Self { paths: paths.into_iter() })
    }
}

fn expand(pattern: &str) -> Result<Vec<PathBuf>> {
    let entries = match glob::glob(pattern) {
        Ok(entries) => entries,
        Err(error) => bail!("source.paths: `{pattern}` is not a valid glob pattern: {error}"),
    };
    let mut files = Vec::new();
    for entry in entries {
        match entry {
            Ok(path) if path.is_file() => files.push(path),
            Ok(_) => {}
            Err(error) => bail!(
                "source.paths: cannot list `{}` while expanding `{pattern}`: {}; check its permissions",
                error.path().display(),
                error.error()
            ),
        }
    }
    Ok(files)
}

fn is_literal(pattern: &str) -> bool {
    !pattern.contains(['*', '?', '['])
}

impl Iterator for FileUnits {
    type Item = Result<SourceUnit, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        let path = self.paths.next()?;
        let name = path.display().to_string();
        Some(match File::open(&path) {
            Ok(file) => Ok(SourceUnit { reader: decoded(Box::new(FileBody { file, name: name.clone() })), name }),
            Err(error) => Err(SourceError::new(name, describe_open_error(&path, &error))),
        })
    }
}

fn describe_open_error(path: &Path, error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => "the file disappeared after the patterns were expanded".to_string(),
        io::ErrorKind::PermissionDenied => {
            format!("cannot open it: permission denied; check the permissions of {}", path.display())
        }
        _ => format!("cannot open it: {error}"),
    }
}

/// A file whose read errors are marked as failures of the source, so that a
/// disk error is not mistaken for a broken gzip stream.
struct FileBody {
    file: File,
    name: String,
}

impl Read for FileBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf).map_err(|error| match error.kind() {
            io::ErrorKind::Interrupted => error,
            _ => source_failure(&self.name, format!("cannot read the file: {error}")),
        })
    }
}
