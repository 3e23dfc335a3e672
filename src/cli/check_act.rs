//! `resnet-train check-act`: the fused PolyReLU / PolyNorm against the eager path on a device,
//! forward and every gradient, for every order, input type and layout. The CUDA kernels are
//! compiled at run time (NVRTC), so this is the first thing to run on a GPU machine; on the CPU
//! the test suite checks the same (tests/fused_activation.rs). Then BatchNorm folded into the
//! operator (`ffi::bn_polycom`) against libtorch's BatchNorm followed by the operator (on CUDA:
//! cuDNN's batch norm, which the folded operator must run identically), and a whole float64
//! PolyNorm ResNet-50's gradients, fused against eager.

use crate::error::{Error, Result};
use crate::ffi::{self, PolyCom};
use crate::model::activation::{fused_runs_on, polynorm, polyrelu, NormAxis, POLYNORM_EPS};
use tch::{Device, Kind, Tensor};

#[derive(clap::Args, Debug)]
pub struct CheckActArgs {
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// One JSON line per case instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// Check the CUDA kernels' source without a GPU: compiled for the host, run on the CPU under a
    /// SIMT emulator (src/ffi/simt_host.h) that models warps, shuffles and __syncthreads and
    /// reports misuse of them. Runs on the CPU (--device cpu or auto).
    #[arg(long)]
    pub simulate_cuda: bool,
    /// Only compile the CUDA kernels for this architecture (sm_90: H100/H200) into the kernel cache
    /// (RESNET_TRAIN_CACHE/kernels), under RESNET_TRAIN_CUDA_TUNING, with NVRTC and no GPU: a
    /// cache carried to a GPU machine spares it the compile (a few seconds per tuning, in every
    /// fresh process that finds no cache). An image the GPU's driver refuses is compiled there anew.
    #[arg(long, value_name = "ARCH")]
    pub compile_for: Option<String>,
}

/// y and the gradients w.r.t. x, w and b of sum(f(x, w, b) * gy); a failing kernel (forward or
/// backward) is an error, not a panic.
fn value_and_grads(
    f: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    gy: &Tensor,
) -> Result<[Tensor; 4]> {
    let x = x.detach().set_requires_grad(true);
    let w = w.detach().set_requires_grad(true);
    let b = b.detach().set_requires_grad(true);
    let y = f(&x, &w, &b)?;
    (&y * gy.to_kind(y.kind())).sum(y.kind()).f_backward().map_err(|e| Error::Torch(e.to_string()))?;
    Ok([y.detach(), x.grad(), w.grad(), b.grad()])
}

/// max |a - b| / max |b|, in f64.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    let num = (&a - &b).abs().max().double_value(&[]);
    num / b.abs().max().double_value(&[]).max(1e-30)
}

/// max |a - b| / max |scale|, in f64.
fn abs_err(a: &Tensor, b: &Tensor, scale: &Tensor) -> f64 {
    let d = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[]);
    d / scale.abs().max().double_value(&[]).max(1e-30)
}

