//! imagenet-prep: ILSVRC2012 preparation (val reorganisation, verify, resize). See the data issue;
//! the subcommands land with the data pipeline.
fn main() -> std::process::ExitCode {
    eprintln!("imagenet-prep: not implemented yet (val / verify / resize land with the data pipeline)");
    std::process::ExitCode::from(2)
}
