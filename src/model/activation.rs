//! The swappable activation: ReLU, PolyReLU_k or PolyNorm_k, exactly as
//! `../shared/reference/polycom.py` defines them:
//!
//!   PolyReLU_k(x) = sum_{i=1..k} w[i-1] * relu(x)^i + b
//!   PolyNorm_k(x) = sum_{i=1..k} w[i-1] * rms(x^i) + b,  rms(y) = y * rsqrt(mean(y^2 over axis) + eps)
//!
//! Each activation site owns its own `weight` (k entries) and `bias` (one entry).

use crate::error::{Error, Result};
use crate::ffi::{self, PolyCom};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use tch::{nn, Device, Kind, Tensor};

/// PolyNorm's epsilon inside the root mean square.
pub const POLYNORM_EPS: f64 = 1e-6;
/// Polynomial orders the project supports.
pub const MAX_ORDER: i64 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ActKind {
    Relu,
    Polyrelu,
    Polynorm,
}

impl ActKind {
    /// Forward FLOPs per activation element, counted as the paper's cost argument does: ReLU 1;
    /// PolyReLU_k 2k + 1 (the ReLU, then k multiply-adds); PolyNorm_k 5k - 1 (k - 1 powers, k
    /// squares and k channel sums for the RMS, k multiply-adds; the per-pixel rsqrt not counted).
    pub fn flops_per_element(self, order: i64) -> f64 {
        let k = order as f64;
        match self {
            ActKind::Relu => 1.0,
            ActKind::Polyrelu => 2.0 * k + 1.0,
            ActKind::Polynorm => 5.0 * k - 1.0,
        }
    }
}

/// The axis PolyNorm's mean runs over for NCHW tensors (2-d inputs always use dim 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum NormAxis {
    /// Dim 1: per pixel, the analogue of a transformer's hidden dimension (the paper's choice).
    #[default]
    Channel,
    /// All but the batch dim: per sample.
    Layer,
}

/// How the polynomial coefficients start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ActInit {
    /// The paper's init: w_i = 1/k, b = 0.
    #[default]
    Paper,
    /// w = [1, 0, ..., 0], b = 0: PolyReLU starts as ReLU, PolyNorm as rms-normalised x.
    ReluLike,
}

/// How PolyReLU / PolyNorm are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum ActImpl {
    /// One operator with its own backward (src/ffi/polycom.cpp): one pass over memory forward and
    /// two backward, saving only x (and PolyNorm's k rsqrt values per pixel). Used where it
    /// applies: channel-axis PolyNorm and PolyReLU with `act_fp32` (or fp32/fp64 inputs), on the
    /// CPU, and on CUDA when NVRTC compiles its kernels; elsewhere the eager path runs.
    /// In the ResNet, the BatchNorm before each site (and the residual add before the last site
    /// of a block) joins the same autograd node, which then keeps the BatchNorm input instead of
    /// the activation's input and recomputes the latter in its backward: a PolyCom site holds
    /// what a ReLU site holds (not inside a SyncBatchNorm scope, nor at a block's last site with
    /// drop path in training).
    #[default]
    Fused,
    /// The fused activation alone, after libtorch's BatchNorm (saves the activation's input).
    #[serde(rename = "fused-act")]
    FusedAct,
    /// The reference expression in tensor operations (autograd keeps every power).
    Eager,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActConfig {
    pub kind: ActKind,
    pub order: i64,
    #[serde(default)]
    pub axis: NormAxis,
    #[serde(default)]
    pub init: ActInit,
    /// Stability remedy: clamp the polynomial's input to [-C, C] (PolyReLU/PolyNorm only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clamp: Option<f64>,
    /// Compute the activation in fp32 under autocast (its output stays fp32; the next conv casts
    /// it back). On by default because that is what PyTorch does with the reference code on CUDA:
    /// CUDA autocast runs `pow` and `rsqrt` in fp32, so `polycom.py`'s powers and RMS are fp32
    /// under fp16/bf16 autocast. Off: the polynomial runs in the autocast dtype, as under CPU
    /// autocast or in a hand-written fp16 kernel (then x^(2k) inside PolyNorm's RMS overflows
    /// fp16 for |x| > 65504^(1/2k), e.g. 4 at k = 4).
    #[serde(default = "fp32_default")]
    pub fp32: bool,
    /// With `fp32` under fp16/bf16 autocast: return the activation in the autocast dtype (rounded
    /// once, after the fp32 arithmetic), as autocast's batch norm does, instead of fp32. The
    /// residual stream then stays in low precision as with ReLU, and each site writes and reads
    /// back half the bytes (GPU step time and memory). Off by default: fp32 output is what the
    /// reference gives under CUDA autocast.
    #[serde(default)]
    pub out_lowp: bool,
    /// Fused operator or eager expression (same values; see `ActImpl`).
    #[serde(default)]
    pub implementation: ActImpl,
}