pub fn run(a: CheckActArgs) -> Result<()> {
    if let Some(arch) = &a.compile_for {
        return compile_for(arch);
    }
    if a.simulate_cuda {
        if !matches!(a.device.as_str(), "cpu" | "auto") {
            return Err(Error::Usage(format!(
                "--simulate-cuda runs the CUDA kernels on the CPU: use --device cpu, not --device {}",
                a.device
            )));
        }
        ffi::set_polycom_cuda_simulation(true)?;
    }
    let device = if a.simulate_cuda { Device::Cpu } else { crate::runtime::parse_device(&a.device)? };
    let device_name = if a.simulate_cuda {
        "Cpu (CUDA kernels, simulated)".to_string()
    } else {
        crate::runtime::describe_device(device)
    };
    if !fused_runs_on(device) {
        return Err(Error::Usage(format!(
            "the fused activations do not run on {device:?} (see the warning above)"
        )));
    }
    // "offset": a view one element into its storage, so no vector access can be aligned (the
    // kernels must take their scalar path).
    let shapes: [(&str, &[i64]); 5] = [
        ("nchw", &[4, 64, 14, 14]),
        ("odd", &[3, 5, 7, 9]),
        ("pooled", &[8, 96, 1, 1]),
        ("2d", &[16, 100]),
        ("offset", &[6, 64]),
    ];
    tch::manual_seed(0);
    let (mut cases, mut failures) = (0, 0);
    for op in [PolyCom::PolyRelu, PolyCom::PolyNorm] {
        for order in 1..=8i64 {
            for dtype in [Kind::Float, Kind::Double, Kind::BFloat16, Kind::Half] {
                for lowp_out in [false, true] {
                    if lowp_out && !matches!(dtype, Kind::BFloat16 | Kind::Half) {
                        continue;
                    }
                    for (name, shape) in shapes {
                        for channels_last in [false, true] {
                            if channels_last && shape.len() != 4 {
                                continue;
                            }
                            let case = Case { op, order, dtype, lowp_out, name, shape, channels_last };
                            cases += 1;
                            failures += usize::from(!check_case(&case, device, a.json)?);
                        }
                    }
                }
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({"check": "fused-vs-eager", "device": device_name, "cases": cases, "failures": failures})
    );
    // The kernels (CPU and CUDA) apply batch norm as they load z (x is never written), which rounds
    // differently from libtorch's batch norm: values within tolerance, not the same bits.
    // On CUDA (and simulated) batch norm's backward runs folded into the channels-last backward
    // kernels where a lane's channels fit them: `cuda_bn_folds` counts those cases.
    let folds_before = ffi::polycom_cuda_bn_folds()?;
    let (bn_cases, bn_failures) = check_bn_fold(device, a.json)?;
    let cuda_bn_folds = ffi::polycom_cuda_bn_folds()? - folds_before;
    println!(
        "{}",
        serde_json::json!({"check": "bn-fold", "device": device_name, "cases": bn_cases, "failures": bn_failures,
                           "cuda_bn_folds": cuda_bn_folds})
    );
    // A whole network: every parameter's gradient, the folded operators against the eager path.
    let folds_before = ffi::polycom_cuda_bn_folds()?;
    let (worst, worst_at) = check_resnet50_gradients(device)?;
    let model_ok = worst < 1e-9;
    println!(
        "{}",
        serde_json::json!({"check": "resnet50-grads", "device": device_name, "ok": model_ok,
                           "worst_rel_err": worst, "at": worst_at,
                           "cuda_bn_folds": ffi::polycom_cuda_bn_folds()? - folds_before})
    );
    // The training forward's inner sites in the autocast type against all sites fp32.
    let (bitwise, inner_worst, inner_at) = check_inner_sites(device)?;
    // Bitwise on the CPU; on a GPU a kernel's reductions could group the fp32 and the bf16/fp16
    // gradient differently, which this bound tolerates and `bitwise` reports.
    let inner_ok = inner_worst < 1e-5;
    println!(
        "{}",
        serde_json::json!({"check": "inner-sites", "device": device_name, "ok": inner_ok, "bitwise": bitwise,
                           "worst_rel_diff": inner_worst, "at": inner_at})
    );
    if failures + bn_failures > 0 || !model_ok || !inner_ok {
        return Err(Error::Torch(format!(
            "{failures} of {cases} fused-activation cases differ from the eager path; {bn_failures} of {bn_cases} \
             folded BatchNorm cases differ from the separate operators; ResNet-50's gradients: worst relative \
             error {worst:e} (at {worst_at}), bound 1e-9; inner sites in the autocast type: worst relative \
             difference {inner_worst:e} (at {inner_at}), bound 1e-5"
        )));
    }
    Ok(())
}

/// One fused-vs-eager case: an operator, order, input type, output rounding, shape and layout.
#[derive(Clone, Copy)]
struct Case<'a> {
    op: PolyCom,
    order: i64,
    dtype: Kind,
    lowp_out: bool,
    name: &'a str,
    shape: &'a [i64],
    channels_last: bool,
}

/// The fused operator's value and gradients against the eager path's on one case (a row printed
/// where it fails, or with `json`); whether it is within the tolerance of its type.
fn check_case(c: &Case, device: Device, json: bool) -> Result<bool> {
    let Case { op, order, dtype, lowp_out, name, shape, channels_last } = *c;
    let acc = if dtype == Kind::Double { Kind::Double } else { Kind::Float };
    let opts = (Kind::Double, device);
    let spread = if dtype == Kind::Half { 0.8 } else { 1.3 };
    let mut x = (Tensor::randn(shape, opts) * spread).to_kind(dtype);
    if name == "offset" {
        let numel: i64 = shape.iter().product();
        let storage = Tensor::zeros([numel + 1], (dtype, device));
        let mut view = storage.narrow(0, 1, numel).view(shape);
        view.copy_(&x);
        x = view;
    }
    if channels_last {
        x = ffi::to_channels_last(&x)?;
    }
    let w = (Tensor::randn([order], opts) / order as f64).to_kind(acc);
    let b = Tensor::from_slice(&[0.3f64]).to_device(device).to_kind(acc);
    let gy = Tensor::randn(shape, opts);
    let eager = |x: &Tensor, w: &Tensor, b: &Tensor| match op {
        PolyCom::PolyRelu => polyrelu(&x.to_kind(acc), w, b),
        PolyCom::PolyNorm => polynorm(&x.to_kind(acc), w, b, NormAxis::Channel),
    };
    // act_out_lowp: the eager fp32 value rounded to the input's type.
    let eager = |x: &Tensor, w: &Tensor, b: &Tensor| {
        let y = eager(x, w, b);
        if lowp_out {
            y.to_kind(dtype)
        } else {
            y
        }
    };
    let want = value_and_grads(|x, w, b| Ok(eager(x, w, b)), &x, &w, &b, &gy)?;
    let case = serde_json::json!({
        "op": format!("{op:?}"), "order": order, "dtype": format!("{dtype:?}"), "shape": name,
        "channels_last": channels_last, "lowp_out": lowp_out,
    });
    let fused = |x: &Tensor, w: &Tensor, b: &Tensor| ffi::polycom(op, x, w, b, POLYNORM_EPS, lowp_out);
    let got = match value_and_grads(fused, &x, &w, &b, &gy) {
        Ok(got) => got,
        Err(e) => {
            println!("{}", serde_json::json!({"case": case, "ok": false, "error": e.to_string()}));
            return Ok(false);
        }
    };
    // dw and db: against the sum of the terms' magnitudes (they cancel).
    let abs64 = |t: &Tensor| t.to_kind(Kind::Double).abs();
    let eager64 = |x: &Tensor, w: &Tensor, b: &Tensor| match op {
        PolyCom::PolyRelu => polyrelu(x, w, b),
        PolyCom::PolyNorm => polynorm(x, w, b, NormAxis::Channel),
    };
    let (w64, b64) = (w.to_kind(Kind::Double), b.to_kind(Kind::Double));
    let scale = value_and_grads(|x, w, b| Ok(eager64(x, w, b)), &abs64(&x), &w64, &b64, &gy.abs())?;
    let errs: Vec<f64> = (0..4)
        .map(|i| if i < 2 { rel_err(&got[i], &want[i]) } else { abs_err(&got[i], &want[i], &scale[i]) })
        .collect();
    let tol = match dtype {
        Kind::Double => [1e-12, 1e-11, 1e-11, 1e-11],
        Kind::Float => [2e-5, 1e-4, 1e-5, 1e-5],
        // Rounded outputs: both round (nearly) the same fp32 value.
        _ if lowp_out => [1e-2, 1e-2, 1e-5, 1e-5],
        _ => [2e-5, 1e-2, 1e-5, 1e-5],
    };
    let ok = errs.iter().zip(tol).all(|(e, t)| *e < t);
    let row = serde_json::json!({
        "case": case, "ok": ok,
        "rel_err": {"y": errs[0], "dx": errs[1], "dw": errs[2], "db": errs[3]},
    });
    if json || !ok {
        println!("{row}");
    }
    Ok(ok)
}

/// One BatchNorm + activation site on `device`, folded (`ffi::bn_polycom`) or separate
/// (libtorch's BatchNorm, the add, the `act_clamp` clamp, `ffi::polycom`): y, the running
/// statistics after it, and the gradients of (z, gamma, beta, residual, w, b).
#[allow(clippy::too_many_arguments)]
fn bn_site(
    folded: bool,
    op: PolyCom,
    z: &Tensor,
    residual: Option<&Tensor>,
    train: bool,
    lowp_out: bool,
    clamp: Option<f64>,
    gy: &Tensor,
) -> Result<Vec<Tensor>> {
    let (c, device) = (z.size()[1], z.device());
    let acc = if z.kind() == Kind::Double { Kind::Double } else { Kind::Float };
    // Parameters and statistics away from their defaults, the same for every call.
    let fixed = |seed: i64, lo: f64, spread: f64| {
        let t = Tensor::arange(c, (Kind::Double, Device::Cpu));
        ((t * (seed as f64) * 0.37).sin() * spread + lo).to_kind(acc).to_device(device)
    };
    let leaf = |t: Tensor| t.set_requires_grad(true);
    let (gamma, beta) = (leaf(fixed(1, 1.0, 0.4)), leaf(fixed(2, 0.0, 0.3)));
    let (running_mean, running_var) = (fixed(3, 0.0, 0.2), fixed(4, 1.0, 0.4));
    let w = leaf(Tensor::from_slice(&[0.5f64, -0.3, 0.25]).to_kind(acc).to_device(device));
    let b = leaf(Tensor::from_slice(&[0.1f64]).to_kind(acc).to_device(device));
    let z = z.detach().set_requires_grad(true);
    let residual = residual.map(|r| r.detach().set_requires_grad(true));
    let y = if folded {
        let args = ffi::BatchNormArgs {
            gamma: Some(&gamma),
            beta: Some(&beta),
            running_mean: &running_mean,
            running_var: &running_var,
            train,
            momentum: 0.1,
            eps: 1e-5,
        };
        let act = ffi::PolyComArgs { op, w: &w, b: &b, eps: POLYNORM_EPS, lowp_out, clamp };
        ffi::bn_polycom(&z, &args, residual.as_ref(), &act)?
    } else {
        let x = z.batch_norm(
            Some(&gamma),
            Some(&beta),
            Some(&running_mean),
            Some(&running_var),
            train,
            0.1,
            1e-5,
            true,
        );
        let x = match &residual {
            Some(r) => x + r,
            None => x,
        };
        let x = match clamp {
            Some(c) => x.clamp(-c, c),
            None => x,
        };
        ffi::polycom(op, &x, &w, &b, POLYNORM_EPS, lowp_out)?
    };
    (&y * gy.to_kind(y.kind())).sum(Kind::Float).f_backward().map_err(|e| Error::Torch(e.to_string()))?;
    let mut out =
        vec![y.detach(), running_mean, running_var, z.grad(), gamma.grad(), beta.grad(), w.grad(), b.grad()];
    if let Some(r) = residual {
        out.push(r.grad());
    }
    Ok(out)
}

/// BatchNorm folded into the fused operator vs the separate operators on `device`: the same
/// forward values, running statistics and gradients, to the roundings in which batch norm applied
/// on load differs from libtorch's batch norm.
fn check_bn_fold(device: Device, json: bool) -> Result<(usize, usize)> {
    let names = ["y", "running_mean", "running_var", "dz", "dgamma", "dbeta", "dw", "db", "dresidual"];
    let (mut cases, mut failures) = (0, 0);
    for op in [PolyCom::PolyRelu, PolyCom::PolyNorm] {
        for dtype in [Kind::Float, Kind::Double, Kind::BFloat16, Kind::Half] {
            for lowp_out in [false, true] {
                if lowp_out && !matches!(dtype, Kind::BFloat16 | Kind::Half) {
                    continue;
                }
                for channels_last in [false, true] {
                    // No residual, one of z's type, and for a bf16/fp16 z an fp32 one (the
                    // fp32 residual stream of fp32 outputs: x, y and dx in fp32).
                    let mut residuals = vec![None, Some(dtype)];
                    if matches!(dtype, Kind::BFloat16 | Kind::Half) {
                        residuals.push(Some(Kind::Float));
                    }
                    // 24 channels: a lane of the CUDA kernels serves one or two vectors of them
                    // and batch norm's backward is folded in; 5: folded too, one channel at a
                    // time (no whole vectors); 768: more than the folded kernels hold per lane,
                    // so batch norm's own backward runs.
                    for (residual, shape) in residuals
                        .iter()
                        .flat_map(|r| [(*r, [4, 24, 9, 11]), (*r, [3, 5, 4, 3]), (*r, [2, 768, 2, 3])])
                    {
                        for train in [true, false] {
                            tch::manual_seed(cases as i64);
                            let opts = (Kind::Double, device);
                            let mut z = (Tensor::randn(shape, opts) * 1.3 + 0.2).to_kind(dtype);
                            if channels_last {
                                z = ffi::to_channels_last(&z)?;
                            }
                            let mut r = residual.map(|kind| (Tensor::randn(shape, opts) * 0.5).to_kind(kind));
                            // A residual in z's layout (as in a channels-last model: the CUDA kernels
                            // then read it as they recompute x), or, in eval mode, in the other one.
                            if let (Some(t), true, true) = (&r, channels_last, train) {
                                r = Some(ffi::to_channels_last(t)?);
                            }
                            let gy = Tensor::randn(shape, opts);
                            // act_clamp in every third case (its mask cuts a good part of x).
                            let clamp = (cases % 3 == 0).then_some(0.9);
                            let got = bn_site(true, op, &z, r.as_ref(), train, lowp_out, clamp, &gy)?;
                            let want = bn_site(false, op, &z, r.as_ref(), train, lowp_out, clamp, &gy)?;
                            let tol = match dtype {
                                Kind::Double => 1e-11,
                                Kind::Float => 1e-4,
                                _ => 3e-2,
                            };
                            let mut errs = serde_json::Map::new();
                            let mut ok = true;
                            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                                // Statistics within their fp32 rounding; y and the gradients within
                                // the dtype's tolerance.
                                let err = rel_err(g, w);
                                ok &= match i {
                                    1 | 2 => err < 1e-5,
                                    _ => err < tol,
                                };
                                errs.insert(names[i].to_string(), serde_json::json!(err));
                            }
                            cases += 1;
                            failures += usize::from(!ok);
                            let row = serde_json::json!({
                                "check": "bn-fold", "op": format!("{op:?}"), "dtype": format!("{dtype:?}"),
                                "channels_last": channels_last, "shape": shape,
                                "residual": residual.map(|k| format!("{k:?}")), "train": train,
                                "lowp_out": lowp_out, "clamp": clamp, "ok": ok, "rel_err": errs,
                            });
                            if json || !ok {
                                println!("{row}");
                            }
                        }
                    }
                }
            }
        }
    }
    Ok((cases, failures))
}

