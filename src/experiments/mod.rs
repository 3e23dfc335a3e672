//! Experiments that drive many run folders: stability ablations, seeded studies, forks of a run
//! into branches, weight averaging, and the statistics and figures that compare them.
pub mod ablate;
pub mod average;
pub mod fork;
pub mod grid;
pub mod report;
pub mod stats;
pub mod study;
pub mod study_run;
