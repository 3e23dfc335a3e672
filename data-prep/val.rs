//! `val`: ILSVRC2012's validation images come in one flat folder; training tools expect
//! `val/<wnid>/<file>`. Labels come from any of:
//!   - Kaggle `LOC_val_solution.csv` (`ImageId,PredictionString`, the first token is the wnid);
//!   - `<file> <wnid>` lines;
//!   - caffe `val.txt` (`<file> <index>`, index into the sorted wnids: needs `--synsets`);
//!   - the devkit's `ILSVRC2012_validation_ground_truth.txt` (one ILSVRC2012_ID per line, in file
//!     order): these IDs are not training indices, so they are mapped through `--meta meta.mat`.

use crate::matfile;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMode {
    Hardlink,
    Symlink,
    Copy,
}

#[derive(clap::Args)]
pub struct ValArgs {
    /// The flat folder of ILSVRC2012_val_*.JPEG files.
    #[arg(long)]
    src: PathBuf,
    /// Output folder (gets <wnid>/ subfolders).
    #[arg(long)]
    out: PathBuf,
    /// Labels file (format detected from its content).
    #[arg(long)]
    labels: PathBuf,
    /// The devkit's meta.mat (for ILSVRC2012_validation_ground_truth.txt).
    #[arg(long)]
    meta: Option<PathBuf>,
    /// Sorted class list, `LOC_synset_mapping.txt` format (for caffe val.txt).
    #[arg(long)]
    synsets: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "hardlink")]
    mode: LinkMode,
    /// Print what would be done; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Go ahead despite conflicts: images with conflicting labels are left out, and an image
    /// already placed under another class (from an earlier run with other labels) is moved.
    #[arg(long)]
    force: bool,
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn is_wnid(s: &str) -> bool {
    s.len() == 9 && s.starts_with('n') && s[1..].chars().all(|c| c.is_ascii_digit())
}

fn val_file_name(i: usize) -> String {
    format!("ILSVRC2012_val_{i:08}.JPEG")
}

/// A label as read: the wnid and its 0-based line.
type Label = (String, usize);

/// Labels as read: file name -> label, and the files given two different wnids.
#[derive(Default)]
pub struct Labels {
    pub map: HashMap<String, Label>,
    /// (file, label, the other label).
    pub conflicts: Vec<(String, Label, Label)>,
}

impl Labels {
    fn insert(&mut self, file: String, wnid: String, line: usize) {
        match self.map.get(&file) {
            Some((w, l)) if *w != wnid => self.conflicts.push((file, (w.clone(), *l), (wnid, line))),
            Some(_) => {} // the same label twice
            None => {
                self.map.insert(file, (wnid, line));
            }
        }
    }
}

/// File name (with extension) -> wnid, from any supported labels format; conflicting duplicates
/// are kept aside, not resolved by line order.
pub fn parse_labels(labels: &Path, meta: Option<&Path>, synsets: Option<&Path>) -> Result<Labels, String> {
    let text = read(labels)?;
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let first = *lines.first().ok_or_else(|| format!("{}: empty labels file", labels.display()))?;
    let bad = |n: usize, l: &str| format!("{}:{}: cannot parse {l:?}", labels.display(), n + 1);
    let with_ext = |id: &str| if id.contains('.') { id.to_string() } else { format!("{id}.JPEG") };
    let mut map = Labels::default();
    if first.starts_with("ImageId") {
        for (n, l) in lines.iter().enumerate().skip(1) {
            let (id, pred) = l.split_once(',').ok_or_else(|| bad(n, l))?;
            let wnid = pred.split_whitespace().next().filter(|w| is_wnid(w)).ok_or_else(|| bad(n, l))?;
            map.insert(with_ext(id), wnid.to_string(), n);
        }
    } else if first.split_whitespace().count() == 1 {
        let meta = meta.ok_or_else(|| {
            format!(
                "{}: devkit ground truth (one ILSVRC2012_ID per line) needs --meta meta.mat",
                labels.display()
            )
        })?;
        let bytes = std::fs::read(meta).map_err(|e| format!("{}: {e}", meta.display()))?;
        let ids = matfile::ilsvrc_id_to_wnid(&bytes).map_err(|e| format!("{}: {e}", meta.display()))?;
        for (n, l) in lines.iter().enumerate() {
            let id: u32 = l.parse().map_err(|_| bad(n, l))?;
            let wnid = ids.get(&id).ok_or_else(|| {
                format!("{}: ILSVRC2012_ID {id} is not in {}", labels.display(), meta.display())
            })?;
            map.insert(val_file_name(n + 1), wnid.clone(), n);
        }
    } else {
        let classes: Option<Vec<String>> = match synsets {
            Some(p) => Some(
                read(p)?.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect(),
            ),
            None => None,
        };
        for (n, l) in lines.iter().enumerate() {
            let mut it = l.split_whitespace();
            let (file, label) = (it.next().ok_or_else(|| bad(n, l))?, it.next().ok_or_else(|| bad(n, l))?);
            let wnid = if is_wnid(label) {
                label.to_string()
            } else {
                let idx: usize = label.parse().map_err(|_| bad(n, l))?;
                let classes = classes.as_ref().ok_or_else(|| {
                    format!("{}: class indices need --synsets LOC_synset_mapping.txt", labels.display())
                })?;
                classes.get(idx).cloned().ok_or_else(|| {
                    format!("{}:{}: class index {idx} out of range", labels.display(), n + 1)
                })?
            };
            map.insert(with_ext(file), wnid, n);
        }
    }
    Ok(map)
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => {
            (x.dev() == y.dev() && x.ino() == y.ino())
                || (x.len() == y.len() && std::fs::read(a).ok() == std::fs::read(b).ok())
        }
        _ => false,
    }
}