fn resnet50_config(implementation: crate::model::ActImpl) -> crate::model::ResNetConfig {
    use crate::model::{ActConfig, ActKind, Arch, ResNetConfig};
    let mut act = ActConfig::new(ActKind::Polynorm, 3);
    act.implementation = implementation;
    let mut cfg = ResNetConfig::new(Arch::Resnet50, act);
    cfg.num_classes = 10;
    cfg
}

/// One training-mode forward and backward of a PolyNorm ResNet-50 (10 classes, channels_last)
/// with `init`'s weights, in float64 (`autocast` None) or under bf16/fp16 autocast, through
/// `forward_t` or the monitored forward: the logits and every parameter's gradient, by name.
fn resnet50_step(
    init: &tch::nn::VarStore,
    x: &Tensor,
    implementation: crate::model::ActImpl,
    autocast: Option<Kind>,
    observed: bool,
) -> Result<(Tensor, Vec<(String, Tensor)>)> {
    let device = x.device();
    let mut vs = tch::nn::VarStore::new(device);
    let model = crate::model::ResNet::new(&vs.root(), resnet50_config(implementation))?;
    vs.copy(init).map_err(|e| Error::Torch(e.to_string()))?;
    if autocast.is_none() {
        vs.double();
    }
    crate::model::to_channels_last(&vs)?;
    let logits = {
        let _autocast = autocast.map(|k| ffi::AutocastGuard::new(device, k)).transpose()?;
        if observed {
            model.forward_observed(x, true, &mut |_, _| {})
        } else {
            model.forward_t(x, true)
        }
    };
    let labels = Tensor::from_slice(&[1i64, 7]).to_device(device);
    let loss = logits.to_kind(x.kind()).cross_entropy_for_logits(&labels);
    loss.f_backward().map_err(|e| Error::Torch(e.to_string()))?;
    let mut g: Vec<_> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(name, t)| (name, t.grad()))
        .collect();
    g.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((logits.detach(), g))
}

