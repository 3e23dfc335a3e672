//! torchrun for users without PyTorch (`resnet-train launch --nproc-per-node N -- train ...`).
//! Starts this node's ranks with torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
//! LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), prefixes their stderr lines (and the other ranks'
//! stdout) with the rank, forwards SIGINT/SIGTERM once (and SIGUSR1, "save now", each time), and
//! when one rank fails stops the others
//! and says which rank failed and how: a job never hangs on a dead rank.

use crate::error::{Error, Result};
use crate::supervise::{describe, Supervisor};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct LaunchArgs {
    /// Processes on this node (one per GPU; on CPU, the cores are shared between them).
    #[arg(long, value_parser = crate::train::config::range::int::<usize>(1, 1024), allow_negative_numbers = true)]
    pub nproc_per_node: usize,
    /// Nodes in the job (run the same command on each, with its --node-rank).
    #[arg(long, default_value_t = 1, value_parser = crate::train::config::range::int::<usize>(1, 100000), allow_negative_numbers = true)]
    pub nnodes: usize,
    /// This node's index, 0..nnodes (node 0 hosts the rendezvous).
    #[arg(long, default_value_t = 0, value_parser = crate::train::config::range::int::<usize>(0, 99999), allow_negative_numbers = true)]
    pub node_rank: usize,
    /// Address of node 0, reachable from every node.
    #[arg(long, default_value = "127.0.0.1")]
    pub master_addr: String,
    /// Rendezvous TCP port on node 0.
    #[arg(long, default_value_t = crate::dist::DEFAULT_PORT)]
    pub master_port: u16,
    /// Seconds the other ranks get to exit after one failed, before they are killed.
    #[arg(long, default_value_t = 30, value_parser = crate::train::config::range::int::<u64>(0, 86400), allow_negative_numbers = true)]
    pub grace: u64,
    /// The resnet-train arguments each rank runs, after `--` (e.g. `-- train --config F`).
    #[arg(last = true, required = true)]
    pub args: Vec<String>,
}

/// Copies a child's output to ours line by line, each line prefixed (whole lines, so ranks'
/// lines never interleave mid-line).
fn relay(from: impl Read + Send + 'static, prefix: String, to_stderr: bool) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let mut out = prefix.clone().into_bytes();
            out.extend_from_slice(&line);
            if !out.ends_with(b"\n") {
                out.push(b'\n');
            }
            // A closed terminal or pipe only loses the copy; the rank runs on.
            let _ =
                if to_stderr { std::io::stderr().write_all(&out) } else { std::io::stdout().write_all(&out) };
            line.clear();
        }
    })
}

pub fn run(a: LaunchArgs) -> Result<()> {
    if a.nproc_per_node == 0 || a.nnodes == 0 {
        return Err(Error::Usage("--nproc-per-node and --nnodes must be at least 1".into()));
    }
    if a.node_rank >= a.nnodes {
        return Err(Error::Usage(format!("--node-rank {} is not one of 0..{}", a.node_rank, a.nnodes)));
    }
    let world = a.nnodes * a.nproc_per_node;
    crate::ffi::process::install_termination_handlers()
        .map_err(|e| Error::Usage(format!("cannot install the signal handlers: {e}")))?;
    let exe = crate::runtime::this_program()?;
    // As torchrun: the cores are shared by this node's ranks unless the user said otherwise.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let omp =
        std::env::var("OMP_NUM_THREADS").unwrap_or_else(|_| (cores / a.nproc_per_node).max(1).to_string());
    eprintln!(
        "launch     {} rank(s) on node {} of {} (world {world}), rendezvous {}:{}, OMP_NUM_THREADS={omp}",
        a.nproc_per_node, a.node_rank, a.nnodes, a.master_addr, a.master_port
    );
    let (mut ranks, relays) = spawn_ranks(&a, &exe, &omp)?;
    let (failure, statuses) = wait_for(&mut ranks, Duration::from_secs(a.grace));
    for r in relays {
        let _ = r.join();
    }
    match failure {
        None => Ok(()),
        Some((rank, how)) if ranks.forwarded().is_some() => Err(Error::Interrupted {
            signal: ranks.forwarded().unwrap_or(libc::SIGTERM),
            msg: format!("stopped the {world} rank(s) (rank {rank}: {how})"),
        }),
        Some((rank, how)) => {
            let others: Vec<String> = statuses
                .iter()
                .filter(|(r, _)| *r != rank)
                .map(|(r, s)| format!("rank {r}: {}", describe(s)))
                .collect();
            Err(Error::Usage(format!(
                "rank {rank} failed ({how}); stopped the other ranks{}",
                if others.is_empty() { String::new() } else { format!(" ({})", others.join(", ")) }
            )))
        }
    }
}

/// The ranks started and the threads relaying their output.
type Ranks = (Supervisor<usize>, Vec<std::thread::JoinHandle<()>>);

/// This node's ranks, each with the torchrun environment, their output relayed (rank 0's as the
/// job's console). A rank that cannot start kills those started.
fn spawn_ranks(a: &LaunchArgs, exe: &std::path::Path, omp: &str) -> Result<Ranks> {
    let world = a.nnodes * a.nproc_per_node;
    let mut ranks = Supervisor::default();
    let mut relays = Vec::new();
    for local in 0..a.nproc_per_node {
        let rank = a.node_rank * a.nproc_per_node + local;
        let mut cmd = Command::new(exe);
        cmd.args(&a.args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("LOCAL_WORLD_SIZE", a.nproc_per_node.to_string())
            .env("GROUP_RANK", a.node_rank.to_string())
            .env("MASTER_ADDR", &a.master_addr)
            .env("MASTER_PORT", a.master_port.to_string())
            .env("OMP_NUM_THREADS", omp)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = match ranks.spawn(rank, cmd) {
            Ok(c) => c,
            Err(e) => {
                ranks.kill_all();
                return Err(Error::Usage(format!("cannot start rank {rank} ({}): {e}", exe.display())));
            }
        };
        if let Some(out) = child.stdout.take() {
            // Rank 0's console is the job's; the others' (normally silent) lines are marked.
            relays.push(relay(out, if rank == 0 { String::new() } else { format!("[rank {rank}] ") }, false));
        }
        if let Some(err) = child.stderr.take() {
            relays.push(relay(err, format!("[rank {rank}] "), true));
        }
    }
    Ok((ranks, relays))
}

/// How the ranks ended: the first that failed and how, and every rank's exit status.
type Ended = (Option<(usize, String)>, Vec<(usize, ExitStatus)>);

/// Waits for the ranks; on the first failure stops the others (SIGTERM, then SIGKILL after
/// `grace`).
fn wait_for(ranks: &mut Supervisor<usize>, grace: Duration) -> Ended {
    let mut failure: Option<(usize, String)> = None;
    let mut statuses = Vec::new();
    while !ranks.is_empty() {
        for (rank, ended) in ranks.poll() {
            match ended {
                Ok(status) => {
                    if !status.success() && failure.is_none() {
                        failure = Some((rank, describe(&status)));
                    }
                    statuses.push((rank, status));
                }
                Err(why) => {
                    failure.get_or_insert((rank, why));
                }
            }
        }
        if failure.is_some() && !ranks.is_empty() {
            ranks.stop(grace);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (failure, statuses)
}
