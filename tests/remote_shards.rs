//! Shards streamed from real servers on loopback: an S3 server (moto's `moto_server`, from PyPI)
//! and a plain HTTP server (Python's http.server, `tests/servers/http_shards.py`), one of which
//! fails requests (500 answers, bodies cut off midway). Training from either gives the run that
//! the same shards give from a local folder, and a run killed mid-epoch resumes exactly.

mod common;

use resnet_train::data::synthetic;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

/// A server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16) {
    common::wait_until(30, "the server to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// Shards of a small synthetic dataset (train and validation), as `imagenet-prep shards` writes.
fn shards(dir: &Path) -> PathBuf {
    let (img, wds) = (dir.join("img"), dir.join("wds"));
    synthetic::write_dataset(&img, 4, 2, 32, 7).unwrap();
    for (split, name) in [("train", "train"), ("val", "validation")] {
        let o = Command::new(env!("CARGO_BIN_EXE_imagenet-prep"))
            .args(["shards", "--src", img.join(split).to_str().unwrap(), "--out", wds.to_str().unwrap()])
            .args(["--split", name, "--shard-size", "10"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", common::output_text(&o));
    }
    wds
}

/// A short run (2 epochs, a checkpoint every 3 steps) of `data`, with extra flags and environment.
fn train(data: &str, runs: &Path, name: &str, extra: &[&str], env: &[(&str, String)]) -> Output {
    let mut c = Command::new(common::bin());
    c.args(["--data", data, "--output", runs.to_str().unwrap(), "--name", name])
        .args(["--arch", "resnet18", "--train-size", "32", "--eval-size", "32", "--batch-size", "8"])
        .args(["--epochs", "2", "--device", "cpu", "--workers", "2", "--torch-threads", "1"])
        .args(["--checkpoint-every", "3", "--shuffle-buffer", "16", "--log-every", "1000"])
        .args(extra)
        .env("RESNET_TRAIN_FETCH_BACKOFF_MS", "20");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// The S3 server's environment for our client and boto3.
fn s3_env(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

/// Starts moto's S3 server and uploads `wds` to s3://shards/imagenet/; None (with a SKIP line)
/// without moto.
fn s3_with(wds: &Path, test: &str) -> Option<(Server, u16)> {
    let py = common::python_with("moto", test)?;
    let moto_server = py.parent().unwrap().join("moto_server");
    let port = free_port();
    let server = Server(
        Command::new(&moto_server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(port);
    let upload = r#"
import os, sys, boto3
s3 = boto3.client("s3")
s3.create_bucket(Bucket="shards")
for name in sorted(os.listdir(sys.argv[1])):
    s3.upload_file(os.path.join(sys.argv[1], name), "shards", "imagenet/" + name)
"#;
    let o = Command::new(&py).arg("-c").arg(upload).arg(wds).envs(s3_env(port)).output().unwrap();
    assert!(o.status.success(), "{}", common::output_text(&o));
    Some((server, port))
}

fn http_server(wds: &Path, faults: bool) -> (Server, u16) {
    let port = free_port();
    let script = common::repo().join("tests/servers/http_shards.py");
    let mut c = Command::new("python3");
    c.arg(script).arg(wds).arg(port.to_string()).stdout(std::process::Stdio::null());
    if faults {
        c.arg("--faults");
    }
    let server = Server(c.spawn().unwrap());
    wait_for_port(port);
    (server, port)
}

/// From S3, from HTTP (through failing requests) and from the local folder: the same run, metric
/// for metric; the cache of the last keeps its shards for the second epoch.
#[test]
fn training_from_s3_and_http_is_training_from_the_local_shards() {
    let test = "training_from_s3_and_http_is_training_from_the_local_shards";
    let dir = common::tmpdir();
    let wds = shards(dir.path());
    let runs = dir.path().join("runs");
    let Some((_s3, port)) = s3_with(&wds, test) else { return };
    let local = train(wds.to_str().unwrap(), &runs, "local", &[], &[]);
    assert!(local.status.success(), "{}", common::output_text(&local));
    let want = common::history_without_wall_clock(&runs.join("local"));
    assert_eq!(want.1.len(), 3, "two epochs' rows and the header");

    let cache = dir.path().join("cache-s3");
    let s3 = train(
        "s3://shards/imagenet",
        &runs,
        "s3",
        &["--shard-cache", cache.to_str().unwrap()],
        &s3_env(port),
    );
    assert!(s3.status.success(), "{}", common::output_text(&s3));
    assert_eq!(
        common::history_without_wall_clock(&runs.join("s3")),
        want,
        "s3:// trains otherwise than the local folder"
    );
    // Each of the 4 train shards downloaded once per epoch (deleted once read), none twice.
    let text = common::output_text(&s3);
    assert!(text.contains("4 shards (") && text.contains("8 shards ("), "{text}");
    let left: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().map(|e| e.unwrap().path()))
        .collect();
    assert!(left.is_empty(), "with shard_cache_gb 0 each shard is deleted once read: {left:?}");

    let (_http, hport) = http_server(&wds, true);
    let cache = dir.path().join("cache-http");
    let url = format!("http://127.0.0.1:{hport}");
    let extra = ["--shard-cache", cache.to_str().unwrap(), "--shard-cache-gb", "1", "--prefetch-shards", "2"];
    let http = train(&url, &runs, "http", &extra, &[]);
    let text = common::output_text(&http);
    assert!(http.status.success(), "{text}");
    assert_eq!(
        common::history_without_wall_clock(&runs.join("http")),
        want,
        "http:// trains otherwise than the local folder"
    );
    assert!(text.contains("retrying") && text.contains(&url), "the failed requests are reported: {text}");
    assert_eq!(text.matches("4 shards (").count(), 2, "the second epoch read the kept shards: {text}");
    // Kept (1 GB allowed): every shard once in the cache, none downloaded twice.
    let kept = std::fs::read_dir(&cache)
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .count();
    assert_eq!(kept, 6, "4 train + 2 validation shards kept");
}

/// A run from S3 killed mid-epoch and during evaluation, then resumed, gives the uninterrupted
/// run's metrics.jsonl and summary.csv; a source that is gone stops the run naming the URL.
#[test]
fn a_run_from_s3_killed_mid_epoch_resumes_exactly() {
    let test = "a_run_from_s3_killed_mid_epoch_resumes_exactly";
    let dir = common::tmpdir();
    let wds = shards(dir.path());
    let runs = dir.path().join("runs");
    let Some((s3, port)) = s3_with(&wds, test) else { return };
    let cache = dir.path().join("cache");
    let flags = ["--shard-cache", cache.to_str().unwrap()];
    let full = train("s3://shards/imagenet", &runs, "full", &flags, &s3_env(port));
    assert!(full.status.success(), "{}", common::output_text(&full));
    let want = common::history_without_wall_clock(&runs.join("full"));
    for (i, fault) in ["step@5", "eval@1"].iter().enumerate() {
        let name = format!("kill{i}");
        let mut env = s3_env(port);
        env.push(("RESNET_TRAIN_FAULT", fault.to_string()));
        let killed = train("s3://shards/imagenet", &runs, &name, &flags, &env);
        assert_eq!(killed.status.code(), None, "{fault}: not killed: {}", common::output_text(&killed));
        let o = Command::new(common::bin())
            .arg("--resume")
            .arg(runs.join(&name))
            .envs(s3_env(port))
            .output()
            .unwrap();
        assert!(o.status.success(), "{fault}: {}", common::output_text(&o));
        assert_eq!(
            common::history_without_wall_clock(&runs.join(&name)),
            want,
            "{fault} then resume differs"
        );
    }
    // A shard gone from the bucket: its samples are unreadable images, named by URL; past
    // max_bad_fraction (0 here) the run stops.
    let py = common::python_with("moto", test).unwrap();
    let delete = r#"import boto3; boto3.client("s3").delete_object(Bucket="shards", Key="imagenet/wds-train-0001.tar")"#;
    let o = Command::new(&py).arg("-c").arg(delete).envs(s3_env(port)).output().unwrap();
    assert!(o.status.success(), "{}", common::output_text(&o));
    let fresh = dir.path().join("cache-fresh");
    let flags_fresh = ["--shard-cache", fresh.to_str().unwrap(), "--max-bad-fraction", "0"];
    let missing = train("s3://shards/imagenet", &runs, "missing", &flags_fresh, &s3_env(port));
    let text = common::output_text(&missing);
    assert!(!missing.status.success(), "{text}");
    assert!(
        text.contains("s3://shards/imagenet/wds-train-0001.tar#") && text.contains("not found"),
        "{text}"
    );
    // The server gone: the run stops with the URL it could not read, never hangs.
    drop(s3);
    let gone = train("s3://shards/imagenet", &runs, "gone", &flags, &s3_env(port));
    let text = common::output_text(&gone);
    assert!(!gone.status.success(), "{text}");
    assert!(text.contains("s3://shards/imagenet/_info.json"), "{text}");
}

/// Two ranks (`launch`, Gloo) stream their halves of the shards from S3: equal steps on both
/// (40 samples: 20 each, 5 steps of 4 per epoch), evaluation split between them.
#[test]
fn two_ranks_stream_their_halves_from_s3() {
    let test = "two_ranks_stream_their_halves_from_s3";
    let dir = common::tmpdir();
    let wds = shards(dir.path());
    let runs = dir.path().join("runs");
    let Some((_s3, port)) = s3_with(&wds, test) else { return };
    let cache = dir.path().join("cache");
    let o = Command::new(common::bin())
        .args([
            "launch",
            "--nproc-per-node",
            "2",
            "--grace",
            "5",
            "--master-port",
            &free_port().to_string(),
            "--",
        ])
        .args([
            "train",
            "--data",
            "s3://shards/imagenet",
            "--output",
            runs.to_str().unwrap(),
            "--name",
            "ddp",
        ])
        .args(["--arch", "resnet18", "--train-size", "32", "--eval-size", "32", "--batch-size", "4"])
        .args([
            "--epochs",
            "2",
            "--device",
            "cpu",
            "--workers",
            "1",
            "--torch-threads",
            "1",
            "--log-every",
            "1000",
        ])
        .args(["--shard-cache", cache.to_str().unwrap(), "--dist-timeout", "60"])
        .envs(s3_env(port))
        .env("RESNET_TRAIN_FETCH_BACKOFF_MS", "20")
        .output()
        .unwrap();
    let text = common::output_text(&o);
    assert!(o.status.success(), "{text}");
    assert_eq!(
        common::step_records(&runs.join("ddp")).len(),
        10,
        "2 epochs x 40 images / (2 ranks x 4): {text}"
    );
    assert_eq!(common::summary_without_time(&runs.join("ddp")).len(), 3, "{text}");
}
