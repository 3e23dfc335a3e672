//! The config's rules: every key in range and every rule between keys, checked before any work
//! (no allocation, no thread, no file on a config that could have been refused), by concern.

use super::*;

impl TrainConfig {
    /// Every key in range and every rule between keys, before any work; by concern below.
    pub fn validate(&self) -> Result<()> {
        self.model(1).validate()?;
        self.validate_optimization()?;
        self.validate_data()?;
        self.validate_augmentation()?;
        self.validate_loss()?;
        schedule::validate(self)?;
        self.validate_run()?;
        // Every numeric key within its flag's range (a file's values; flags were parsed by it).
        // Last, so that the rules above keep their own messages.
        range::check_file_values(&Self::command(), &to_table(self)?).map_err(Error::Usage)
    }

    /// The optimizer, its hyper-parameters and the batch it steps on.
    fn validate_optimization(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Usage(m));
        if self.batch_size == 0 || self.accum_steps == 0 {
            return bad("--batch-size and --accum-steps must be at least 1".into());
        }
        for (flag, lr) in [("--lr", self.lr.unwrap_or(1.0)), ("--lr-base", self.lr_base)] {
            if !(lr > 0.0 && lr.is_finite()) {
                return bad(format!("{flag} must be positive, got {lr}"));
            }
        }
        if self.max_device_batch.is_some() && self.global_batch.is_none() {
            return bad("--max-device-batch applies with --global-batch (it raises the accumulation that keeps the global batch)".into());
        }
        if let Some(betas) = &self.opt_betas {
            // Runs saved before opt_betas had a per-optimizer default wrote [0.9, 0.999] into
            // every config.toml: still accepted, so those runs resume.
            if self.opt.default_betas().is_none() && betas[..] != [0.9, 0.999] {
                return bad(format!(
                    "--opt-betas applies to {}, not {}",
                    OptKind::names_where(|i| i.betas.is_some()),
                    self.opt.name()
                ));
            }
            let n = self.opt.num_betas();
            if betas.len() != n || !betas.iter().all(|b| (0.0..1.0).contains(b)) {
                let count = if n == 3 { "three numbers (beta1,beta2,beta3)" } else { "two numbers" };
                return bad(format!(
                    "--opt-betas must be {count} in [0, 1) for {:?}, got {betas:?}",
                    self.opt
                ));
            }
        }
        if self.corrected_weight_decay && !self.opt.decouples_weight_decay() {
            return bad(format!(
                "--corrected-weight-decay applies to decoupled weight decay ({}), not {}",
                OptKind::names_where(|i| i.decoupled),
                self.opt.name()
            ));
        }
        if let Some(e) = self.opt_eps {
            if !self.opt.has_eps() {
                return bad(format!(
                    "--opt-eps applies to {}, not {}",
                    OptKind::names_where(|i| i.eps.is_some()),
                    self.opt.name()
                ));
            }
            if !(e > 0.0 && e.is_finite()) {
                return bad(format!("--opt-eps must be positive, got {e}"));
            }
        }
        if let Some(c) = self.trust_coeff {
            if !self.opt.is_lars() {
                return bad(format!(
                    "--trust-coeff applies to {}, not {}",
                    OptKind::names_where(|i| i.family == crate::train::step::optim::Family::Lars),
                    self.opt.name()
                ));
            }
            if !(c > 0.0 && c.is_finite()) {
                return bad(format!("--trust-coeff must be positive, got {c}"));
            }
        }
        if self.model_ema_style == EmaStyle::Torchvision
            && (self.model_ema_buffers == EmaBuffers::Copy || self.model_ema_warmup)
        {
            return bad(
                "--model-ema-style torchvision averages the BN buffers and has no decay warmup: set \
                 --model-ema-buffers average and leave --model-ema-warmup off"
                    .into(),
            );
        }
        if !(0.0..1.0).contains(&self.model_ema_decay) || self.model_ema_every == 0 {
            return bad(format!(
                "--model-ema-decay must be in [0, 1) and --model-ema-every at least 1, got {} and {}",
                self.model_ema_decay, self.model_ema_every
            ));
        }
        // Numbers that must be finite and not negative (NaN fails every comparison).
        for (flag, v) in [
            ("--weight-decay", self.weight_decay),
            ("--norm-weight-decay", self.norm_weight_decay.unwrap_or(0.0)),
            ("--bias-weight-decay", self.bias_weight_decay.unwrap_or(0.0)),
            ("--warmup-epochs", self.warmup_epochs),
            ("--min-lr", self.min_lr),
            ("--clip-grad", self.clip_grad),
            ("--momentum", self.momentum),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(format!("{flag} must be a finite number >= 0, got {v}"));
            }
        }
        if self.momentum >= 1.0 {
            return bad(format!("--momentum must be below 1, got {}", self.momentum));
        }
        let in_unit = |v: f64| v > 0.0 && v <= 1.0;
        if !in_unit(self.step_gamma) {
            return bad(format!("--step-gamma must be in (0, 1], got {}", self.step_gamma));
        }
        if !(self.act_lr_scale >= 0.0 && self.act_lr_scale.is_finite()) {
            return bad(format!("--act-lr-scale must be a finite number >= 0, got {}", self.act_lr_scale));
        }
        Ok(())
    }

    /// The input pipeline's sizes, normalization and tolerance for bad files.
    fn validate_data(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Usage(m));
        let max = crate::data::transform::MAX_SIZE;
        if !(8..=max).contains(&self.train_size) || !(8..=max).contains(&self.eval_size) {
            return bad(format!("--train-size and --eval-size must be in 8..={max}"));
        }
        if !(0.1..=1.0).contains(&self.crop_pct) {
            return bad(format!("--crop-pct must be in [0.1, 1], got {}", self.crop_pct));
        }
        if !(0.0..=1.0).contains(&self.max_bad_fraction) || self.max_image_pixels == 0 {
            return bad("--max-bad-fraction must be in [0, 1] and --max-image-pixels at least 1".into());
        }
        let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
        if self.mean.len() != 3
            || self.std.len() != 3
            || !finite(&self.mean)
            || self.std.iter().any(|s| !(*s > 0.0 && s.is_finite()))
        {
            return bad(format!(
                "--mean and --std must be three numbers each (R,G,B), the std > 0, got {:?} and {:?}",
                self.mean, self.std
            ));
        }
        Ok(())
    }

    /// Train augmentations and batch mixing, and the rules between them.
    fn validate_augmentation(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Usage(m));
        if self.mixup < 0.0
            || self.cutmix < 0.0
            || !(0.0..=1.0).contains(&self.mixup_prob)
            || !(0.0..=1.0).contains(&self.mixup_switch_prob)
        {
            return bad(format!(
                "--mixup and --cutmix must be >= 0, --mixup-prob and --mixup-switch-prob in [0, 1]; got {}, {}, {}, {}",
                self.mixup, self.cutmix, self.mixup_prob, self.mixup_switch_prob
            ));
        }
        if !(0.0..=1.0).contains(&self.reprob) || self.recount == 0 {
            return bad(format!(
                "--reprob must be in [0, 1] and --recount at least 1, got {} and {}",
                self.reprob, self.recount
            ));
        }
        self.augment(self.train_size)?;
        if self.min_res > 0
            && !(8 <= self.min_res && self.min_res <= self.train_size && self.start_ramp <= self.end_ramp)
        {
            return bad(format!(
                "--min-res must be in 8..=--train-size ({}) and --start-ramp <= --end-ramp, got {}, {}, {}",
                self.train_size, self.min_res, self.start_ramp, self.end_ramp
            ));
        }
        if self.aug_repeats > 16 {
            return bad(format!("--aug-repeats must be in 0..=16, got {}", self.aug_repeats));
        }
        if self.aug_splits == 1 || self.aug_splits > 8 {
            return bad(format!("--aug-splits must be 0 (off) or in 2..=8, got {}", self.aug_splits));
        }
        for (flag, p) in [
            ("--color-jitter-prob", self.color_jitter_prob.unwrap_or(1.0)),
            ("--grayscale-prob", self.grayscale_prob),
            ("--gaussian-blur-prob", self.gaussian_blur_prob),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("{flag} must be a probability in [0, 1], got {p}"));
            }
        }
        if self.color_jitter_prob.is_some() && self.color_jitter.is_none() {
            return bad("--color-jitter-prob needs --color-jitter (the jitter it applies)".into());
        }
        if self.no_aug && self.aug_splits > 1 {
            // timm: "Cannot perform split augmentation with no_aug".
            return bad("--aug-splits needs augmentation; --no-aug turns it all off".into());
        }
        if self.aug_splits > 1 && self.augment(self.train_size)?.is_none() {
            return bad(
                "--aug-splits needs an augmentation for its augmented splits (--aa, --color-jitter, \
                 --grayscale-prob or --gaussian-blur-prob)"
                    .into(),
            );
        }
        if (self.jsd_loss || self.resplit || self.split_bn) && self.aug_splits < 2 {
            return bad("--jsd-loss, --resplit and --split-bn need --aug-splits 2 or more".into());
        }
        if self.split_bn && self.sync_bn {
            return bad(
                "--split-bn with --sync-bn is not supported (timm's conversion would replace the split BNs)"
                    .into(),
            );
        }
        if self.aug_splits > 1 && self.mixup_config().is_some() {
            return bad(
                "--aug-splits with Mixup/CutMix is not supported (the splits would be mixed across)".into()
            );
        }
        if let Some(m) = &self.cutmix_minmax {
            if m.len() != 2 || !(0.0 < m[0] && m[0] <= m[1] && m[1] <= 1.0) {
                return bad(format!("--cutmix-minmax must be two fractions 0 < min <= max <= 1, got {m:?}"));
            }
        }
        if !(0.0 < self.rrc_scale_min && self.rrc_scale_min <= 1.0) {
            return bad(format!("rrc_scale_min must be in (0, 1], got {}", self.rrc_scale_min));
        }
        if !matches!(self.ratio[..], [lo, hi] if 0.0 < lo && lo <= hi && hi < 100.0) {
            return bad(format!(
                "--ratio must be two aspect ratios 0 < lo <= hi < 100, got {:?}",
                self.ratio
            ));
        }
        if !(0.0..=1.0).contains(&self.hflip) {
            return bad(format!("--hflip must be a probability in [0, 1], got {}", self.hflip));
        }
        if !(0.0..=1.0).contains(&self.vflip) {
            return bad(format!("--vflip must be a probability in [0, 1], got {}", self.vflip));
        }
        Ok(())
    }

    /// The loss and the classifier's initialisation.
    fn validate_loss(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Usage(m));
        if !(0.0..1.0).contains(&self.smoothing) {
            return bad(format!("--smoothing must be in [0, 1), got {}", self.smoothing));
        }
        if self.jsd_loss && self.bce_loss {
            return bad("--jsd-loss and --bce-loss are two different losses: choose one".into());
        }
        if !self.bce_loss && (self.bce_sum || self.bce_pos_weight.is_some()) {
            return bad("--bce-sum and --bce-pos-weight apply to --bce-loss".into());
        }
        for (flag, v) in
            [("--head-init-scale", self.head_init_scale), ("--head-init-bias", self.head_init_bias)]
        {
            if v.is_some_and(|v| !v.is_finite()) {
                return bad(format!("{flag} must be a finite number, got {v:?}"));
            }
        }
        if self.bce_pos_weight.is_some_and(|w| !(w > 0.0 && w.is_finite())) {
            return bad(format!("--bce-pos-weight must be a positive number, got {:?}", self.bce_pos_weight));
        }
        if self.bce_target_thresh.is_some_and(|t| !(0.0..1.0).contains(&t)) {
            return bad(format!("--bce-target-thresh must be in [0, 1), got {:?}", self.bce_target_thresh));
        }
        Ok(())
    }

    /// The run's length, name and stability guards.
    fn validate_run(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Usage(m));
        if self.act_clamp.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
            return bad(format!("--act-clamp must be a positive number, got {:?}", self.act_clamp));
        }
        if self.epochs == 0 {
            return bad("--epochs must be at least 1".into());
        }
        for (flag, v) in [("--spike-factor", self.spike_factor), ("--min-loss-scale", self.min_loss_scale)] {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(format!("{flag} must be a finite number >= 0, got {v}"));
            }
        }
        let in_unit = |v: f64| v > 0.0 && v <= 1.0;
        if !in_unit(self.spike_lr_factor) {
            return bad(format!("--spike-lr-factor must be in (0, 1], got {}", self.spike_lr_factor));
        }
        if let Some(name) = &self.name {
            crate::fsutil::check_folder_name("--name", name)?;
        }
        if self.divergence_remedies.contains(&Remedy::None) {
            return bad("--divergence-remedies: `none` is not a remedy".into());
        }
        Ok(())
    }
}
