//! `resnet-train bench-act`: one BatchNorm + activation site, forward and backward, at each of
//! ResNet-50's 49 site shapes, for ReLU (libtorch's batch norm and relu) and the fused PolyNorm /
//! PolyReLU (BatchNorm folded in, and the activation alone). Where `bench` times whole steps, this
//! says which site shapes and which operator a step's difference comes from: the first thing to
//! look at when a GPU's PolyNorm/ReLU ratio is off, and a same-run baseline for kernel work.

use crate::error::{Error, Result};
use crate::ffi::{self, PolyCom};
use crate::model::activation::POLYNORM_EPS;
use crate::train::step::amp::Precision;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(clap::Args, Debug)]
pub struct BenchActArgs {
    #[arg(long, default_value_t = 3, value_parser = crate::train::config::range::int::<i64>(1, crate::model::activation::MAX_ORDER as u64), allow_negative_numbers = true)]
    pub order: i64,
    /// fp32, bf16 or fp16 activations (bf16/fp16: returned in that type, as `--act-out-lowp`).
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: Precision,
    /// bf16/fp16: the PolyCom sites return fp32, with an fp32 residual, as in a model trained
    /// without `--act-out-lowp` (the default: its residual stream is fp32); ReLU stays in bf16/fp16.
    #[arg(long)]
    pub act_out_fp32: bool,
    #[arg(long, default_value_t = 32, value_parser = crate::train::config::range::int::<i64>(1, 65536), allow_negative_numbers = true)]
    pub batch: i64,
    /// Input resolution of the network whose sites are timed (224: ImageNet).
    #[arg(long, default_value_t = 224, value_parser = crate::train::config::range::int::<i64>(1, crate::data::transform::MAX_SIZE as u64), allow_negative_numbers = true)]
    pub res: i64,
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long)]
    pub channels_last: bool,
    /// Timed forward + backward passes per site shape (after `--warmup`).
    #[arg(long, default_value_t = 20, value_parser = crate::train::config::range::int::<usize>(1, 1_000_000), allow_negative_numbers = true)]
    pub iters: usize,
    #[arg(long, default_value_t = 3, value_parser = crate::train::config::range::int::<usize>(0, 1_000_000), allow_negative_numbers = true)]
    pub warmup: usize,
    /// CPU intra-op threads (0: libtorch's default).
    #[arg(long, default_value_t = 0)]
    pub threads: i32,
    /// One JSON line per (operator, site shape) as well as the totals.
    #[arg(long)]
    pub json: bool,
    /// Which build of the fused activations' CPU kernels runs (auto: the instruction set
    /// libtorch's own CPU kernels use here).
    #[arg(long, value_enum, default_value = "auto")]
    pub cpu_kernels: crate::ffi::CpuIsa,
}

/// ResNet-50's activation sites at 224 px as (channels, side, residual added before it, count):
/// the stem, then per stage the blocks' first two sites (the first block's first site at the
/// previous stage's resolution: torchvision strides in the 3x3 convolution) and the last site,
/// after the residual add. 49 sites.
const RESNET50_SITES: [(i64, i64, bool, usize); 12] = [
    (64, 112, false, 1),
    (64, 56, false, 6),
    (256, 56, true, 3),
    (128, 56, false, 1),
    (128, 28, false, 7),
    (512, 28, true, 4),
    (256, 28, false, 1),
    (256, 14, false, 11),
    (1024, 14, true, 6),
    (512, 14, false, 1),
    (512, 7, false, 5),
    (2048, 7, true, 3),
];

/// The operators timed at each site.
#[derive(Clone, Copy, Debug, PartialEq)]
enum SiteOp {
    /// libtorch's batch norm, the residual add, relu.
    Relu,
    /// BatchNorm folded into the fused operator (`--act-impl fused`).
    Folded(PolyCom),
    /// libtorch's batch norm, the add, then the fused operator (`--act-impl fused-act`).
    ActOnly(PolyCom),
}

