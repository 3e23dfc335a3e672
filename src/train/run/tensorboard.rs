//! TensorBoard event files (`tb/events.out.tfevents.*`, read by `tensorboard --logdir runs`):
//! TFRecord framing (length, masked CRC32C of the length, an `Event` proto, masked CRC32C of the
//! data) as TensorFlow writes it.
//!
//! Written synchronously, one record per call in one `write`, so a record on disk is as durable as
//! a line of metrics.jsonl and a SIGKILL can tear at most the last one (readers drop a torn tail).
//! On resume, `truncate` drops every value past the checkpoint from the earlier attempts' files, so
//! TensorBoard shows each step once, as metrics.jsonl does.

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use protobuf::{Message, RepeatedField};
use std::io::Write;
use std::path::{Path, PathBuf};
use tensorboard_proto::event::Event;
use tensorboard_proto::summary::{Summary, Summary_Value};

/// The tag of the hparams plugin's session start (tensorboard/plugins/hparams/metadata.py).
pub const HPARAMS_TAG: &str = "_hparams_/session_start_info";

/// A hyper-parameter's value, as the HParams dashboard shows it.
#[derive(Clone, Debug, PartialEq)]
pub enum HParam {
    Number(f64),
    Text(String),
    Bool(bool),
}

/// The hyper-parameters of an event file (its first session start), by name.
pub fn read_hparams(path: &Path) -> Result<std::collections::BTreeMap<String, HParam>> {
    use tensorboard_proto::plugin_hparams::HParamsPluginData;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut out = std::collections::BTreeMap::new();
    let events = events(&bytes).0;
    let first = events.iter().flat_map(|e| e.get_summary().get_value()).find(|v| v.get_tag() == HPARAMS_TAG);
    if let Some(v) = first {
        let data = HParamsPluginData::parse_from_bytes(v.get_metadata().get_plugin_data().get_content())
            .map_err(|e| Error::file(path, format!("hparams: {e}")))?;
        for (name, value) in data.get_session_start_info().get_hparams() {
            let h = if value.has_number_value() {
                HParam::Number(value.get_number_value())
            } else if value.has_bool_value() {
                HParam::Bool(value.get_bool_value())
            } else {
                HParam::Text(value.get_string_value().to_string())
            };
            out.insert(name.clone(), h);
        }
    }
    Ok(out)
}

/// Appends events to a new event file of a folder.
pub struct EventWriter {
    path: PathBuf,
    file: std::fs::File,
}