/// The worst relative error of `got`'s gradients against `want`'s (|g - w| / |w|, over the
/// gradients with a non-negligible norm; NaN is the worst of all) and where.
fn worst_gradient(got: &[(String, Tensor)], want: &[(String, Tensor)]) -> (f64, String) {
    let mut worst = (0.0, String::new());
    for ((name, g), (_, r)) in got.iter().zip(want) {
        let (g, r) = (g.to_kind(Kind::Double), r.to_kind(Kind::Double));
        let norm = r.norm().double_value(&[]);
        if norm > 1e-9 {
            let err = (&g - &r).norm().double_value(&[]) / norm;
            if err.is_nan() || err > worst.0 {
                worst = (err, name.clone());
            }
        }
    }
    worst
}

/// A PolyNorm ResNet-50 (10 classes) in float64, channels_last, one training-mode forward and
/// backward of a batch of 2 at 64 px (at 32 px layer4's batch norm normalises 2 values per channel,
/// too ill-conditioned for the bound on either path): every parameter's gradient with the fused operators
/// (BatchNorm and the residual add folded in, as the trainer runs them) against the eager path
/// from the same weights. Returns the worst relative error (|g - g_eager| / |g_eager|, over the
/// gradients with a non-negligible norm) and where.
fn check_resnet50_gradients(device: Device) -> Result<(f64, String)> {
    use crate::model::{ActImpl, ResNet};
    tch::manual_seed(0);
    let init = tch::nn::VarStore::new(device);
    ResNet::new(&init.root(), resnet50_config(ActImpl::Eager))?;
    let x = ffi::to_channels_last(&Tensor::randn([2, 3, 64, 64], (Kind::Double, device)))?;
    let (_, fused) = resnet50_step(&init, &x, ActImpl::Fused, None, false)?;
    let (_, eager) = resnet50_step(&init, &x, ActImpl::Eager, None, false)?;
    Ok(worst_gradient(&fused, &eager))
}