impl SiteOp {
    fn name(self) -> String {
        match self {
            SiteOp::Relu => "relu".into(),
            SiteOp::Folded(op) => format!("{} fused", op_name(op)),
            SiteOp::ActOnly(op) => format!("{} fused-act", op_name(op)),
        }
    }
}

fn op_name(op: PolyCom) -> &'static str {
    match op {
        PolyCom::PolyRelu => "polyrelu",
        PolyCom::PolyNorm => "polynorm",
    }
}

/// One site's tensors: BatchNorm's input and parameters, the residual, the upstream gradient.
/// (`poly_*`: the residual and the upstream gradient of the PolyCom sites, of the type of their
/// output: the activation's, or fp32 where they return fp32.)
struct Site {
    z: Tensor,
    identity: Option<Tensor>,
    poly_identity: Option<Tensor>,
    poly_gy: Tensor,
    gamma: Tensor,
    beta: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    w: Tensor,
    b: Tensor,
    gy: Tensor,
    lowp_out: bool,
}

impl Site {
    /// Forward and backward once (gradients of z, gamma, beta, identity, w, b, as in training).
    fn step(&self, op: SiteOp) -> Result<()> {
        let (identity, gy) = match op {
            SiteOp::Relu => (self.identity.as_ref(), &self.gy),
            _ => (self.poly_identity.as_ref(), &self.poly_gy),
        };
        let y = match op {
            SiteOp::Relu => self.bn_add(identity).relu(),
            SiteOp::Folded(kind) => {
                let bn = ffi::BatchNormArgs {
                    gamma: Some(&self.gamma),
                    beta: Some(&self.beta),
                    running_mean: &self.running_mean,
                    running_var: &self.running_var,
                    train: true,
                    momentum: 0.1,
                    eps: 1e-5,
                };
                let act = ffi::PolyComArgs {
                    op: kind,
                    w: &self.w,
                    b: &self.b,
                    eps: POLYNORM_EPS,
                    lowp_out: self.lowp_out,
                    clamp: None,
                };
                ffi::bn_polycom(&self.z, &bn, identity, &act)?
            }
            SiteOp::ActOnly(kind) => {
                ffi::polycom(kind, &self.bn_add(identity), &self.w, &self.b, POLYNORM_EPS, self.lowp_out)?
            }
        };
        ffi::backward_with_grad(&y, gy)?;
        // As zero_grad(set_to_none=True): the next step writes fresh gradients, adds none.
        let leaves: Vec<Tensor> = [&self.z, &self.gamma, &self.beta, &self.w, &self.b]
            .into_iter()
            .chain(identity)
            .map(|t| t.shallow_clone())
            .collect();
        ffi::grads_set_none(&leaves)
    }

    fn bn_add(&self, identity: Option<&Tensor>) -> Tensor {
        let x = self.z.batch_norm(
            Some(&self.gamma),
            Some(&self.beta),
            Some(&self.running_mean),
            Some(&self.running_var),
            true,
            0.1,
            1e-5,
            true,
        );
        match identity {
            Some(r) => x + r,
            None => x,
        }
    }
}

