//! Remote shard sources: `s3://bucket/prefix` (any S3-compatible store; credentials, region and
//! endpoint from the standard AWS environment variables, e.g. `AWS_ENDPOINT_URL` for MinIO or
//! Ceph) and `http(s)://host/prefix` (a plain web server: GET only), through the `object_store`
//! crate.
//!
//! A download streams the object to a temporary file beside its destination and renames it when
//! complete, so a file that is there is whole. Failed requests (timeouts, connection resets, 5xx
//! answers), including a body cut off midway, are retried with exponential backoff; after the
//! last attempt the error names the URL.

use crate::error::{Error, Result};
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Whether `data` names a remote source rather than a local path.
pub fn is_url(data: &Path) -> bool {
    data.to_str().is_some_and(|s| ["s3://", "http://", "https://"].iter().any(|p| s.starts_with(p)))
}

/// Attempts at one object before the download fails.
pub const ATTEMPTS: u32 = 6;

/// A remote folder of objects.
pub struct Remote {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    runtime: tokio::runtime::Runtime,
    /// The first retry's wait; doubled per attempt.
    backoff: Duration,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({})", self.url)
    }
}

impl Remote {
    /// The folder at `url` (`s3://bucket/prefix` or `http(s)://host/prefix`).
    pub fn open(url: &str) -> Result<Self> {
        let bad = |why: String| Error::file(url, why);
        let url = url.trim_end_matches('/').to_string();
        // Requests fail fast and are retried here; a stalled server cannot hang the run.
        let options = ClientOptions::new()
            .with_allow_http(true)
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout(Duration::from_secs(120));
        let retry = RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(60),
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
        };
        let (store, prefix): (Arc<dyn ObjectStore>, String) = if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket: write s3://BUCKET/PREFIX".into()));
            }
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_client_options(options)
                .with_retry(retry);
            if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
                b = b.with_region("us-east-1");
            }
            if let Ok(region) = std::env::var("AWS_REGION") {
                b = b.with_region(region);
            }
            let store = b.build().map_err(|e| bad(format!("cannot set up S3 access: {e}")))?;
            (Arc::new(store), prefix.to_string())
        } else if url.starts_with("http://") || url.starts_with("https://") {
            let store = object_store::http::HttpBuilder::new()
                .with_url(url.clone())
                .with_client_options(options)
                .with_retry(retry)
                .build()
                .map_err(|e| bad(format!("cannot set up HTTP access: {e}")))?;
            (Arc::new(store), String::new())
        } else {
            return Err(bad("not a remote source (s3://, http:// or https://)".into()));
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fetch")
            .enable_all()
            .build()
            .map_err(|e| bad(format!("cannot start the download threads: {e}")))?;
        let backoff = Duration::from_millis(
            std::env::var("RESNET_TRAIN_FETCH_BACKOFF_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000),
        );
        Ok(Self { url, store, prefix: ObjectPath::from(prefix), runtime, backoff })
    }

    /// The URL of `name` in this folder (for messages and cache keys).
    pub fn url_of(&self, name: &str) -> String {
        format!("{}/{name}", self.url)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn path_of(&self, name: &str) -> ObjectPath {
        name.split('/').fold(self.prefix.clone(), |p, part| p.join(part))
    }

    /// The whole of a small object (e.g. `_info.json`); None when there is no such object.
    pub fn get_small(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path_of(name);
        self.with_retries(name, || async {
            match self.store.get(&path).await {
                Ok(r) => r.bytes().await.map(|b| Some(b.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    /// Downloads `name` to `dest` (via `dest.part-PID-N`, a name of its own, so that processes
    /// sharing a cache never write one file); returns its size in bytes.
    pub fn download(&self, name: &str, dest: &Path) -> Result<u64> {
        static DOWNLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = self.path_of(name);
        let n = DOWNLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let part = PathBuf::from(format!("{}.part-{}-{n}", dest.display(), std::process::id()));
        let size = self.with_retries(name, || async {
            let r = self.store.get(&path).await?;
            let mut file = std::fs::File::create(&part)
                .map_err(|e| object_store::Error::Generic { store: "local", source: Box::new(e) })?;
            let mut body = r.into_stream();
            let mut n = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                n += chunk.len() as u64;
                file.write_all(&chunk)
                    .map_err(|e| object_store::Error::Generic { store: "local", source: Box::new(e) })?;
            }
            Ok(n)
        });
        let size = size.inspect_err(|_| {
            let _ = std::fs::remove_file(&part);
        })?;
        std::fs::rename(&part, dest).map_err(|e| Error::io(dest, e))?;
        Ok(size)
    }

    /// Runs `op` up to `ATTEMPTS` times, waiting `backoff`, then twice that, ... between tries.
    fn with_retries<T, F, Fut>(&self, name: &str, op: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, object_store::Error>>,
    {
        let mut wait = self.backoff;
        for attempt in 1..=ATTEMPTS {
            match self.runtime.block_on(op()) {
                Ok(v) => return Ok(v),
                Err(e @ object_store::Error::NotFound { .. }) => {
                    return Err(Error::file(self.url_of(name), format!("not found: {e}")))
                }
                Err(e) if attempt == ATTEMPTS => {
                    return Err(Error::file(
                        self.url_of(name),
                        format!("download failed {ATTEMPTS} times, the last: {e} (resume the run once the source answers)"),
                    ))
                }
                Err(e) => {
                    eprintln!("warning: {} (attempt {attempt} of {ATTEMPTS}): {e}; retrying", self.url_of(name));
                    std::thread::sleep(wait);
                    wait *= 2;
                }
            }
        }
        unreachable!("the last attempt returns")
    }
}
