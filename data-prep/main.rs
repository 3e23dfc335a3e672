//! imagenet-prep: prepares ILSVRC2012 for training.
//!
//!   imagenet-prep val --src VAL_FLAT --out VAL --labels LABELS [--meta meta.mat] [--synsets FILE]
//!   imagenet-prep verify DIR [--allow-bad]
//!   imagenet-prep resize SRC OUT --max-side 256 [--quality 90]
//!   imagenet-prep train --tar ILSVRC2012_img_train.tar --out imagenet/train
//!   imagenet-prep shards --src IMAGEFOLDER --out DIR [--split train] [--shard-size N] [--shuffle-seed S]
//!
//! Every command is parallel, shows a progress bar, and can be interrupted and rerun safely.

mod matfile;
mod resize;
mod shards;
mod train_tar;
mod val;
mod verify;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "imagenet-prep", version, about = "Prepare ILSVRC2012 for resnet-train")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Extract the official training archive (a tar of per-class tars) into train/<wnid>/<file>.
    Train(train_tar::TrainTarArgs),
    /// Reorganise the flat validation folder into val/<wnid>/<file>.
    Val(val::ValArgs),
    /// Decode every image of a tree; report formats, colour spaces and bad files.
    Verify(verify::VerifyArgs),
    /// Write a pre-resized copy of a tree (shorter or longer side at most N).
    Resize(resize::ResizeArgs),
    /// Write an ImageFolder split as WebDataset shards (timm's wds/ layout, with _info.json).
    Shards(shards::ShardsArgs),
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Train(a) => train_tar::run(a),
        Command::Val(a) => val::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Resize(a) => resize::run(a),
        Command::Shards(a) => shards::run(a),
    };
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

/// A progress bar on a terminal, nothing otherwise (logs stay clean).
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:40} {pos}/{len} [{elapsed_precise} < {eta_precise}] {per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar
}

/// Every image file under `root`, sorted.
pub fn image_files(root: &std::path::Path) -> Result<Vec<std::path::PathBuf>, String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let p = e.map_err(|e| format!("{}: {e}", dir.display()))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if resnet_train::data::dataset::is_image_path(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}
