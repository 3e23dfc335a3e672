//! libtorch's distributed engine (c10d) through the shim (dist.cpp): the rendezvous store and
//! process groups, with safe owners that free them on drop.

use super::torch::{call, ptrs};
use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, c_void, CString};
use tch::Tensor;

extern "C" {
    fn rt_free(p: *mut c_char);
    fn rt_dist_store(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
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
}

fn c_string(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Usage(format!("{what} {s:?} contains a NUL byte")))
}

/// c10d's TCPStore: rank 0 hosts it at `host:port`, every rank connects; construction returns
/// once all `world` ranks have connected (or fails after `timeout_ms`).
pub struct Store(*mut c_void);

// SAFETY: c10d's TCPStore client is thread-safe (a mutex per connection); the handle is only
// freed by drop.
unsafe impl Send for Store {}

impl Store {
    pub fn connect(host: &str, port: u16, rank: usize, world: usize, timeout_ms: u64) -> Result<Store> {
        let host_c = c_string("master address", host)?;
        let mut out = std::ptr::null_mut();
        // SAFETY: valid C string and out-pointer for the call.
        call(&format!("rendezvous at {host}:{port} (rank {rank} of {world})"), |e| unsafe {
            rt_dist_store(
                host_c.as_ptr(),
                port as c_int,
                rank as c_int,
                world as c_int,
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
