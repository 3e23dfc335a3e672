//! `resnet-train report runs/A [runs/B ...] --out curves.svg`: compare runs at a glance.
//! `--table`: runs of several seeds (a study's `<variant>-s<seed>` folders) as one table with
//! means, 95% intervals and seed-paired differences, and curves with a band over seeds.

use crate::error::Result;
use crate::experiments::report;
use crate::experiments::study;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Run folders (each with a summary.csv).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Output figure: .svg or .png.
    #[arg(long, default_value = "curves.svg")]
    pub out: PathBuf,
    /// Print the study table of the runs (markdown; grouped by variant over seeds) and draw the
    /// curves as mean ± sd bands.
    #[arg(long)]
    pub table: bool,
    /// With --table: also report after these many epochs (e.g. 50,100,150,200).
    #[arg(long, value_delimiter = ',', value_parser = crate::train::config::range::int::<usize>(0, 100000), allow_negative_numbers = true)]
    pub at: Vec<usize>,
    /// With --table: the variant the others are compared with (default: the first run's).
    #[arg(long)]
    pub baseline: Option<String>,
}

pub fn run(a: ReportArgs) -> Result<()> {
    if a.table {
        let (table, results) = study::table_of_runs(&a.runs, &a.at, a.baseline.as_deref())?;
        println!("{}", study::to_markdown(&table, &results));
        let groups = study::curve_groups(&table, &results, |r| a.runs[r.cell.index].clone())?;
        report::draw_groups(&groups, &a.out)?;
        println!("wrote {} ({} variants)", a.out.display(), groups.len());
        return Ok(());
    }
    let runs = a.runs.iter().map(|r| report::load(r)).collect::<Result<Vec<_>>>()?;
    report::draw(&runs, &a.out)?;
    println!("wrote {} ({} runs)", a.out.display(), runs.len());
    Ok(())
}
