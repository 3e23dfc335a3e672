//! The code's shape, measured: no function in src/ longer than 120 lines (a function that long
//! does several things; split it where its comments say "then"). Counted from the `fn` line to
//! its closing brace; `extern` declarations are not functions.

use std::path::{Path, PathBuf};

const MAX_LINES: usize = 120;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// (name, first line, length) of every function with a body in `text`.
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let signature = [
            "fn ",
            "pub fn ",
            "pub(crate) fn ",
            "pub(super) fn ",
            "const fn ",
            "pub const fn ",
            "unsafe fn ",
        ]
        .iter()
        .find_map(|p| trimmed.strip_prefix(p));
        let Some(rest) = signature else {
            i += 1;
            continue;
        };
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        // The signature ends at the line with the body's `{` (or a `;`: a declaration).
        let mut j = i;
        while j < lines.len() && !lines[j].trim_end().ends_with('{') && !lines[j].trim_end().ends_with(';') {
            j += 1;
        }
        if j >= lines.len() || lines[j].trim_end().ends_with(';') {
            i = j + 1;
            continue;
        }
        let close = format!("{indent}}}");
        let end =
            (j..lines.len()).find(|&k| lines[k] == close || (k == j && lines[k].trim_end().ends_with('}')));
        match end {
            Some(k) => {
                out.push((name, i + 1, k - i + 1));
                i = j + 1;
            }
            None => i += 1,
        }
    }
    out
}

#[test]
fn no_function_in_src_is_longer_than_120_lines() {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    files.sort();
    let mut long = Vec::new();
    let mut counted = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("a source file");
        for (name, line, len) in functions(&text) {
            counted += 1;
            if len > MAX_LINES {
                long.push(format!("{}:{line} {name}: {len} lines", file.display()));
            }
        }
    }
    assert!(counted > 500, "{counted} functions found: the count is broken");
    assert!(long.is_empty(), "functions longer than {MAX_LINES} lines:\n{}", long.join("\n"));
}