fn wall_time() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<seconds>.<host>.<pid>.<n>` (TensorFlow's naming: TensorBoard
    /// reads the files of a folder in name order) starting with the `file_version` event.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host: String =
            host.trim().chars().filter(|c| c.is_ascii_alphanumeric() || "-_".contains(*c)).collect();
        let secs = wall_time() as u64;
        let mut n = 0;
        let (path, file) = loop {
            let path = dir.join(format!("events.out.tfevents.{secs:010}.{host}.{}.{n}", std::process::id()));
            match std::fs::OpenOptions::new().append(true).create_new(true).open(&path) {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                Err(e) => return Err(Error::io(&path, e)),
            }
        };
        let mut writer = Self { path, file };
        let mut header = Event::new();
        header.set_wall_time(wall_time());
        header.set_file_version("brain.Event:2".into());
        writer.write(&header)?;
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One event at `step` holding the finite values (TensorBoard cannot plot NaN or inf, and a
    /// diverged run's records say so in metrics.jsonl).
    pub fn scalars(&mut self, step: usize, values: &[(&str, f64)]) -> Result<()> {
        let values: Vec<Summary_Value> = values
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(tag, v)| {
                let mut value = Summary_Value::new();
                value.set_tag(tag.to_string());
                value.set_simple_value(*v as f32);
                value
            })
            .collect();
        if values.is_empty() {
            return Ok(());
        }
        let mut summary = Summary::new();
        summary.set_value(RepeatedField::from_vec(values));
        let mut event = Event::new();
        event.set_wall_time(wall_time());
        event.set_step(step as i64);
        event.set_summary(summary);
        self.write(&event)
    }

    /// The run's hyper-parameters for TensorBoard's HParams dashboard: one session start
    /// (`_hparams_/session_start_info`, the hparams plugin's data) with every value; the metrics
    /// are the run's scalars.
    pub fn hparams(&mut self, values: &[(String, HParam)]) -> Result<()> {
        use protobuf::well_known_types::Value;
        use tensorboard_proto::plugin_hparams::{HParamsPluginData, SessionStartInfo};
        use tensorboard_proto::summary::{SummaryMetadata, SummaryMetadata_PluginData};
        let mut start = SessionStartInfo::new();
        for (name, v) in values {
            let mut value = Value::new();
            match v {
                HParam::Number(x) => value.set_number_value(*x),
                HParam::Text(t) => value.set_string_value(t.clone()),
                HParam::Bool(b) => value.set_bool_value(*b),
            }
            start.mut_hparams().insert(name.clone(), value);
        }
        start.set_start_time_secs(wall_time());
        let mut data = HParamsPluginData::new();
        data.set_session_start_info(start);
        let content = data.write_to_bytes().map_err(|e| Error::file(&self.path, format!("hparams: {e}")))?;
        let mut plugin = SummaryMetadata_PluginData::new();
        plugin.set_plugin_name("hparams".into());
        plugin.set_content(content);
        let mut metadata = SummaryMetadata::new();
        metadata.set_plugin_data(plugin);
        let mut value = Summary_Value::new();
        value.set_tag(HPARAMS_TAG.into());
        value.set_metadata(metadata);
        let mut summary = Summary::new();
        summary.set_value(RepeatedField::from_vec(vec![value]));
        let mut event = Event::new();
        event.set_wall_time(wall_time());
        event.set_summary(summary);
        self.write(&event)
    }

    fn write(&mut self, event: &Event) -> Result<()> {
        let data = event.write_to_bytes().map_err(|e| Error::file(&self.path, format!("event: {e}")))?;
        self.file.write_all(&record(&data)).map_err(|e| Error::io(&self.path, e))
    }
}

/// One TFRecord: length, its masked CRC32C, the data, the data's masked CRC32C.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// The events of a file's bytes, in order, and why reading stopped early (a torn last record or a
/// damaged one), if it did.
fn events(bytes: &[u8]) -> (Vec<Event>, Option<String>) {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let Some(head) = bytes.get(pos..pos + 12) else {
            return (out, Some(format!("torn record at byte {pos}")));
        };
        let len_bytes: [u8; 8] = head[..8].try_into().expect("8 bytes");
        if masked_crc32c(&len_bytes).to_le_bytes() != head[8..12] {
            return (out, Some(format!("bad length checksum at byte {pos}")));
        }
        let len = u64::from_le_bytes(len_bytes);
        let end = usize::try_from(len).ok().and_then(|l| (pos + 12).checked_add(l));
        let Some((data, crc)) =
            end.and_then(|end| Some((bytes.get(pos + 12..end)?, bytes.get(end..end.checked_add(4)?)?)))
        else {
            return (out, Some(format!("torn record at byte {pos}")));
        };
        if masked_crc32c(data).to_le_bytes() != crc {
            return (out, Some(format!("bad data checksum at byte {pos}")));
        }
        match Event::parse_from_bytes(data) {
            Ok(event) => out.push(event),
            Err(e) => return (out, Some(format!("bad event at byte {pos}: {e}"))),
        }
        pos += 16 + data.len();
    }
    (out, None)
}

/// The scalars of an event file, `(tag, step, value)`, checking every record's checksums: what
/// TensorBoard will read. A damaged or torn record is an error naming the file.
pub fn read_scalars(path: &Path) -> Result<Vec<(String, i64, f32)>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (events, stop) = events(&bytes);
    if let Some(why) = stop {
        return Err(Error::file(path, why));
    }
    Ok(events
        .iter()
        .flat_map(|e| {
            e.get_summary()
                .get_value()
                .iter()
                .map(|v| (v.get_tag().to_string(), e.get_step(), v.get_simple_value()))
        })
        .collect())
}

/// Rewrites the event files of `dir` keeping only the values for which `keep(tag, step)` holds (and
/// the events without values: file headers). A torn or damaged tail (a process killed mid-write) is
/// dropped with a warning naming the file; a file left without values is removed.
pub fn truncate(dir: &Path, keep: impl Fn(&str, i64) -> bool) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("events.out.tfevents.")) {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let (events, stop) = events(&bytes);
        if let Some(why) = &stop {
            eprintln!("warning: {}: {why}; the events from there on are dropped", path.display());
        }
        let (mut out, mut values_kept, mut changed) = (Vec::new(), 0, stop.is_some());
        for mut event in events {
            if event.has_summary() {
                let step = event.get_step();
                let values = event.mut_summary().mut_value();
                let before = values.len();
                values.retain(|v| keep(v.get_tag(), step));
                changed |= values.len() != before;
                values_kept += values.len();
                if values.is_empty() {
                    continue;
                }
            }
            let data = event.write_to_bytes().map_err(|e| Error::file(&path, format!("event: {e}")))?;
            out.extend_from_slice(&record(&data));
        }
        if values_kept == 0 {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        } else if changed {
            write_atomic(&path, &out)?;
        }
    }
    Ok(())
}

fn masked_crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    let crc = !crc;
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc32c_matches_tensorflow() {
        // CRC-32C check value (RFC 3720, B.4): 32 bytes of zeros -> 0x8A9136AA, then TensorFlow's mask.
        let crc = 0x8A91_36AAu32;
        assert_eq!(masked_crc32c(&[0u8; 32]), crc.rotate_right(15).wrapping_add(0xa282_ead8));
    }

    #[test]
    fn values_past_the_checkpoint_and_a_torn_tail_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        for step in 0..6 {
            w.scalars(step, &[("train/loss", step as f64), ("train/lr", f64::NAN)]).unwrap();
        }
        w.scalars(1, &[("epoch/eval_top1", 50.0)]).unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        // A process killed mid-write: half a record at the end.
        let mut bytes = std::fs::read(&path).unwrap();
        let whole = bytes.len();
        bytes.extend_from_slice(&record(b"\x08\x07")[..9]);
        std::fs::write(&path, &bytes).unwrap();
        assert!(read_scalars(&path).unwrap_err().to_string().contains("torn record"));

        truncate(dir.path(), |tag, step| if tag.starts_with("epoch/") { step < 2 } else { step < 4 })
            .unwrap();
        let got = read_scalars(&path).unwrap();
        let want: Vec<(String, i64, f32)> = (0..4)
            .map(|s| ("train/loss".to_string(), s, s as f32))
            .chain([("epoch/eval_top1".to_string(), 1, 50.0)])
            .collect();
        assert_eq!(got, want, "NaN values are never written");
        assert!(std::fs::metadata(&path).unwrap().len() < whole as u64);

        // Nothing left to keep: the file goes.
        truncate(dir.path(), |_, _| false).unwrap();
        assert!(!path.exists());
    }
}
