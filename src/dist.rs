//! Data-parallel training across processes, on libtorch's c10d (what PyTorch DDP runs on). Which
//! rank this process is (torchrun's or SLURM's environment, or `resnet-train launch`'s, which sets
//! torchrun's), the rendezvous, and the collectives the trainer needs — identical start, gradients
//! averaged in buckets, and one decision for all ranks.

use crate::error::{Error, Result};
use crate::ffi::dist::{ProcessGroup, ReduceOp, Store};
use std::time::Duration;
use tch::{Device, Kind, Tensor};

/// DDP's default gradient bucket size.
pub const BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// torchrun's default rendezvous port.
pub const DEFAULT_PORT: u16 = 29500;

/// Which BatchNorm running statistics the ranks share before evaluating and saving (timm's
/// `dist_bn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DistBn {
    /// Rank 0's (DDP's `broadcast_buffers`, torchvision).
    Broadcast,
    /// The mean over the ranks (timm's `--dist-bn reduce`, its default).
    Reduce,
}

/// Where this process stands in the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub local_world: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// Which launcher's variables these came from (for messages).
    pub source: &'static str,
    /// torchrun's agent already hosts the store at MASTER_PORT (TORCHELASTIC_USE_AGENT_STORE).
    pub agent_store: bool,
}

fn parse_var<T: std::str::FromStr>(get: &dyn Fn(&str) -> Option<String>, name: &str) -> Result<Option<T>> {
    match get(name) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| {
            Error::Usage(format!("environment variable {name}={v:?} is not a {}", std::any::type_name::<T>()))
        }),
    }
}

fn require<T: std::str::FromStr>(get: &dyn Fn(&str) -> Option<String>, name: &str, why: &str) -> Result<T> {
    parse_var(get, name)?
        .ok_or_else(|| Error::Usage(format!("environment variable {name} is not set ({why})")))
}

impl DistEnv {
    /// The job this process belongs to, from the environment: torchrun's variables (`RANK`,
    /// `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`), else SLURM's
    /// (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, with `MASTER_ADDR`/`MASTER_PORT`). None
    /// without them (or a single SLURM task); torchrun's world of one is kept (see `job`).
    pub fn from_env() -> Result<Option<DistEnv>> {
        Self::from_vars(&|k| std::env::var(k).ok())
    }

    /// Whether this process is rank 0 of its job, or in none (the one that prints run-level lines).
    pub fn is_main_process() -> bool {
        Self::from_env().ok().flatten().is_none_or(|e| e.rank == 0)
    }

    /// The data-parallel job this process joins with `backend`, if any. A world of one runs as a
    /// plain process (a process group would only add the collectives' cost) unless `backend`
    /// names one: `--dist-backend nccl|gloo` takes the whole data-parallel path on one rank, as
    /// DDP does under `torchrun --nproc-per-node 1`, which is how its overhead is measured.
    pub fn job(backend: DistBackend) -> Result<Option<DistEnv>> {
        Ok(Self::from_env()?.filter(|e| e.world > 1 || backend != DistBackend::Auto))
    }

    pub fn from_vars(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<DistEnv>> {
        let env = if let Some(world) = parse_var::<usize>(get, "WORLD_SIZE")? {
            let why = "torchrun sets it with WORLD_SIZE";
            let rank = require(get, "RANK", why)?;
            let local_rank = parse_var(get, "LOCAL_RANK")?.unwrap_or(rank);
            let local_world = parse_var(get, "LOCAL_WORLD_SIZE")?.unwrap_or(world);
            let master_addr = get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
            let master_port = parse_var(get, "MASTER_PORT")?.unwrap_or(DEFAULT_PORT);
            let agent_store =
                get("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true"));
            DistEnv {
                rank,
                world,
                local_rank,
                local_world,
                master_addr,
                master_port,
                source: "torchrun",
                agent_store,
            }
        } else if let Some(world) = parse_var::<usize>(get, "SLURM_NTASKS")? {
            if world <= 1 {
                return Ok(None);
            }
            let why = "SLURM sets it for every task of srun";
            let rank = require(get, "SLURM_PROCID", why)?;
            let local_rank = require(get, "SLURM_LOCALID", why)?;
            // "4" or "4(x2)": tasks on this node.
            let per_node = get("SLURM_NTASKS_PER_NODE")
                .or_else(|| get("SLURM_STEP_TASKS_PER_NODE"))
                .and_then(|v| v.split(['(', ',']).next().and_then(|n| n.trim().parse().ok()));
            let master_addr = get("MASTER_ADDR").ok_or_else(|| {
                Error::Usage(
                    "SLURM job with several tasks but MASTER_ADDR is not set: export \
                     MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1) in the batch script"
                        .into(),
                )
            })?;
            let master_port = parse_var(get, "MASTER_PORT")?.unwrap_or(DEFAULT_PORT);
            DistEnv {
                rank,
                world,
                local_rank,
                local_world: per_node.unwrap_or(world),
                master_addr,
                master_port,
                source: "SLURM",
                agent_store: false,
            }
        } else {
            return Ok(None);
        };
        if env.world == 0 || env.rank >= env.world {
            return Err(Error::Usage(format!(
                "{}: rank {} is not in a world of {} processes",
                env.source, env.rank, env.world
            )));
        }
        if env.local_world == 0 || env.local_rank >= env.local_world {
            return Err(Error::Usage(format!(
                "{}: local rank {} is not among {} local processes",
                env.source, env.local_rank, env.local_world
            )));
        }
        Ok(Some(env))
    }

