//! Child processes supervised as one job (`launch`'s ranks, `study --jobs`'s cells). Each child
//! runs in its own process group that dies with this process; a termination signal is forwarded
//! to them once and every "save now" request (SIGUSR1) each time; `stop` asks them all to exit
//! and kills those still running after a grace period (a rank blocked in a collective with a
//! dead peer may not react to SIGTERM).

use crate::ffi::process;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Running children, each known by a key (a rank, a cell).
pub struct Supervisor<K> {
    children: Vec<(K, Child)>,
    forwarded: Option<i32>,
    kill_at: Option<Instant>,
}

/// How a child ended: its status, or why it could not be waited for (it was killed then).
pub type Ended<K> = (K, std::result::Result<ExitStatus, String>);

impl<K> Default for Supervisor<K> {
    fn default() -> Self {
        Supervisor { children: Vec::new(), forwarded: None, kill_at: None }
    }
}

impl<K> Supervisor<K> {
    /// Starts `cmd` as child `key`, in its own process group that dies with this process.
    pub fn spawn(&mut self, key: K, mut cmd: Command) -> std::io::Result<&mut Child> {
        process::own_group_dies_with_parent(&mut cmd);
        let child = cmd.spawn()?;
        self.children.push((key, child));
        Ok(&mut self.children.last_mut().expect("just pushed").1)
    }

    pub fn running(&self) -> impl Iterator<Item = &K> {
        self.children.iter().map(|(k, _)| k)
    }

    pub fn len(&self) -> usize {
        self.children.len()
    }

    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// The termination signal this process received and forwarded to the children, if any.
    pub fn forwarded(&self) -> Option<i32> {
        self.forwarded
    }

    /// One round: forwards a termination signal (once) and a save request (each time), kills the
    /// children left when a `stop`'s grace has passed, and returns those that ended since the
    /// last round.
    pub fn poll(&mut self) -> Vec<Ended<K>> {
        if let (Some(sig), None) = (process::termination_requested(), self.forwarded) {
            self.forwarded = Some(sig);
            for (_, c) in &self.children {
                process::send_signal(c.id(), sig);
            }
        }
        if process::take_save_request() {
            for (_, c) in &self.children {
                process::send_signal(c.id(), libc::SIGUSR1);
            }
        }
        if self.kill_at.is_some_and(|t| Instant::now() >= t) {
            for (_, c) in &mut self.children {
                let _ = c.kill();
            }
        }
        let mut ended = Vec::new();
        let mut still = Vec::new();
        for (key, mut child) in std::mem::take(&mut self.children) {
            match child.try_wait() {
                Ok(Some(status)) => ended.push((key, Ok(status))),
                Ok(None) => still.push((key, child)),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    ended.push((key, Err(format!("cannot be waited for: {e}"))));
                }
            }
        }
        self.children = still;
        ended
    }

    /// Asks every child to exit (SIGTERM, once) and kills those still running `grace` later.
    pub fn stop(&mut self, grace: Duration) {
        if self.kill_at.is_none() {
            self.kill_at = Some(Instant::now() + grace);
            for (_, c) in &self.children {
                process::terminate(c.id());
            }
        }
    }

    /// Kills every child now (a job that cannot start all its children).
    pub fn kill_all(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

/// An exit status in words ("exit code 1", "killed by signal 9").
pub fn describe(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}
