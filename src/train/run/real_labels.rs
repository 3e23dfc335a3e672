//! ImageNet-ReaL accuracy (Beyer et al. 2020, "Are we done with ImageNet?"): the validation images
//! relabelled with every class that fits them (`real.json`, a list of 50,000 label lists in the
//! order of ILSVRC2012_val_00000001 ... 50000). A prediction is right at k when any of the top k
//! is one of the image's labels; images with no label are left out. The semantics of timm's
//! RealLabelsImagenet (validate.py `--real-labels`).

use crate::error::{Error, Result};
use std::path::Path;

pub struct RealLabels {
    labels: Vec<Vec<i64>>,
    /// Images scored, and right at top-1 and top-5.
    pub images: usize,
    pub top1: usize,
    pub top5: usize,
}

impl RealLabels {
    /// Reads `real.json`; every label must be a class index below `num_classes`.
    pub fn read(path: &Path, num_classes: i64) -> Result<RealLabels> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let labels: Vec<Vec<i64>> = serde_json::from_str(&text).map_err(|e| {
            Error::file(path, format!("not ImageNet-ReaL's real.json (a JSON list of label lists): {e}"))
        })?;
        if let Some(bad) = labels.iter().flatten().find(|&&l| !(0..num_classes).contains(&l)) {
            return Err(Error::file(
                path,
                format!("label {bad} is not a class of this {num_classes}-class model"),
            ));
        }
        Ok(RealLabels { labels, images: 0, top1: 0, top5: 0 })
    }

    /// The position of a validation file in real.json: ILSVRC2012_val_00000001.JPEG is the first.
    pub fn position(&self, file: &Path) -> Result<usize> {
        let name = file.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        let number = name
            .strip_prefix("ILSVRC2012_val_")
            .and_then(|rest| rest.get(..8))
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<usize>().ok());
        match number {
            Some(n) if (1..=self.labels.len()).contains(&n) => Ok(n - 1),
            Some(n) => Err(Error::file(file, format!("image {n} has no entry in real.json ({} entries)", self.labels.len()))),
            None => Err(Error::file(
                file,
                "is not named as an ImageNet validation image (ILSVRC2012_val_NNNNNNNN.JPEG): ReaL labels need the original names",
            )),
        }
    }

    /// Scores one image's predictions (class indices, best first) against its ReaL labels.
    pub fn score(&mut self, position: usize, predicted: &[i64]) {
        let real = &self.labels[position];
        if real.is_empty() {
            return;
        }
        let right = |k: usize| predicted.iter().take(k).any(|p| real.contains(p));
        self.images += 1;
        self.top1 += right(1) as usize;
        self.top5 += right(5) as usize;
    }

    /// ReaL top-1 and top-5 accuracy, percent.
    pub fn accuracy(&self) -> (f64, f64) {
        let n = self.images.max(1) as f64;
        (100.0 * self.top1 as f64 / n, 100.0 * self.top5 as f64 / n)
    }
}