pub fn run(a: BenchActArgs) -> Result<()> {
    if a.threads > 0 {
        tch::set_num_threads(a.threads);
    }
    let cpu_kernels = super::use_cpu_kernels(a.cpu_kernels)?;
    if !(1..=8).contains(&a.order) {
        return Err(Error::Usage(format!("--order {}: must be 1..8", a.order)));
    }
    if a.batch < 1 || a.res < 32 || a.iters == 0 {
        return Err(Error::Usage("--batch >= 1, --res >= 32 and --iters >= 1 are needed".into()));
    }
    let device = crate::runtime::parse_device(&a.device)?;
    let (kind, lowp_out) = match a.precision {
        Precision::Fp32 | Precision::Tf32 => (Kind::Float, false),
        Precision::Bf16 => (Kind::BFloat16, !a.act_out_fp32),
        Precision::Fp16 => (Kind::Half, !a.act_out_fp32),
    };
    if a.act_out_fp32 && kind == Kind::Float {
        return Err(Error::Usage("--act-out-fp32 needs --precision bf16 or fp16".into()));
    }
    // The PolyCom sites' output (and residual) type.
    let poly_kind = if lowp_out { kind } else { Kind::Float };
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let ops = [
        SiteOp::Relu,
        SiteOp::Folded(PolyCom::PolyNorm),
        SiteOp::ActOnly(PolyCom::PolyNorm),
        SiteOp::Folded(PolyCom::PolyRelu),
        SiteOp::ActOnly(PolyCom::PolyRelu),
    ];
    let mut totals = vec![0f64; ops.len()];
    tch::manual_seed(0);
    for (channels, side_224, residual, count) in RESNET50_SITES {
        let side = (side_224 * a.res / 224).max(1);
        let shape = [a.batch, channels, side, side];
        let activation = |t: Tensor| -> Result<Tensor> {
            let t = t.to_kind(kind);
            Ok(if a.channels_last { ffi::to_channels_last(&t)? } else { t })
        };
        let leaf = |t: Tensor| t.set_requires_grad(true);
        let opts = (Kind::Float, device);
        let identity = if residual { Some(activation(Tensor::randn(shape, opts) * 0.5)?) } else { None };
        let gy = activation(Tensor::randn(shape, opts))?;
        let site = Site {
            z: leaf(activation(Tensor::randn(shape, opts))?),
            identity: identity.as_ref().map(|t| leaf(t.copy())),
            poly_identity: identity.as_ref().map(|t| leaf(t.to_kind(poly_kind))),
            poly_gy: gy.to_kind(poly_kind),
            gamma: leaf(Tensor::ones([channels], opts)),
            beta: leaf(Tensor::zeros([channels], opts)),
            running_mean: Tensor::zeros([channels], opts),
            running_var: Tensor::ones([channels], opts),
            w: leaf(Tensor::full([a.order], 1.0 / a.order as f64, opts)),
            b: leaf(Tensor::zeros([1], opts)),
            // The gradient arrives in the output's type (ReLU: the activation's).
            gy,
            lowp_out,
        };
        let mut relu_ms = f64::NAN;
        for (i, op) in ops.into_iter().enumerate() {
            for _ in 0..a.warmup {
                site.step(op)?;
            }
            sync();
            let t0 = Instant::now();
            for _ in 0..a.iters {
                site.step(op)?;
            }
            sync();
            let ms = t0.elapsed().as_secs_f64() * 1e3 / a.iters as f64;
            if op == SiteOp::Relu {
                relu_ms = ms;
            }
            totals[i] += ms * count as f64;
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "op": op.name(), "channels": channels, "side": side, "residual": residual,
                        "sites": count, "ms": ms, "vs_relu": ms / relu_ms,
                        // One pass over the site's activation: ms / (this / bandwidth) = passes.
                        "tensor_bytes": site.z.numel() * site.z.kind().elt_size_in_bytes(),
                    })
                );
            }
        }
    }
    for (op, total) in ops.iter().zip(&totals) {
        println!(
            "{}",
            serde_json::json!({
                "total": op.name(), "precision": format!("{:?}", a.precision), "act_out_fp32": a.act_out_fp32,
                "batch": a.batch, "res": a.res,
                "channels_last": a.channels_last, "device": crate::runtime::describe_device(device), "order": a.order,
                "ms_all_49_sites": total, "vs_relu": total / totals[0],
                "cuda_tuning": std::env::var("RESNET_TRAIN_CUDA_TUNING").ok(),
                "cpu_kernels": format!("{cpu_kernels:?}").to_lowercase(),
            })
        );
    }
    Ok(())
}