fn fp32_default() -> bool {
    true
}

impl ActConfig {
    pub fn new(kind: ActKind, order: i64) -> Self {
        Self {
            kind,
            order,
            axis: NormAxis::Channel,
            init: ActInit::Paper,
            clamp: None,
            fp32: true,
            out_lowp: false,
            implementation: ActImpl::Fused,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if let Some(c) = self.clamp {
            if !(c > 0.0 && c.is_finite()) {
                return Err(Error::Usage(format!("--act-clamp must be a positive number, got {c}")));
            }
        }
        if !(1..=MAX_ORDER).contains(&self.order) {
            return Err(Error::Usage(format!(
                "--order {} is out of range: the polynomial order must be in 1..={MAX_ORDER}",
                self.order
            )));
        }
        Ok(())
    }

    /// Scalar parameters one activation site owns (k weights + 1 bias; none for ReLU).
    pub fn params_per_site(&self) -> i64 {
        match self.kind {
            ActKind::Relu => 0,
            _ => self.order + 1,
        }
    }

    fn initial_weights(&self) -> Vec<f64> {
        let k = self.order as usize;
        match self.init {
            ActInit::Paper => vec![1.0 / k as f64; k],
            ActInit::ReluLike => (0..k).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect(),
        }
    }
}

/// What reads an activation site's output, which decides the output's type under fp16/bf16
/// autocast with fp32 arithmetic (`act_fp32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consumer {
    /// Anything: a residual add, pooling, a stability monitor. The output is fp32, the reference's
    /// type, unless `out_lowp`.
    Any,
    /// Only a convolution, which under autocast casts its input to the autocast type, z's: the
    /// site returns that type itself. The same values (one round-to-nearest-even of the fp32
    /// result, which the cast would do) and the same gradient (the convolution's, widened to fp32
    /// exactly, which the cast's backward would do), without writing the fp32 tensor, the cast's
    /// pass and copy, and the widening pass backward. A ResNet block's inner sites.
    Convolution,
}

/// One activation site.
#[derive(Debug)]
pub struct Activation {
    cfg: ActConfig,
    /// `(weight [k], bias [1])`; `None` for ReLU.
    params: Option<(Tensor, Tensor)>,
}

impl Activation {
    /// Creates the site's parameters `weight` and `bias` under `vs`.
    pub fn new(vs: nn::Path, cfg: ActConfig) -> Self {
        let params = match cfg.kind {
            ActKind::Relu => None,
            _ => {
                let init = Tensor::from_slice(&cfg.initial_weights()).to_kind(vs.kind());
                let weight = vs.var_copy("weight", &init);
                let bias = vs.zeros("bias", &[1]);
                Some((weight, bias))
            }
        };
        Self { cfg, params }
    }

    pub fn config(&self) -> &ActConfig {
        &self.cfg
    }

    /// Changes the input clamp and the compute precision (not the parameters).
    pub fn set_compute(&mut self, clamp: Option<f64>, fp32: bool) {
        self.cfg.clamp = clamp;
        self.cfg.fp32 = fp32;
    }

