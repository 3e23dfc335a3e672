//! Remote shards made local ahead of need: `prefetch_shards` download threads fetch shards in the
//! order the epoch first needs them (at most that many shards ahead of the furthest one being
//! read), into a local shard cache, and index each on arrival; readers read members from the
//! cached file by position. A shard a reader needs that is not there yet is fetched at once,
//! before any prefetch, so nothing depends on the plan being exact (a substitute for a bad image
//! may lie anywhere).
//!
//! Memory holds no shard: they live on the cache's disk, each deleted once the epoch has read all
//! it needs from it, unless the cache may keep `shard_cache_gb` (then the least recently used
//! shards beyond that size go first, so epochs 2.. read from local disk). A cached shard is
//! trusted as long as its file is there (downloads are written whole, then renamed); delete the
//! cache when the source's shards change.

use super::remote::Remote;
use super::tar_index::{index_shard, ShardIndex};
use crate::error::{Error, Result};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// Where a shard is.
#[derive(Clone)]
enum Slot {
    Remote,
    /// A download thread is on it.
    Fetching,
    /// In the cache, indexed and open.
    Local {
        size: u64,
        shard: Arc<LocalShard>,
    },
    /// Cannot be had (after the retries): every read of it fails with this.
    Failed(String),
}

/// A shard in the cache: its index, and the file open, so that its reads need no open or stat
/// and stay valid if another process sharing the cache deletes the file.
struct LocalShard {
    index: ShardIndex,
    file: std::fs::File,
}

struct State {
    slots: Vec<Slot>,
    /// Shards in the order the current epoch first needs them.
    plan: Vec<usize>,
    /// Each shard's place in `plan` (usize::MAX: not needed this epoch).
    plan_pos: Vec<usize>,
    /// Reads each shard has left this epoch.
    remaining: Vec<usize>,
    /// Readers of each shard right now (never deleted under them).
    pins: Vec<usize>,
    last_use: Vec<u64>,
    clock: u64,
    /// The furthest place in `plan` a reader has reached.
    frontier: usize,
    /// Shards readers wait for, fetched first.
    demand: std::collections::VecDeque<usize>,
    cached_bytes: u64,
    stop: bool,
}

/// What the fetcher did, for the data-time report.
#[derive(Default, Debug)]
pub struct FetchStats {
    pub bytes: AtomicU64,
    pub shards: AtomicU64,
    /// Nanoseconds readers spent waiting for a shard to arrive, summed over threads.
    pub wait_ns: AtomicU64,
}

pub struct ShardFetcher {
    remote: Remote,
    names: Vec<String>,
    lengths: Vec<usize>,
    num_classes: usize,
    cache: PathBuf,
    keep_bytes: u64,
    ahead: usize,
    state: Mutex<State>,
    changed: Condvar,
    pub stats: FetchStats,
}

impl std::fmt::Debug for ShardFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShardFetcher({}, {} shards)", self.remote.url(), self.names.len())
    }
}

/// Where and how much the shard cache keeps.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    pub dir: PathBuf,
    /// Bytes of shards kept beyond those the epoch still needs.
    pub keep_bytes: u64,
    /// Shards downloaded at once, and how far ahead of the readers.
    pub prefetch: usize,
}

impl ShardFetcher {
    /// A fetcher of `names` (relative to `remote`), holding `lengths` samples each, labels below
    /// `num_classes`. Starts its download threads.
    pub fn start(
        remote: Remote,
        names: Vec<String>,
        lengths: Vec<usize>,
        num_classes: usize,
        cache: &CacheConfig,
    ) -> Result<Arc<Self>> {
        // One folder per source, so that two sources' shards of the same name never mix.
        let dir = cache.dir.join(format!("{:08x}", crc32fast::hash(remote.url().as_bytes())));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        remove_dead_downloads(&dir);
        let n = names.len();
        let state = State {
            slots: vec![Slot::Remote; n],
            plan: Vec::new(),
            plan_pos: vec![usize::MAX; n],
            remaining: vec![0; n],
            pins: vec![0; n],
            last_use: vec![0; n],
            clock: 0,
            frontier: 0,
            demand: Default::default(),
            cached_bytes: 0,
            stop: false,
        };
        let fetcher = Arc::new(Self {
            remote,
            names,
            lengths,
            num_classes,
            cache: dir,
            keep_bytes: cache.keep_bytes,
            ahead: cache.prefetch.max(1),
            state: Mutex::new(state),
            changed: Condvar::new(),
            stats: FetchStats::default(),
        });
        for i in 0..fetcher.ahead {
            let f = Arc::downgrade(&fetcher);
            std::thread::Builder::new()
                .name(format!("shard-fetch-{i}"))
                .spawn(move || download_loop(f))
                .map_err(|e| Error::Usage(format!("cannot start a shard download thread: {e}")))?;
        }
        Ok(fetcher)
    }

