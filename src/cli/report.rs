//! `resnet-train report runs/A [runs/B ...] --out curves.svg`: compare runs at a glance.

use crate::error::Result;
use crate::report;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Run folders (each with a summary.csv).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Output figure: .svg or .png.
    #[arg(long, default_value = "curves.svg")]
    pub out: PathBuf,
}

pub fn run(a: ReportArgs) -> Result<()> {
    let runs = a.runs.iter().map(|r| report::load(r)).collect::<Result<Vec<_>>>()?;
    report::draw(&runs, &a.out)?;
    println!("wrote {} ({} runs)", a.out.display(), runs.len());
    Ok(())
}