    /// `self.forward_to(batch_norm(z) [+ residual], consumer)`, as one fused operator where
    /// `ActImpl::Fused` applies (see there); otherwise libtorch's (or the synchronised) BatchNorm,
    /// the add and `forward_to`, with the same values.
    pub fn forward_bn(
        &self,
        bn: &super::batch_norm::BatchNorm,
        z: &Tensor,
        residual: Option<&Tensor>,
        train: bool,
        consumer: Consumer,
    ) -> Tensor {
        // Split BatchNorm normalises split by split: no fused BN + activation then.
        if !bn.splits_batch(z, train) {
            if let Some(y) = self.bn_fused(bn, z, residual, train, consumer) {
                return y;
            }
        }
        let x = bn.forward(z, train);
        let x = match residual {
            Some(r) => x + r,
            None => x,
        };
        self.forward_to(&x, consumer)
    }

    /// Whether the fp32 result of a bf16/fp16 input is returned in the input's type: always with
    /// `out_lowp`, and where only a convolution reads it (see `Consumer::Convolution`).
    fn out_lowp(&self, consumer: Consumer) -> bool {
        self.cfg.out_lowp || consumer == Consumer::Convolution
    }

    fn bn_fused(
        &self,
        bn: &super::batch_norm::BatchNorm,
        z: &Tensor,
        residual: Option<&Tensor>,
        train: bool,
        consumer: Consumer,
    ) -> Option<Tensor> {
        let (w, b) = self.params.as_ref()?;
        let synced_bn = train && crate::dist::sync_bn_ranks().is_some();
        if self.cfg.implementation != ActImpl::Fused || synced_bn {
            return None;
        }
        // The activation's input type: z's, or the promotion of z's and the residual's.
        let x_kind = match residual {
            None => z.kind(),
            Some(r) if r.size() != z.size() => return None,
            Some(r) if r.kind() == z.kind() => z.kind(),
            Some(r) if r.kind() == Kind::Double || z.kind() == Kind::Double => Kind::Double,
            Some(r) if r.kind() == Kind::Float || z.kind() == Kind::Float => Kind::Float,
            Some(_) => return None,
        };
        if !self.fused_applies(x_kind, z.dim(), z.device()) {
            return None;
        }
        let args = super::sync_bn::args(&bn.main, bn.settings, train);
        let act = ffi::PolyComArgs {
            op: self.op(),
            w,
            b,
            eps: POLYNORM_EPS,
            lowp_out: self.out_lowp(consumer),
            clamp: self.cfg.clamp,
        };
        match ffi::bn_polycom(z, &args, residual, &act) {
            Ok(y) => Some(y),
            Err(e) => {
                // Only an internal fault gets here (shapes and types were checked above).
                warn_once(&format!("fused batch norm + activation failed ({e}); using separate operators"));
                None
            }
        }
    }

    fn op(&self) -> PolyCom {
        if self.cfg.kind == ActKind::Polyrelu {
            PolyCom::PolyRelu
        } else {
            PolyCom::PolyNorm
        }
    }

    /// The activation of `x`, for any consumer (`Consumer::Any`).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_to(x, Consumer::Any)
    }

    /// The activation of `x`, whose output `consumer` reads.
    pub fn forward_to(&self, x: &Tensor, consumer: Consumer) -> Tensor {
        let Some((w, b)) = &self.params else { return x.relu() };
        let fused = matches!(self.cfg.implementation, ActImpl::Fused | ActImpl::FusedAct);
        if fused && self.fused_applies(x.kind(), x.dim(), x.device()) {
            let x = match self.cfg.clamp {
                Some(c) => x.clamp(-c, c),
                None => x.shallow_clone(),
            };
            match ffi::polycom(self.op(), &x, w, b, POLYNORM_EPS, self.out_lowp(consumer)) {
                Ok(y) => return y,
                // Only an internal fault gets here (shapes and types were checked above); the
                // eager path computes the same values.
                Err(e) => warn_once(&format!("fused activation failed ({e}); using the eager path")),
            }
        }
        let mut x = x.shallow_clone();
        let input_kind = x.kind();
        // fp32 arithmetic for fp16/bf16 inputs (autocast); f32 and f64 inputs stay as they are.
        let widened = self.cfg.fp32 && matches!(input_kind, tch::Kind::Half | tch::Kind::BFloat16);
        if widened {
            x = x.to_kind(tch::Kind::Float);
        }
        if let Some(c) = self.cfg.clamp {
            x = x.clamp(-c, c);
        }
        let x = &x;
        let y = match self.cfg.kind {
            ActKind::Relu => x.relu(),
            ActKind::Polyrelu => polyrelu(x, w, b),
            ActKind::Polynorm => polynorm(x, w, b, self.cfg.axis),
        };
        if widened && self.out_lowp(consumer) {
            y.to_kind(input_kind)
        } else {
            y
        }
    }
}

