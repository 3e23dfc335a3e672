//! The code's shape, measured: no function in src/ longer than 120 lines (a function that long
//! does several things; split it where its comments say "then"), counted from the `fn` line to
//! its closing brace (`extern` declarations are not functions); and no two modules that import
//! each other, directly or through others (the layers run one way).

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

/// The module a file under src/ is (`train/step/ema.rs` -> ["train", "step", "ema"]).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src/").with_extension("");
    let mut segs: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    if matches!(segs.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        segs.pop();
    }
    segs
}

/// Every path a `crate::` / `super::` / `self::` reference names, brace groups expanded
/// (`use super::{a::X, b}` names `super::a::X` and `super::b`).
fn referenced_paths(code: &str) -> Vec<Vec<String>> {
    fn path_at(chars: &[char], mut i: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
        let mut segs = prefix.to_vec();
        loop {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            if i > start {
                segs.push(chars[start..i].iter().collect());
            }
            if chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':') {
                i += 2;
                if chars.get(i) == Some(&'{') {
                    i += 1;
                    loop {
                        while chars.get(i).is_some_and(|c| c.is_whitespace() || *c == ',') {
                            i += 1;
                        }
                        match chars.get(i) {
                            None => return i,
                            Some('}') => return i + 1,
                            _ => i = path_at(chars, i, &segs, out),
                        }
                    }
                }
                continue;
            }
            out.push(segs);
            return i.max(start + 1);
        }
    }
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let boundary =
            i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_' || chars[i - 1] == ':');
        let rest: String = chars[i..chars.len().min(i + 7)].iter().collect();
        if boundary && ["crate::", "super::", "self::"].iter().any(|p| rest.starts_with(p)) {
            i = path_at(&chars, i, &[], &mut out);
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn no_two_modules_in_src_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: Vec<Vec<String>> = files.iter().map(|f| module_of(&src, f)).collect();
    let index =
        |segs: &[String]| (0..=segs.len()).rev().find_map(|n| modules.iter().position(|m| m == &segs[..n]));
    let mut edges = vec![std::collections::BTreeSet::new(); files.len()];
    for (from, file) in files.iter().enumerate() {
        let text = std::fs::read_to_string(file).expect("a source file");
        // A file's own tests (after `#[cfg(test)]`) may import anything; comments name no import.
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or("")
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        for path in referenced_paths(&code) {
            let mut target = modules[from].clone();
            let mut segs = path.as_slice();
            if segs.first().is_some_and(|s| s == "crate") {
                target.clear();
                segs = &segs[1..];
            }
            while let Some(head) = segs.first().filter(|s| *s == "super" || *s == "self") {
                if head == "super" {
                    target.pop();
                }
                segs = &segs[1..];
            }
            target.extend(segs.iter().cloned());
            if let Some(to) = index(&target).filter(|&to| to != from && !modules[to].is_empty()) {
                edges[from].insert(to);
            }
        }
    }
    let reaches = |a: usize, b: usize| {
        let (mut seen, mut todo) = (vec![false; files.len()], vec![a]);
        while let Some(n) = todo.pop() {
            if n == b {
                return true;
            }
            if !std::mem::replace(&mut seen[n], true) {
                todo.extend(edges[n].iter().copied());
            }
        }
        false
    };
    let mut circles = Vec::new();
    for (a, out) in edges.iter().enumerate() {
        for &b in out {
            if reaches(b, a) {
                circles.push(format!(
                    "{} -> {} -> ... -> {}",
                    modules[a].join("::"),
                    modules[b].join("::"),
                    modules[a].join("::")
                ));
            }
        }
    }
    let counted: usize = edges.iter().map(|e| e.len()).sum();
    assert!(counted > 200, "{counted} imports found: the parser is broken");
    assert!(
        circles.is_empty(),
        "modules that import each other (directly or through others):\n{}",
        circles.join("\n")
    );
}

/// The first sentence of a Rust file's `//!` doc (up to a period, or a colon that ends a line
/// and opens a list).
fn first_sentence(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut para = String::new();
    for line in text.lines().map_while(|l| l.strip_prefix("//!")).map(str::trim) {
        if line.is_empty() {
            break;
        }
        para.push_str(line);
        para.push(' ');
        if line.ends_with(':') {
            break;
        }
    }
    let end = para.find(". ").unwrap_or(para.len());
    para[..end].trim_end().trim_end_matches(['.', ':']).to_string()
}

/// The source folders in the order of the layers (each uses only those before it).
const LAYERS: [&str; 10] = [
    "src/ffi",
    "src/data",
    "src/model",
    "src/train",
    "src/train/config",
    "src/train/step",
    "src/train/step/optim",
    "src/train/run",
    "src/experiments",
    "src/cli",
];

