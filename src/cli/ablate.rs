//! `resnet-train ablate --config configs/ablations/cpu.toml`: the stability grid (see
//! `train::ablate`). Running the same command again continues an interrupted ablation.

use crate::error::Result;
use crate::experiments::ablate::{self, AblationConfig, Remedy};
use crate::model::{ActInit, ActKind, Arch};
use crate::train::step::amp::Precision;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct AblateArgs {
    /// An ablation config (configs/ablations/); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Optimizer steps per cell.
    #[arg(long, value_parser = crate::train::config::range::int::<usize>(1, 1_000_000_000), allow_negative_numbers = true)]
    pub steps: Option<usize>,
    #[arg(long, value_enum, value_delimiter = ',')]
    pub acts: Option<Vec<ActKind>>,
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(i64).range(1..=crate::model::activation::MAX_ORDER))]
    pub orders: Option<Vec<i64>>,
    #[arg(long, value_enum, value_delimiter = ',')]
    pub precisions: Option<Vec<Precision>>,
    #[arg(long, value_enum, value_delimiter = ',')]
    pub inits: Option<Vec<ActInit>>,
    /// none, act-fp32, act-lowp, clamp:C, clip:C (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub remedies: Option<Vec<Remedy>>,
    /// ImageFolder root (default: the config's, else the embedded dataset).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,
    #[arg(long, value_parser = crate::train::config::range::int::<usize>(8, crate::data::transform::MAX_SIZE as u64), allow_negative_numbers = true)]
    pub train_size: Option<usize>,
    #[arg(long, value_parser = crate::train::config::range::int::<usize>(1, 65536), allow_negative_numbers = true)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub device: Option<String>,
    #[arg(long, value_parser = crate::train::config::range::int::<u64>(0, i64::MAX as u64), allow_negative_numbers = true)]
    pub seed: Option<u64>,
    /// The ablation's folder is OUTPUT/NAME.
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub output: Option<PathBuf>,
}

pub fn run(a: AblateArgs) -> Result<()> {
    let mut c = match &a.config {
        Some(p) => AblationConfig::read(p)?,
        None => AblationConfig::default(),
    };
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = &a.$f { c.$f = v.clone(); } )* };
    }
    set!(steps, acts, orders, precisions, inits, remedies, name, output);
    macro_rules! set_train {
        ($($f:ident),*) => { $( if let Some(v) = &a.$f { c.train.$f = v.clone(); } )* };
    }
    set_train!(arch, train_size, batch_size, device, seed);
    if a.data.is_some() {
        c.train.data = a.data.clone();
    }
    crate::ffi::process::install_termination_handlers()
        .map_err(|e| crate::error::Error::Usage(format!("cannot install the signal handlers: {e}")))?;
    let total = c.cells().len();
    println!("ablation   {} cells in {}", total, c.dir().display());
    let s = ablate::run(&c)?;
    // The tables are written; a figure that cannot be drawn (no font on a bare GPU box) must not
    // turn a finished ablation into a failed command.
    let mut outputs = vec![s.dir.join("ablation.md"), s.dir.join("ablation.csv")];
    for ext in ["svg", "png"] {
        let figure = s.dir.join(format!("ablation.{ext}"));
        match crate::experiments::report::draw_ablation(&s.rows, c.steps, &figure) {
            Ok(()) => outputs.push(figure),
            Err(e) => eprintln!("warning: {} not drawn: {e}", figure.display()),
        }
    }
    let diverged = s.rows.iter().filter(|r| r.diverged).count();
    println!(
        "ablation   done: {} cells ({} run now), {diverged} diverged; {}",
        s.rows.len(),
        s.ran,
        outputs.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}