impl Activation {
    /// Whether the fused operator computes exactly what the eager path would here: fp32
    /// arithmetic (act_fp32, or an fp32/fp64 input), channel-axis PolyNorm (or a 2-d input, where
    /// both axes are dim 1) or PolyReLU, and a device that runs the kernels.
    fn fused_applies(&self, kind: Kind, dim: usize, device: Device) -> bool {
        let cfg = &self.cfg;
        if dim < 2 {
            return false;
        }
        let arithmetic_fp32 = cfg.fp32 || matches!(kind, Kind::Float | Kind::Double);
        let axis_ok = cfg.kind == ActKind::Polyrelu || cfg.axis == NormAxis::Channel || dim == 2;
        let kind_ok = matches!(kind, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16);
        arithmetic_fp32 && axis_ok && kind_ok && fused_runs_on(device)
    }
}

/// Whether the fused kernels run on `device`: always on the CPU; on a CUDA device once NVRTC has
/// compiled and loaded them there (checked once per device; a warning says why not).
pub fn fused_runs_on(device: Device) -> bool {
    let Device::Cuda(index) = device else { return true };
    static CUDA: Mutex<Option<HashMap<usize, bool>>> = Mutex::new(None);
    let mut known = CUDA.lock().unwrap_or_else(|p| p.into_inner());
    *known.get_or_insert_with(HashMap::new).entry(index).or_insert_with(|| {
        let why = match ffi::polycom_cuda_unavailable(index) {
            Ok(None) => return true,
            Ok(Some(why)) => why,
            Err(e) => e.to_string(),
        };
        warn_once(&format!("--act-impl fused: not on cuda:{index} ({why}); using the eager activations"));
        false
    })
}

fn warn_once(msg: &str) {
    static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if !seen.iter().any(|m| m == msg) {
        eprintln!("warning: {msg}");
        seen.push(msg.to_string());
    }
}

/// sum_i w[i-1] relu(x)^i + b. Powers by repeated multiplication: one multiply per order.
pub fn polyrelu(x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    let r = x.relu();
    let k = w.size()[0];
    let mut power = r.shallow_clone();
    let mut acc = &r * w.get(0);
    for i in 1..k {
        power = &power * &r;
        // Not `+=`: tch's AddAssign is the in-place add_, which autograd must not see here.
        #[allow(clippy::assign_op_pattern)]
        {
            acc = acc + &power * w.get(i);
        }
    }
    acc + b
}

/// sum_i w[i-1] rms(x^i) + b, the mean of rms over `axis`.
pub fn polynorm(x: &Tensor, w: &Tensor, b: &Tensor, axis: NormAxis) -> Tensor {
    let dims: Vec<i64> =
        if axis == NormAxis::Channel || x.dim() == 2 { vec![1] } else { (1..x.dim() as i64).collect() };
    let k = w.size()[0];
    let mut power = x.shallow_clone();
    let mut acc: Option<Tensor> = None;
    for i in 0..k {
        if i > 0 {
            power = &power * x;
        }
        let mean_sq = power.square().mean_dim(dims.as_slice(), true, None);
        let term = &power * (mean_sq + POLYNORM_EPS).rsqrt() * w.get(i);
        acc = Some(match acc {
            None => term,
            Some(a) => a + term,
        });
    }
    acc.expect("order >= 1") + b
}
