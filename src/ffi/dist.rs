//! libtorch's distributed engine (c10d) through the shim (dist.cpp): the rendezvous store and
//! process groups, with safe owners that free them on drop.

use super::{call, ptrs};
use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::OnceLock;
use tch::Tensor;

extern "C" {
    fn rt_free(p: *mut c_char);
    fn rt_dist_store(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        is_server: c_int,
        timeout_ms: i64,
        out: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_dist_store_free(store: *mut c_void);
    fn rt_dist_store_set(
        store: *mut c_void,
        key: *const c_char,
        value: *const u8,
        len: i64,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_dist_store_get(
        store: *mut c_void,
        key: *const c_char,
        value: *mut *mut u8,
        len: *mut i64,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_dist_gloo(
        store: *mut c_void,
        prefix: *const c_char,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        out: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_dist_free(pg: *mut c_void);
    fn rt_dist_prefixed(
        store: *mut c_void,
        prefix: *const c_char,
        out: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_dist_wrap_backend(
        store: *mut c_void,
        backend: *mut c_void,
        out: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_dist_allreduce(
        pg: *mut c_void,
        ts: *mut *mut c_void,
        n: c_int,
        op: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_dist_broadcast(
        pg: *mut c_void,
        ts: *mut *mut c_void,
        n: c_int,
        root: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_dist_barrier(pg: *mut c_void, err: *mut *mut c_char) -> c_int;
    fn rt_dist_reducer_new(
        pg: *mut c_void,
        params: *mut *mut c_void,
        n: c_int,
        bucket_bytes: i64,
        host: c_int,
        out: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_dist_reducer_arm(r: *mut c_void, err: *mut *mut c_char) -> c_int;
    fn rt_dist_reducer_finish(r: *mut c_void, world: f64, err: *mut *mut c_char) -> c_int;
    fn rt_dist_reducer_buckets(r: *mut c_void) -> c_int;
    fn rt_dist_reducer_launched_in_backward(r: *mut c_void) -> c_int;
    fn rt_dist_reducer_grads_as_views(r: *mut c_void) -> c_int;
    fn rt_dist_reducer_free(r: *mut c_void);
    fn rt_dist_allreduce_sum_autograd(
        pg: *mut c_void,
        x: *mut c_void,
        host: c_int,
        out: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
}

fn c_string(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Usage(format!("{what} {s:?} contains a NUL byte")))
}

/// c10d's TCPStore: rank 0 hosts it at `host:port` (unless `agent_hosted`: torchrun's agent
/// already does), every rank connects; construction returns once all `world` ranks have
/// connected (or fails after `timeout_ms`).
pub struct Store(*mut c_void);

// SAFETY: c10d's TCPStore client is thread-safe (a mutex per connection); the handle is only
// freed by drop.
unsafe impl Send for Store {}

impl Store {
    pub fn connect(host: &str, port: u16, rank: usize, world: usize, timeout_ms: u64) -> Result<Store> {
        Self::connect_to(host, port, rank, world, false, timeout_ms)
    }

    pub fn connect_to(
        host: &str,
        port: u16,
        rank: usize,
        world: usize,
        agent_hosted: bool,
        timeout_ms: u64,
    ) -> Result<Store> {
        let is_server = (rank == 0 && !agent_hosted) as c_int;
        let host_c = c_string("master address", host)?;
        let mut out = std::ptr::null_mut();
        // SAFETY: valid C string and out-pointer for the call.
        call(&format!("rendezvous at {host}:{port} (rank {rank} of {world})"), |e| unsafe {
            rt_dist_store(
                host_c.as_ptr(),
                port as c_int,
                rank as c_int,
                world as c_int,
                is_server,
                timeout_ms as i64,
                &mut out,
                e,
            )
        })?;
        Ok(Store(out))
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        let key_c = c_string("store key", key)?;
        // SAFETY: live store, C string and byte slice valid for the call.
        call("store set", |e| unsafe {
            rt_dist_store_set(self.0, key_c.as_ptr(), value.as_ptr(), value.len() as i64, e)
        })
    }

    /// The value of `key`, waiting (up to the store's timeout) for some rank to set it.
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        let key_c = c_string("store key", key)?;
        let (mut p, mut len) = (std::ptr::null_mut::<u8>(), 0i64);
        // SAFETY: live store, C string and out-pointers valid for the call.
        call(&format!("store get {key:?}"), |e| unsafe {
            rt_dist_store_get(self.0, key_c.as_ptr(), &mut p, &mut len, e)
        })?;
        // SAFETY: the shim returns a malloc'ed buffer of `len` bytes that we now own.
        let v = unsafe { std::slice::from_raw_parts(p, len as usize) }.to_vec();
        unsafe { rt_free(p as *mut c_char) };
        Ok(v)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: created by rt_dist_store, freed once.
        unsafe { rt_dist_store_free(self.0) }
    }
}

/// c10d's NCCL backend, built by build.rs when the CUDA and NCCL headers were there (see
/// src/ffi/dist_nccl.cpp); empty otherwise.
#[cfg(nccl_embedded)]
const NCCL_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libresnet_train_nccl.so"));
#[cfg(not(nccl_embedded))]
const NCCL_OBJECT: &[u8] = &[];

/// Whether this binary carries the NCCL backend.
pub fn nccl_built() -> bool {
    !NCCL_OBJECT.is_empty()
}

/// The embedded NCCL backend object (empty when not built): for the tests' link check.
pub fn nccl_object() -> &'static [u8] {
    NCCL_OBJECT
}

type NcclCreate =
    unsafe extern "C" fn(*mut c_void, c_int, c_int, i64, *mut *mut c_void, *mut *mut c_char) -> c_int;

fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next dl call.
    let p = unsafe { libc::dlerror() };
    if p.is_null() {
        "unknown dlopen error".into()
    } else {
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// Loads the embedded NCCL object (from an anonymous memory file: nothing is written to disk)
/// once; it resolves against libtorch_cuda.so, so only a CUDA machine can load it.
fn nccl_create() -> Result<NcclCreate> {
    static LOADED: OnceLock<std::result::Result<usize, String>> = OnceLock::new();
    let loaded = LOADED.get_or_init(|| {
        if NCCL_OBJECT.is_empty() {
            return Err("this binary was built without NCCL's headers (see scripts/bootstrap.sh); use \
                        --dist-backend gloo"
                .into());
        }
        let name = CString::new("resnet_train_nccl").map_err(|e| e.to_string())?;
        // SAFETY: memfd_create with a valid name; the fd is ours.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
        }
        let path = format!("/proc/self/fd/{fd}");
        std::fs::write(&path, NCCL_OBJECT).map_err(|e| format!("{path}: {e}"))?;
        let c_path = CString::new(path).map_err(|e| e.to_string())?;
        // SAFETY: dlopen/dlsym with valid C strings; the handle is leaked (stays loaded).
        let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(format!("cannot load the NCCL backend (is this a CUDA machine?): {}", dl_error()));
        }
        let sym = CString::new("rt_dist_nccl_backend").map_err(|e| e.to_string())?;
        let f = unsafe { libc::dlsym(handle, sym.as_ptr()) };
        if f.is_null() {
            return Err(format!("the NCCL backend has no rt_dist_nccl_backend: {}", dl_error()));
        }
        Ok(f as usize)
    });
    match loaded {
        // SAFETY: the symbol is rt_dist_nccl_backend of dist_nccl.cpp, of this signature.
        Ok(f) => Ok(unsafe { std::mem::transmute::<usize, NcclCreate>(*f) }),
        Err(e) => Err(Error::Torch(format!("NCCL: {e}"))),
    }
}

/// What an all-reduce combines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
}

/// A c10d backend (Gloo here) over a store: collectives in the same order on every rank.
pub struct ProcessGroup {
    pg: *mut c_void,
    rank: usize,
    world: usize,
}

// SAFETY: used from one thread at a time (the training loop); c10d backends are thread-safe for
// issuing work.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// A Gloo process group whose keys live under `prefix` in `store`.
    pub fn gloo(
        store: &Store,
        prefix: &str,
        rank: usize,
        world: usize,
        timeout_ms: u64,
    ) -> Result<ProcessGroup> {
        let prefix_c = c_string("process group prefix", prefix)?;
        let mut out = std::ptr::null_mut();
        // SAFETY: live store, C string and out-pointer valid for the call.
        call("gloo process group", |e| unsafe {
            rt_dist_gloo(
                store.0,
                prefix_c.as_ptr(),
                rank as c_int,
                world as c_int,
                timeout_ms as i64,
                &mut out,
                e,
            )
        })?;
        Ok(ProcessGroup { pg: out, rank, world })
    }

    /// An NCCL process group (CUDA tensors, each rank on its own GPU) whose keys live under
    /// `prefix` in `store`.
    pub fn nccl(
        store: &Store,
        prefix: &str,
        rank: usize,
        world: usize,
        timeout_ms: u64,
    ) -> Result<ProcessGroup> {
        let create = nccl_create()?;
        let prefix_c = c_string("process group prefix", prefix)?;
        let mut prefixed = std::ptr::null_mut();
        // SAFETY: live store, C string and out-pointer valid for the call.
        call("prefix store", |e| unsafe { rt_dist_prefixed(store.0, prefix_c.as_ptr(), &mut prefixed, e) })?;
        let prefixed = Store(prefixed);
        let mut backend = std::ptr::null_mut();
        // SAFETY: the NCCL object's constructor, a live store handle and out-pointers.
        call("NCCL process group", |e| unsafe {
            create(prefixed.0, rank as c_int, world as c_int, timeout_ms as i64, &mut backend, e)
        })?;
        let mut out = std::ptr::null_mut();
        // SAFETY: `backend` came from rt_dist_nccl_backend; ownership passes to the process group.
        call("NCCL process group", |e| unsafe { rt_dist_wrap_backend(prefixed.0, backend, &mut out, e) })?;
        Ok(ProcessGroup { pg: out, rank, world })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// In place on every tensor; returns when the results are there.
    pub fn all_reduce(&self, tensors: &[Tensor], op: ReduceOp) -> Result<()> {
        let mut p = ptrs(tensors);
        let code = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Max => 1,
            ReduceOp::Min => 2,
        };
        // SAFETY: live process group and `n` live tensor pointers for the call.
        call("all-reduce", |e| unsafe {
            rt_dist_allreduce(self.pg, p.as_mut_ptr(), p.len() as c_int, code, e)
        })
    }

    /// The sum of `x` over the ranks, differentiable: its backward sums the gradients over the
    /// ranks the same way (SyncBatchNorm's statistics). `host`: through a CPU copy (Gloo with a
    /// CUDA tensor).
    pub fn all_reduce_sum_autograd(&self, x: &Tensor, host: bool) -> Result<Tensor> {
        let mut out = std::ptr::null_mut();
        // SAFETY: live process group and tensor for the call; on success the shim returns a new
        // heap tensor we take ownership of. The autograd node keeps the process group's address
        // for backward: the owner (Dist) outlives every step's backward.
        call("SyncBatchNorm all-reduce", |e| unsafe {
            rt_dist_allreduce_sum_autograd(self.pg, x.as_ptr() as *mut c_void, host as c_int, &mut out, e)
        })?;
        Ok(unsafe { Tensor::from_ptr(out as *mut torch_sys::C_tensor) })
    }

    /// DDP's gradient reducer over `params` (see `GradReducer`).
    pub fn reducer(&self, params: &[Tensor], bucket_bytes: usize, host: bool) -> Result<GradReducer> {
        let mut p = ptrs(params);
        let mut out = std::ptr::null_mut();
        // SAFETY: live process group and `n` live tensor pointers for the call; the reducer keeps
        // its own references to the parameters and is freed by its drop.
        call("gradient reducer", |e| unsafe {
            rt_dist_reducer_new(
                self.pg,
                p.as_mut_ptr(),
                p.len() as c_int,
                bucket_bytes as i64,
                host as c_int,
                &mut out,
                e,
            )
        })?;
        Ok(GradReducer { r: out, world: self.world as f64 })
    }

    /// Every rank's tensors become rank `root`'s.
    pub fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<()> {
        let mut p = ptrs(tensors);
        // SAFETY: as all_reduce.
        call("broadcast", |e| unsafe {
            rt_dist_broadcast(self.pg, p.as_mut_ptr(), p.len() as c_int, root as c_int, e)
        })
    }

    pub fn barrier(&self) -> Result<()> {
        // SAFETY: live process group.
        call("barrier", |e| unsafe { rt_dist_barrier(self.pg, e) })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created by rt_dist_gloo, freed once.
        unsafe { rt_dist_free(self.pg) }
    }
}

/// DDP's overlap of the gradient all-reduce with backward: hooks on the parameters' gradient
/// accumulators start each bucket's all-reduce once its gradients are ready (buckets in a fixed
/// order, ~25 MB, reverse parameter order). `arm` before the backward whose gradients are to be
/// reduced (the last micro-batch's), `finish` after it: the gradients are then the means over
/// the ranks, exactly as `Dist::average` computes them, held in the buckets themselves (DDP's
/// `gradient_as_bucket_view`: no copy back).
pub struct GradReducer {
    r: *mut c_void,
    world: f64,
}

impl GradReducer {
    pub fn arm(&self) -> Result<()> {
        // SAFETY: live reducer.
        call("gradient reducer", |e| unsafe { rt_dist_reducer_arm(self.r, e) })
    }

    pub fn finish(&self) -> Result<()> {
        // SAFETY: live reducer.
        call("gradient all-reduce", |e| unsafe { rt_dist_reducer_finish(self.r, self.world, e) })
    }

    pub fn buckets(&self) -> usize {
        // SAFETY: live reducer.
        unsafe { rt_dist_reducer_buckets(self.r) as usize }
    }

    /// Buckets whose all-reduce the hooks started during the last reduced backward (the rest
    /// started in `finish`).
    pub fn launched_in_backward(&self) -> usize {
        // SAFETY: live reducer.
        unsafe { rt_dist_reducer_launched_in_backward(self.r) as usize }
    }

    /// Parameters whose gradient was a slice of its bucket after the last `finish` (all of them,
    /// unless the buckets live on the host for Gloo with CUDA tensors: then copied back).
    pub fn grads_as_views(&self) -> usize {
        // SAFETY: live reducer.
        unsafe { rt_dist_reducer_grads_as_views(self.r) as usize }
    }
}

impl Drop for GradReducer {
    fn drop(&mut self) {
        // SAFETY: created by rt_dist_reducer_new, freed once.
        unsafe { rt_dist_reducer_free(self.r) }
    }
}