/// Under bf16 and fp16 autocast the training forward returns each block's inner sites in the
/// autocast type, which only the next convolution reads (and would cast them to), where the
/// monitored forward keeps every site fp32: the same logits and gradients, bit for bit on the
/// CPU (tests/fused_activation.rs). Returns whether all were bitwise equal, and the worst
/// relative difference of the logits and gradients (fused operators, channels_last, the
/// PolyNorm ResNet-50 of `check_resnet50_gradients` at fp32 weights) and where.
fn check_inner_sites(device: Device) -> Result<(bool, f64, String)> {
    use crate::model::{ActImpl, ResNet};
    tch::manual_seed(1);
    let init = tch::nn::VarStore::new(device);
    ResNet::new(&init.root(), resnet50_config(ActImpl::Fused))?;
    let x = ffi::to_channels_last(&Tensor::randn([2, 3, 64, 64], (Kind::Float, device)))?;
    let (mut bitwise, mut worst) = (true, (0.0, String::new()));
    for dtype in [Kind::BFloat16, Kind::Half] {
        let (logits, grads) = resnet50_step(&init, &x, ActImpl::Fused, Some(dtype), false)?;
        let (ref_logits, ref_grads) = resnet50_step(&init, &x, ActImpl::Fused, Some(dtype), true)?;
        bitwise &=
            logits.equal(&ref_logits) && grads.iter().zip(&ref_grads).all(|((_, g), (_, r))| g.equal(r));
        let logits_err = rel_err(&logits, &ref_logits);
        let (err, at) = worst_gradient(&grads, &ref_grads);
        for (err, at) in [(logits_err, "logits".to_string()), (err, at)] {
            if err.is_nan() || err > worst.0 {
                worst = (err, format!("{dtype:?} {at}"));
            }
        }
    }
    Ok((bitwise, worst.0, worst.1))
}

/// `--compile-for ARCH`: the kernels into the cache folder, one line on what was done.
fn compile_for(arch: &str) -> Result<()> {
    let dir = crate::runtime::cache_dir().map(|d| d.join("kernels")).ok_or_else(|| {
        Error::Usage("--compile-for: no cache folder (set RESNET_TRAIN_CACHE or HOME)".into())
    })?;
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let tuning = std::env::var("RESNET_TRAIN_CUDA_TUNING").unwrap_or_default();
    match ffi::polycom_cuda_cached_compile(arch, None, &dir, &tuning)? {
        Ok((cached, bytes)) => {
            println!(
                "CUDA kernels for {arch} (tuning: {}): {bytes} bytes {} {}",
                if tuning.is_empty() { "default" } else { &tuning },
                if cached { "already in" } else { "compiled into" },
                dir.display()
            );
            Ok(())
        }
        Err(log) => Err(Error::Usage(format!("--compile-for {arch}: {log}"))),
    }
}