    /// `--device cuda` means this process's GPU, `cuda:LOCAL_RANK` (torchrun's convention).
    pub fn device(&self, device: Device) -> Device {
        match device {
            Device::Cuda(0) => Device::Cuda(self.local_rank),
            d => d,
        }
    }
}

/// Which c10d backend carries the collectives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DistBackend {
    /// NCCL on CUDA devices, Gloo on CPU (what torchrun users get from DDP).
    Auto,
    /// Gloo: CPU tensors (CUDA tensors through host copies).
    Gloo,
    /// NCCL: CUDA tensors, GPU to GPU.
    Nccl,
}

/// This process's membership of a data-parallel job: the store and a process group.
pub struct Dist {
    pub env: DistEnv,
    /// Where the collectives' tensors live: the CPU for Gloo, this rank's GPU for NCCL.
    comm_device: Device,
    pg: ProcessGroup,
    // Dropped after the process group (field order): c10d's backend keeps using the store.
    _store: Store,
}

impl Dist {
    /// Rendezvous with the other ranks (rank 0 hosts the store) and a Gloo process group; waits up
    /// to `timeout` for all of them, and every later collective fails after `timeout` too (a rank
    /// that died or hangs), rather than hanging the job.
    pub fn init(env: DistEnv, backend: DistBackend, device: Device, timeout: Duration) -> Result<Dist> {
        let nccl = match (backend, device) {
            (DistBackend::Nccl, Device::Cpu) => {
                return Err(Error::Usage(
                    "--dist-backend nccl needs --device cuda (NCCL reduces GPU memory)".into(),
                ))
            }
            (DistBackend::Nccl, _) => true,
            (DistBackend::Auto, Device::Cuda(_)) => crate::ffi::dist::nccl_built(),
            _ => false,
        };
        let ms = timeout.as_millis().max(1) as u64;
        let store =
            Store::connect_to(&env.master_addr, env.master_port, env.rank, env.world, env.agent_store, ms)?;
        let (pg, comm_device) = if nccl {
            (ProcessGroup::nccl(&store, "resnet-train/", env.rank, env.world, ms)?, device)
        } else {
            (ProcessGroup::gloo(&store, "resnet-train/", env.rank, env.world, ms)?, Device::Cpu)
        };
        Ok(Dist { env, comm_device, pg, _store: store })
    }

