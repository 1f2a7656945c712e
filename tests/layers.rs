//! The layering ARCHITECTURE.md states: the pipeline file's reader
//! (`config.rs`) composes types that live with their concepts, so the
//! modules it reads from never read it back (no import loop through config).

use std::path::Path;

/// Modules `config.rs` imports from: none of their files may import `config`.
const BELOW_CONFIG: &[&str] =
    &["src/program", "src/dataset", "src/lm", "src/logs/signals.rs", "src/eval", "src/schedule.rs"];

fn rust_files(path: &Path, out: &mut Vec<std::path::PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            rust_files(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

#[test]
fn nothing_config_reads_from_reads_config_back() {
    let mut files = Vec::new();
    for place in BELOW_CONFIG {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(place);
        assert!(path.exists(), "{place} moved; update this test and ARCHITECTURE.md");
        rust_files(&path, &mut files);
    }
    assert!(files.len() > 20, "found only {} files", files.len());
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| std::fs::read_to_string(f).unwrap().contains("crate::config"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(offenders.is_empty(), "these import config, which imports them: {offenders:?}");
}

#[test]
fn config_reads_each_of_those_modules() {
    // The list above is the list of what config reads: keep them in step.
    let config = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config.rs")).unwrap();
    for module in
        ["crate::program", "crate::dataset", "crate::lm", "crate::logs::signals", "crate::eval", "crate::schedule"]
    {
        assert!(config.contains(module), "config.rs no longer reads {module}");
    }
}