/// What the folders outside src/ hold (their files carry no module doc to read it from).
const OTHERS: [(&str, &str); 18] = [
    (
        "build.rs",
        "builds the C++ shim against libtorch (Gloo and NCCL headers stubbed where the wheel lacks them)",
    ),
    ("configs/recipes/", "training configs: one run each (`resnet-train --config FILE`)"),
    ("configs/ablations/", "stability grids for `resnet-train ablate --config FILE`"),
    ("configs/studies/", "variants x seeds for `resnet-train study --config FILE`"),
    ("scripts/", "bootstrap.sh, test.sh and demo.sh (a fresh machine's commands), the GPU session"),
    ("scripts/bench/", "benchmarks against the peers (PyTorch, timm, torchvision), same run, same settings"),
    ("scripts/reliability/", "kill/resume at random instants; checkpoint fuzzing"),
    ("scripts/profile/", "oneDNN time split; peak memory of a command"),
    ("scripts/slurm/", "an sbatch script: one node or many, requeued on preemption"),
    ("python/", "the PyTorch package polycom_resnet: the activations as torch modules, our files as torchvision ResNets"),
    ("tests/", "integration tests, against PyTorch, timm, torchvision and Pillow references"),
    ("tests/servers/", "the servers tests start on loopback (an HTTP server that fails on purpose)"),
    ("tests/golden/", "reference values computed by PyTorch/timm (the make_*.py scripts regenerate them)"),
    ("tests/fixtures/", "small images and files the tests read"),
    ("docs/", "stability.md (the finding), results.md (the studies), reliability.md, gpu/"),
    ("runs/", "run folders (git-ignored)"),
    ("BENCHMARKS.md", "every speed and memory figure, with its peer, machine, date and command"),
    (".ci/run", "what CI runs: the README's test command"),
];

fn layout() -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut rows: Vec<(String, String)> = Vec::new();
    for dir in LAYERS {
        rows.push((format!("{dir}/"), first_sentence(&repo.join(dir).join("mod.rs"))));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo.join("src"))
        .expect("src/ is readable")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    for file in files {
        let name = file.file_name().expect("a name").to_string_lossy().into_owned();
        if name != "lib.rs" {
            rows.push((format!("src/{name}"), first_sentence(&file)));
        }
    }
    rows.push(("data-prep/".into(), first_sentence(&repo.join("data-prep/main.rs"))));
    rows.extend(OTHERS.iter().map(|(p, what)| (p.to_string(), what.to_string())));
    // Wrapped at 100 columns under a 24-column name field.
    let mut out = String::new();
    for (path, what) in rows {
        let mut line = format!("{path:<23} ");
        for word in what.split(' ') {
            if line.len() + word.len() > 100 {
                out.push_str(line.trim_end());
                out.push('\n');
                line = " ".repeat(24);
            }
            line.push_str(word);
            line.push(' ');
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

const LAYOUT_START: &str =
    "<!-- Generated from the tree by tests/code_shape.rs: UPDATE_LAYOUT=1 cargo test --test code_shape -->\n```\n";

/// The README's Layout section is the tree's: every source folder and file with the first
/// sentence of its module doc, and every other folder described. Rewritten with UPDATE_LAYOUT=1.
#[test]
fn the_readme_layout_is_the_trees() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Every source folder is in LAYERS, every top-level folder and every folder of configs/ and
    // scripts/ is described, and everything described exists.
    let mut dirs = Vec::new();
    let mut src = Vec::new();
    rust_files(&repo.join("src"), &mut src);
    for f in &src {
        let dir =
            f.parent().expect("a folder").strip_prefix(repo).expect("in the repo").display().to_string();
        if dir != "src" && !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    let unlisted: Vec<_> = dirs.iter().filter(|d| !LAYERS.contains(&d.as_str())).collect();
    assert!(unlisted.is_empty(), "source folders missing from LAYERS in tests/code_shape.rs: {unlisted:?}");
    for (path, _) in OTHERS {
        assert!(repo.join(path).exists(), "tests/code_shape.rs describes {path}, which does not exist");
    }
    for parent in ["configs", "scripts"] {
        for e in std::fs::read_dir(repo.join(parent)).expect("a folder") {
            let p = e.expect("an entry").path();
            let name = format!("{parent}/{}/", p.file_name().expect("a name").to_string_lossy());
            assert!(
                !p.is_dir() || OTHERS.iter().any(|(o, _)| *o == name),
                "{name} is not described in OTHERS"
            );
        }
    }
    let text = layout();
    let readme_path = repo.join("README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("README.md");
    let start =
        readme.find(LAYOUT_START).expect("README.md has the generated layout's marker") + LAYOUT_START.len();
    let end = start + readme[start..].find("```\n").expect("the layout block ends");
    if std::env::var_os("UPDATE_LAYOUT").is_some() {
        let updated = format!("{}{text}{}", &readme[..start], &readme[end..]);
        std::fs::write(&readme_path, updated).expect("README.md is writable");
    } else {
        assert!(
            readme[start..end] == text,
            "README.md's Layout is not the tree's: rerun with UPDATE_LAYOUT=1 cargo test --test code_shape\n{text}"
        );
    }
}