    /// "NCCL" or "Gloo".
    pub fn backend_name(&self) -> &'static str {
        if self.comm_device.is_cuda() {
            "NCCL"
        } else {
            "Gloo"
        }
    }

    /// The differentiable sum of `x` over the ranks (see `ProcessGroup::all_reduce_sum_autograd`).
    pub fn all_reduce_sum_autograd(&self, x: &Tensor) -> Result<Tensor> {
        self.pg.all_reduce_sum_autograd(x, x.device() != self.comm_device)
    }

    pub fn rank(&self) -> usize {
        self.env.rank
    }

    pub fn world(&self) -> usize {
        self.env.world
    }

    pub fn is_main(&self) -> bool {
        self.env.rank == 0
    }

    /// Runs `f` over `tensors` gathered into flat buckets of at most `BUCKET_BYTES` (one dtype
    /// each, on the backend's device), then copies the results back: few large messages instead
    /// of one per tensor.
    fn bucketed(&self, tensors: &[Tensor], f: impl Fn(&[Tensor]) -> Result<()>) -> Result<()> {
        let mut buckets: Vec<(Kind, Vec<usize>, usize)> = Vec::new();
        for (i, t) in tensors.iter().enumerate() {
            let (kind, bytes) = (t.kind(), t.numel() * t.kind().elt_size_in_bytes());
            match buckets.iter_mut().rev().find(|(k, _, b)| *k == kind && b + bytes <= BUCKET_BYTES) {
                Some((_, members, b)) => {
                    members.push(i);
                    *b += bytes;
                }
                None => buckets.push((kind, vec![i], bytes)),
            }
        }
        let flats: Vec<Tensor> = buckets
            .iter()
            .map(|(_, members, _)| {
                let parts: Vec<Tensor> = members.iter().map(|&i| tensors[i].reshape([-1])).collect();
                // Gloo reduces host memory: CUDA tensors travel through a host copy.
                Tensor::f_cat(&parts, 0).and_then(|t| t.f_to_device(self.comm_device)).map_err(Error::from)
            })
            .collect::<Result<_>>()?;
        f(&flats)?;
        for ((_, members, _), flat) in buckets.iter().zip(&flats) {
            let mut offset = 0;
            for &i in members {
                let t = &tensors[i];
                let n = t.numel() as i64;
                let part = flat.f_narrow(0, offset, n)?.f_view(t.size().as_slice())?;
                tch::no_grad(|| t.shallow_clone().f_copy_(&part))?;
                offset += n;
            }
        }
        Ok(())
    }

    /// Every rank's tensors become rank 0's (weights and buffers at start, before evaluation and
    /// checkpoints).
    pub fn broadcast_from_main(&self, tensors: &[Tensor]) -> Result<()> {
        self.bucketed(tensors, |flats| self.pg.broadcast(flats, 0))
    }

    /// A reducer that averages `params`' gradients over the ranks during backward (DDP's overlap).
    pub fn reducer(&self, params: &[Tensor]) -> Result<crate::ffi::dist::GradReducer> {
        let host = params.first().is_some_and(|p| p.device() != self.comm_device);
        self.pg.reducer(params, BUCKET_BYTES, host)
    }

    /// Gradients averaged over ranks (DDP's all-reduce), in place.
    pub fn average(&self, grads: &[Tensor]) -> Result<()> {
        let world = self.world() as f64;
        self.bucketed(grads, |flats| {
            self.pg.all_reduce(flats, ReduceOp::Sum)?;
            for f in flats {
                tch::no_grad(|| f.shallow_clone().f_div_scalar_(world).map(drop))?;
            }
            Ok(())
        })
    }

    /// Element-wise sum / max / min of `values` over ranks.
    pub fn reduce_f64(&self, values: &[f64], op: ReduceOp) -> Result<Vec<f64>> {
        let t = Tensor::from_slice(values).f_to_device(self.comm_device)?;
        self.pg.all_reduce(std::slice::from_ref(&t), op)?;
        Ok(Vec::<f64>::try_from(&t.f_to_device(Device::Cpu)?)?)
    }

    /// True on every rank when it is true on any (a stop signal one rank caught).
    pub fn any(&self, flag: bool) -> Result<bool> {
        Ok(self.reduce_f64(&[flag as u8 as f64], ReduceOp::Max)?[0] > 0.0)
    }

    /// Fails on every rank, naming `what`, unless all ranks hold the same `value`.
    pub fn check_same(&self, what: &str, value: f64) -> Result<()> {
        let hi = self.reduce_f64(&[value], ReduceOp::Max)?[0];
        let lo = self.reduce_f64(&[value], ReduceOp::Min)?[0];
        if hi.to_bits() != lo.to_bits() && !(hi.is_nan() && lo.is_nan()) {
            return Err(Error::Usage(format!("{what} differs between ranks ({lo} .. {hi})")));
        }
        Ok(())
    }

    pub fn barrier(&self) -> Result<()> {
        self.pg.barrier()
    }
}