    pub fn url(&self) -> &str {
        self.remote.url()
    }

    /// The URL of shard `shard`.
    pub fn shard_url(&self, shard: usize) -> String {
        self.remote.url_of(&self.names[shard])
    }

    fn local_path(&self, shard: usize) -> PathBuf {
        self.cache.join(self.names[shard].replace('/', "__"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The epoch's reads from here on, as shards in reading order (one entry per sample):
    /// prefetching follows it, and a shard is let go once its reads are done.
    pub fn plan(&self, reads: impl Iterator<Item = usize>) {
        let mut st = self.lock();
        let n = st.slots.len();
        st.plan.clear();
        st.plan_pos = vec![usize::MAX; n];
        st.remaining = vec![0; n];
        for shard in reads {
            if st.plan_pos[shard] == usize::MAX {
                st.plan_pos[shard] = st.plan.len();
                st.plan.push(shard);
            }
            st.remaining[shard] += 1;
        }
        st.frontier = 0;
        self.evict(&mut st);
        self.changed.notify_all();
    }

    /// Sample `k` of shard `shard`: its image bytes, label and name (`URL:member`).
    pub fn read(&self, shard: usize, k: usize) -> Result<(Vec<u8>, u32, String)> {
        let unreadable = |e: Error| {
            Error::file(format!("{}#{k}", self.shard_url(shard)), format!("its shard cannot be had: {e}"))
        };
        let local = self.acquire(shard).map_err(unreadable)?;
        let result = self.read_member(shard, k, &local);
        let mut st = self.lock();
        st.pins[shard] -= 1;
        st.remaining[shard] = st.remaining[shard].saturating_sub(1);
        if st.remaining[shard] == 0 {
            self.evict(&mut st);
        }
        result
    }

    fn read_member(&self, shard: usize, k: usize, local: &LocalShard) -> Result<(Vec<u8>, u32, String)> {
        let (url, index) = (self.shard_url(shard), &local.index);
        let Some(s) = index.samples.get(k) else {
            let cut = index.broken.as_deref().map_or(String::new(), |why| format!(" ({why})"));
            return Err(Error::file(
                format!("{url}#{k}"),
                format!(
                    "missing: the shard holds {} samples where _info.json says {}{cut}",
                    index.samples.len(),
                    self.lengths[shard]
                ),
            ));
        };
        let s = s.clone().in_range(self.num_classes);
        let name = format!("{url}:{}", s.image.name);
        if let Some(why) = &s.image.bad {
            return Err(Error::file(&name, why.to_string()));
        }
        let mut buf = vec![0; s.image.len as usize];
        local.file.read_exact_at(&mut buf, s.image.offset).map_err(|e| {
            Error::file(
                &name,
                format!("cannot read the cached shard {}: {e}", self.local_path(shard).display()),
            )
        })?;
        Ok((buf, s.label, name))
    }

    /// Waits until `shard` is local (asking for it first if it is not on its way), pins it and
    /// returns its index.
    fn acquire(&self, shard: usize) -> Result<Arc<LocalShard>> {
        let mut st = self.lock();
        let started = Instant::now();
        // Pinned while waiting too, so that it is not deleted between its arrival and this read.
        st.pins[shard] += 1;
        loop {
            match &st.slots[shard] {
                Slot::Local { shard: local, .. } => {
                    let local = local.clone();
                    st.clock += 1;
                    st.last_use[shard] = st.clock;
                    if st.plan_pos[shard] != usize::MAX {
                        st.frontier = st.frontier.max(st.plan_pos[shard]);
                    }
                    let waited = started.elapsed().as_nanos() as u64;
                    self.stats.wait_ns.fetch_add(waited, Relaxed);
                    self.changed.notify_all();
                    return Ok(local);
                }
                Slot::Failed(why) => {
                    let why = why.clone();
                    st.pins[shard] -= 1;
                    return Err(Error::Usage(why));
                }
                Slot::Remote => {
                    if !st.demand.contains(&shard) {
                        st.demand.push_back(shard);
                        self.changed.notify_all();
                    }
                }
                Slot::Fetching => {}
            }
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The next shard for a download thread: one a reader waits for, else the plan's next within
    /// `ahead` shards of the furthest read.
    fn next_job(&self, st: &mut State) -> Option<usize> {
        while let Some(s) = st.demand.pop_front() {
            if matches!(st.slots[s], Slot::Remote) {
                return Some(s);
            }
        }
        let until = (st.frontier + self.ahead + 1).min(st.plan.len());
        (st.frontier..until)
            .map(|p| st.plan[p])
            .find(|&s| st.remaining[s] > 0 && matches!(st.slots[s], Slot::Remote))
    }

    /// Makes `shard` local: its cached file if one is there and reads as a whole shard, else a
    /// download (one that does not read as a whole shard is fetched once more; then what it holds
    /// is used, the samples it lacks being unreadable).
    fn fetch(&self, shard: usize) -> std::result::Result<(u64, LocalShard), String> {
        let path = self.local_path(shard);
        let open = |index: ShardIndex| -> std::result::Result<LocalShard, String> {
            let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(LocalShard { index, file })
        };
        if let (Ok(index), Ok(m)) = (index_shard(&path), std::fs::metadata(&path)) {
            if index.broken.is_none() {
                return Ok((m.len(), open(index)?));
            }
        }
        let _ = std::fs::remove_file(&path);
        for attempt in 1..=2 {
            let size = self.remote.download(&self.names[shard], &path).map_err(|e| e.to_string())?;
            self.stats.bytes.fetch_add(size, Relaxed);
            self.stats.shards.fetch_add(1, Relaxed);
            let index = index_shard(&path).map_err(|e| e.to_string())?;
            match &index.broken {
                Some(why) if attempt == 1 => {
                    eprintln!("warning: {}: {why}; downloading it again", self.shard_url(shard));
                    let _ = std::fs::remove_file(&path);
                }
                _ => return Ok((size, open(index)?)),
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Deletes shards no read of this epoch needs, least recently used first, while the cache
    /// holds more than it may keep.
    fn evict(&self, st: &mut State) {
        while st.cached_bytes > self.keep_bytes {
            let victim = (0..st.slots.len())
                .filter(|&s| {
                    st.remaining[s] == 0 && st.pins[s] == 0 && matches!(st.slots[s], Slot::Local { .. })
                })
                .min_by_key(|&s| st.last_use[s]);
            let Some(s) = victim else { return };
            if let Slot::Local { size, .. } = st.slots[s] {
                st.cached_bytes -= size;
            }
            st.slots[s] = Slot::Remote;
            let _ = std::fs::remove_file(self.local_path(s));
        }
    }
}

impl Drop for ShardFetcher {
    fn drop(&mut self) {
        // The download threads hold only weak references: they end at their next look.
        self.lock().stop = true;
        self.changed.notify_all();
    }
}

/// Deletes the partial downloads (`NAME.part-PID-N`) of processes that are gone: killed runs'.
fn remove_dead_downloads(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((_, tail)) = name.rsplit_once(".part-") else { continue };
        let pid = tail.split('-').next().unwrap_or("");
        if !pid.is_empty() && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A download thread: takes jobs until the fetcher is dropped.
fn download_loop(fetcher: std::sync::Weak<ShardFetcher>) {
    loop {
        let Some(f) = fetcher.upgrade() else { return };
        let job = {
            let mut st = f.lock();
            if st.stop {
                return;
            }
            match f.next_job(&mut st) {
                Some(s) => {
                    st.slots[s] = Slot::Fetching;
                    s
                }
                None => {
                    // Let go of the fetcher while idle (at most this long), so that it can drop.
                    let wait = std::time::Duration::from_millis(100);
                    drop(f.changed.wait_timeout(st, wait).map_or_else(|e| e.into_inner().0, |r| r.0));
                    continue;
                }
            }
        };
        let result = f.fetch(job);
        let mut st = f.lock();
        st.slots[job] = match result {
            Ok((size, local)) => {
                st.cached_bytes += size;
                Slot::Local { size, shard: Arc::new(local) }
            }
            Err(why) => Slot::Failed(why),
        };
        f.evict(&mut st);
        drop(st);
        f.changed.notify_all();
    }
}