pub fn run(a: ValArgs) -> Result<u8, String> {
    let parsed = parse_labels(&a.labels, a.meta.as_deref(), a.synsets.as_deref())?;
    if !parsed.conflicts.is_empty() {
        let (f, (w1, l1), (w2, l2)) = &parsed.conflicts[0];
        let msg = format!(
            "{}: {} images have conflicting labels, e.g. {f}: {w1} (line {}) and {w2} (line {})",
            a.labels.display(),
            parsed.conflicts.len(),
            l1 + 1,
            l2 + 1
        );
        if !a.force {
            return Err(format!("{msg}; fix the labels, or --force to leave those images out"));
        }
        eprintln!("warning: {msg}; --force: leaving them out");
    }
    let conflicted: std::collections::HashSet<&str> = parsed.conflicts.iter().map(|c| c.0.as_str()).collect();
    let labels: HashMap<String, String> = parsed
        .map
        .iter()
        .filter(|(f, _)| !conflicted.contains(f.as_str()))
        .map(|(f, (w, _))| (f.clone(), w.clone()))
        .collect();
    let files = crate::image_files(&a.src)?;
    let mut plan = Vec::new();
    let mut unlabelled = Vec::new();
    let mut present = std::collections::HashSet::new();
    for f in &files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        present.insert(name.clone());
        match labels.get(&name) {
            Some(w) => plan.push((f.clone(), a.out.join(w).join(&name))),
            None if conflicted.contains(name.as_str()) => {}
            None => unlabelled.push(name),
        }
    }
    let mut missing: Vec<&String> = labels.keys().filter(|f| !present.contains(*f)).collect();
    if !missing.is_empty() {
        missing.sort();
        eprintln!(
            "warning: {} labelled images are not in {} (e.g. {}): the output will lack them",
            missing.len(),
            a.src.display(),
            missing.iter().take(3).map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    // An earlier run with other labels: the same image already under another class folder.
    let mut misplaced = Vec::new();
    if a.out.is_dir() {
        for e in std::fs::read_dir(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?.flatten() {
            let class = e.file_name().to_string_lossy().into_owned();
            let Ok(entries) = std::fs::read_dir(e.path()) else { continue };
            for f in entries.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if labels.get(&name).is_some_and(|w| *w != class) {
                    misplaced.push(f.path());
                }
            }
        }
    }
    if !misplaced.is_empty() {
        misplaced.sort();
        let msg = format!(
            "{} images in {} sit under another class than the labels say (an earlier run with other labels?), e.g. {}",
            misplaced.len(),
            a.out.display(),
            misplaced[0].display()
        );
        if !a.force {
            return Err(format!("{msg}; --force moves them"));
        }
        eprintln!("warning: {msg}; --force: removing them before placing the images");
        if !a.dry_run {
            for m in &misplaced {
                std::fs::remove_file(m).map_err(|e| format!("{}: {e}", m.display()))?;
            }
        }
    }
    if !unlabelled.is_empty() {
        return Err(format!(
            "{} files in {} have no label in {} (e.g. {})",
            unlabelled.len(),
            a.src.display(),
            a.labels.display(),
            unlabelled.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    let classes: std::collections::BTreeSet<&str> = labels.values().map(String::as_str).collect();
    let conflicts: Vec<&PathBuf> =
        plan.iter().filter(|(s, d)| d.exists() && !same_file(s, d)).map(|(_, d)| d).collect();
    if !conflicts.is_empty() {
        return Err(format!(
            "refusing to overwrite {} existing files that differ from the source, e.g. {}",
            conflicts.len(),
            conflicts[0].display()
        ));
    }
    let todo: Vec<&(PathBuf, PathBuf)> = plan.iter().filter(|(_, d)| !d.exists()).collect();
    println!(
        "{} images in {} classes: {} to {:?} into {}, {} already in place",
        plan.len(),
        classes.len(),
        todo.len(),
        a.mode,
        a.out.display(),
        plan.len() - todo.len()
    );
    if a.dry_run {
        for (s, d) in todo.iter().take(5) {
            println!("  {} -> {}", s.display(), d.display());
        }
        return Ok(0);
    }
    let bar = crate::progress(todo.len() as u64, "val");
    for (src, dst) in todo {
        let dir = dst.parent().ok_or("bad destination")?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // Link or copy to a temp name, then rename: an interrupted run leaves no partial file.
        let tmp = dir.join(format!(".{}.tmp", dst.file_name().unwrap_or_default().to_string_lossy()));
        let _ = std::fs::remove_file(&tmp);
        let src_abs = src.canonicalize().map_err(|e| format!("{}: {e}", src.display()))?;
        let r = match a.mode {
            LinkMode::Hardlink => std::fs::hard_link(&src_abs, &tmp),
            LinkMode::Symlink => std::os::unix::fs::symlink(&src_abs, &tmp),
            LinkMode::Copy => std::fs::copy(&src_abs, &tmp).map(|_| ()),
        };
        r.and_then(|_| std::fs::rename(&tmp, dst))
            .map_err(|e| format!("{} -> {}: {e}", src.display(), dst.display()))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!("done: {} now holds {} classes", a.out.display(), classes.len());
    Ok(0)
}
