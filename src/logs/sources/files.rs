//! Local files and glob patterns.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use glob::{MatchOptions, Pattern};
use walkdir::WalkDir;

use super::{SourceError, SourceUnit, decoded, source_failure};

/// The most directory entries one pattern may walk, and the most files all
/// patterns may match: a `**` over a whole disk or a link farm is a mistake
/// to report, not a pull to attempt.
pub const MAX_WALKED_ENTRIES: usize = 1_000_000;
pub const MAX_MATCHED_FILES: usize = 100_000;

/// The files matched by the patterns, in sorted order, each once: a file
/// reached by two patterns, two names or a symbolic link is read once.
pub(super) struct FileUnits {
    paths: std::vec::IntoIter<PathBuf>,
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
            if paths.len() > MAX_MATCHED_FILES {
                bail!(
                    "source.paths: the patterns match more than {MAX_MATCHED_FILES} files (at `{pattern}`); narrow them to the week's logs"
                );
            }
        }
        // The same file under two names (a link, `a/../a`) is read once, under
        // the first name in sorted order.
        let mut seen = HashSet::new();
        let paths: Vec<PathBuf> = paths
            .into_iter()
            .filter(|path| seen.insert(std::fs::canonicalize(path).unwrap_or_else(|_| path.clone())))
            .collect();
        Ok(Self { paths: paths.into_iter() })
    }
}

/// The files a pattern matches. The directory tree under the pattern's literal
/// prefix is walked once, following links to directories but never into a
/// directory that is its own ancestor (a link loop), and never deeper than the
/// pattern reaches; each path is matched against the whole pattern, with `*`
/// and `?` not crossing `/`.
fn expand(pattern: &str) -> Result<Vec<PathBuf>> {
    let matcher = match Pattern::new(pattern) {
        Ok(matcher) => matcher,
        Err(error) => bail!("source.paths: `{pattern}` is not a valid glob pattern: {error}"),
    };
    if is_literal(pattern) {
        let path = PathBuf::from(pattern);
        return Ok(if path.is_file() { vec![path] } else { Vec::new() });
    }
    let options =
        MatchOptions { case_sensitive: true, require_literal_separator: true, require_literal_leading_dot: false };
    let (base, rest) = split_literal_prefix(pattern);
    let depth = if rest.iter().any(|part| part.contains("**")) { usize::MAX } else { rest.len() };
    let mut walker = WalkDir::new(if base.as_os_str().is_empty() { Path::new(".") } else { &base })
        .follow_links(true)
        .min_depth(1)
        .max_depth(depth)
        .into_iter();
    let mut files = Vec::new();
    let mut walked = 0usize;
    while let Some(entry) = walker.next() {
        walked += 1;
        if walked > MAX_WALKED_ENTRIES {
            bail!(
                "source.paths: `{pattern}` walks more than {MAX_WALKED_ENTRIES} entries under `{}`; narrow the pattern",
                base.display()
            );
        }
        let entry = match entry {
            Ok(entry) => entry,
            // A link back to an ancestor: everything under it is walked already.
            Err(error) if error.loop_ancestor().is_some() => continue,
            Err(error) => {
                let path = error.path().map(|p| p.display().to_string()).unwrap_or_else(|| base.display().to_string());
                match error.io_error().map(|e| e.kind()) {
                    // A missing base directory, a dangling link, a file removed
                    // while walking: nothing to match there.
                    Some(std::io::ErrorKind::NotFound) => continue,
                    _ => bail!(
                        "source.paths: cannot list `{path}` while expanding `{pattern}`: {}; check its permissions",
                        error.io_error().map(|e| e.to_string()).unwrap_or_else(|| error.to_string())
                    ),
                }
            }
        };
        let path = entry.path().strip_prefix(".").ok().filter(|_| base.as_os_str().is_empty()).unwrap_or(entry.path());
        if entry.file_type().is_file() && matcher.matches_path_with(path, options) {
            files.push(path.to_path_buf());
        }
    }
    Ok(files)
}

/// The directories before the first component with a wildcard, and the
/// components from there on.
fn split_literal_prefix(pattern: &str) -> (PathBuf, Vec<&str>) {
    let parts: Vec<&str> = pattern.split('/').collect();
    let first_wild = parts.iter().position(|part| !is_literal(part)).unwrap_or(parts.len());
    let base = parts[..first_wild].join("/");
    let base = if base.is_empty() && pattern.starts_with('/') { "/".to_string() } else { base };
    (PathBuf::from(base), parts[first_wild..].to_vec())
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