/// A checksum of named tensors' values (sum of |x| in float64, in name order: the same on every
/// rank), to check that ranks start identical.
pub fn checksum(named: impl IntoIterator<Item = (String, Tensor)>) -> Result<f64> {
    let mut named: Vec<(String, Tensor)> = named.into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut s = 0.0;
    for (_, t) in &named {
        s += t.f_abs()?.f_sum(Kind::Double)?.f_double_value(&[])?;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<Option<DistEnv>> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        DistEnv::from_vars(&|k| m.get(k).cloned())
    }

    #[test]
    fn torchrun_variables_define_the_rank() {
        let e = env(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "4"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "1234"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((e.rank, e.world, e.local_rank, e.local_world), (5, 8, 1, 4));
        assert_eq!((e.master_addr.as_str(), e.master_port, e.source), ("node0", 1234, "torchrun"));
        assert_eq!(e.device(Device::Cuda(0)), Device::Cuda(1));
        assert_eq!(e.device(Device::Cpu), Device::Cpu);
        assert!(!e.agent_store);
        // torchrun's agent hosts the store itself: rank 0 then connects as a client.
        let agent = env(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("TORCHELASTIC_USE_AGENT_STORE", "True")]);
        assert!(agent.unwrap().unwrap().agent_store);
    }

    #[test]
    fn slurm_variables_define_the_rank_and_need_master_addr() {
        let vars = [
            ("SLURM_NTASKS", "8"),
            ("SLURM_PROCID", "6"),
            ("SLURM_LOCALID", "2"),
            ("SLURM_NTASKS_PER_NODE", "4(x2)"),
        ];
        let msg = env(&vars).unwrap_err().to_string();
        assert!(msg.contains("MASTER_ADDR"), "{msg}");
        let mut with_addr = vars.to_vec();
        with_addr.push(("MASTER_ADDR", "n1"));
        let e = env(&with_addr).unwrap().unwrap();
        assert_eq!((e.rank, e.world, e.local_rank, e.local_world, e.master_port), (6, 8, 2, 4, DEFAULT_PORT));
        assert_eq!(env(&[("SLURM_NTASKS", "1"), ("SLURM_PROCID", "0")]).unwrap(), None);
    }

    #[test]
    fn single_process_and_bad_variables() {
        assert_eq!(env(&[]).unwrap(), None);
        // A world of one is kept: `job` decides whether it joins a process group.
        assert_eq!(env(&[("WORLD_SIZE", "1"), ("RANK", "0")]).unwrap().map(|e| e.world), Some(1));
        let msg = env(&[("WORLD_SIZE", "2")]).unwrap_err().to_string();
        assert!(msg.contains("RANK"), "{msg}");
        let msg = env(&[("WORLD_SIZE", "2"), ("RANK", "2")]).unwrap_err().to_string();
        assert!(msg.contains("rank 2 is not in a world of 2"), "{msg}");
        let msg = env(&[("WORLD_SIZE", "two"), ("RANK", "0")]).unwrap_err().to_string();
        assert!(msg.contains("WORLD_SIZE"), "{msg}");
    }
}

thread_local! {
    static SYNC_BN: std::cell::RefCell<Option<std::rc::Rc<Dist>>> = const { std::cell::RefCell::new(None) };
    static SYNC_BN_ERROR: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// While alive, BatchNorm layers in training mode on this thread normalise with the statistics of
/// every rank's batch (SyncBatchNorm). The engine enters it around a step's forward passes.
pub struct SyncBnScope(());

impl SyncBnScope {
    pub fn enter(dist: std::rc::Rc<Dist>) -> SyncBnScope {
        SYNC_BN.with(|s| *s.borrow_mut() = Some(dist));
        SyncBnScope(())
    }

    /// The first collective failure inside a forward pass since the last call (the model's
    /// forward cannot return errors; the step must).
    pub fn take_error(&self) -> Result<()> {
        match SYNC_BN_ERROR.with(|e| e.borrow_mut().take()) {
            Some(m) => Err(Error::Usage(m)),
            None => Ok(()),
        }
    }
}

impl Drop for SyncBnScope {
    fn drop(&mut self) {
        SYNC_BN.with(|s| *s.borrow_mut() = None);
        SYNC_BN_ERROR.with(|e| *e.borrow_mut() = None);
    }
}

/// Inside a `SyncBnScope`: this thread's (rank, world).
pub fn sync_bn_ranks() -> Option<(usize, usize)> {
    SYNC_BN.with(|s| s.borrow().as_ref().map(|d| (d.rank(), d.world())))
}

/// Inside a `SyncBnScope`: the differentiable sum of `x` over the ranks.
pub fn sync_bn_sum(x: &Tensor) -> Option<Result<Tensor>> {
    SYNC_BN.with(|s| s.borrow().as_ref().map(|d| d.all_reduce_sum_autograd(x)))
}

/// Records a SyncBatchNorm failure for `SyncBnScope::take_error` (the first one is kept).
pub fn record_sync_bn_error(e: &Error) {
    SYNC_BN_ERROR.with(|s| {
        let mut s = s.borrow_mut();
        if s.is_none() {
            *s = Some(e.to_string());
        }
    });
}
