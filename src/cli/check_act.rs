//! `resnet-train check-act`: the fused PolyReLU / PolyNorm against the eager path on a device,
//! forward and every gradient, for every order, input type and layout. The CUDA kernels are
//! compiled at run time (NVRTC), so this is the first thing to run on a GPU machine; on the CPU
//! the test suite checks the same (tests/fused_activation.rs).

use crate::error::{Error, Result};
use crate::ffi::{self, PolyCom};
use crate::model::activation::{fused_runs_on, polynorm, polyrelu, NormAxis, POLYNORM_EPS};
use tch::{Kind, Tensor};

#[derive(clap::Args, Debug)]
pub struct CheckActArgs {
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// One JSON line per case instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// y and the gradients w.r.t. x, w and b of sum(f(x, w, b) * gy).
fn value_and_grads(
    f: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    gy: &Tensor,
) -> [Tensor; 4] {
    let x = x.detach().set_requires_grad(true);
    let w = w.detach().set_requires_grad(true);
    let b = b.detach().set_requires_grad(true);
    let y = f(&x, &w, &b);
    (&y * gy.to_kind(y.kind())).sum(y.kind()).backward();
    [y.detach(), x.grad(), w.grad(), b.grad()]
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
    let device = crate::runtime::parse_device(&a.device)?;
    if !fused_runs_on(device) {
        return Err(Error::Usage(format!(
            "the fused activations do not run on {device:?} (see the warning above)"
        )));
    }
    let shapes: [(&str, &[i64]); 4] =
        [("nchw", &[4, 64, 14, 14]), ("odd", &[3, 5, 7, 9]), ("pooled", &[8, 96, 1, 1]), ("2d", &[16, 100])];
    tch::manual_seed(0);
    let (mut cases, mut failures) = (0, 0);
    for op in [PolyCom::PolyRelu, PolyCom::PolyNorm] {
        for order in 1..=8i64 {
            for dtype in [Kind::Float, Kind::Double, Kind::BFloat16, Kind::Half] {
                let acc = if dtype == Kind::Double { Kind::Double } else { Kind::Float };
                for lowp_out in [false, true] {
                    if lowp_out && !matches!(dtype, Kind::BFloat16 | Kind::Half) {
                        continue;
                    }
                    for (name, shape) in shapes {
                        for channels_last in [false, true] {
                            if channels_last && shape.len() != 4 {
                                continue;
                            }
                            let opts = (Kind::Double, device);
                            let spread = if dtype == Kind::Half { 0.8 } else { 1.3 };
                            let mut x = (Tensor::randn(shape, opts) * spread).to_kind(dtype);
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
                            let want = value_and_grads(eager, &x, &w, &b, &gy);
                            let got = value_and_grads(
                                |x, w, b| {
                                    ffi::polycom(op, x, w, b, POLYNORM_EPS, lowp_out).expect("fused operator")
                                },
                                &x,
                                &w,
                                &b,
                                &gy,
                            );
                            // dw and db: against the sum of the terms' magnitudes (they cancel).
                            let abs64 = |t: &Tensor| t.to_kind(Kind::Double).abs();
                            let eager64 = |x: &Tensor, w: &Tensor, b: &Tensor| match op {
                                PolyCom::PolyRelu => polyrelu(x, w, b),
                                PolyCom::PolyNorm => polynorm(x, w, b, NormAxis::Channel),
                            };
                            let (w64, b64) = (w.to_kind(Kind::Double), b.to_kind(Kind::Double));
                            let scale = value_and_grads(eager64, &abs64(&x), &w64, &b64, &gy.abs());
                            let errs: Vec<f64> = (0..4)
                                .map(|i| {
                                    if i < 2 {
                                        rel_err(&got[i], &want[i])
                                    } else {
                                        abs_err(&got[i], &want[i], &scale[i])
                                    }
                                })
                                .collect();
                            let tol = match dtype {
                                Kind::Double => [1e-12, 1e-11, 1e-11, 1e-11],
                                Kind::Float => [2e-5, 1e-4, 1e-5, 1e-5],
                                // Rounded outputs: both round (nearly) the same fp32 value.
                                _ if lowp_out => [1e-2, 1e-2, 1e-5, 1e-5],
                                _ => [2e-5, 1e-2, 1e-5, 1e-5],
                            };
                            let ok = errs.iter().zip(tol).all(|(e, t)| *e < t);
                            cases += 1;
                            failures += usize::from(!ok);
                            let row = serde_json::json!({
                                "op": format!("{op:?}"), "order": order, "dtype": format!("{dtype:?}"), "shape": name,
                                "channels_last": channels_last, "lowp_out": lowp_out, "ok": ok,
                                "rel_err": {"y": errs[0], "dx": errs[1], "dw": errs[2], "db": errs[3]},
                            });
                            if a.json || !ok {
                                println!("{row}");
                            }
                        }
                    }
                }
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({"check": "fused-vs-eager", "device": format!("{device:?}"), "cases": cases, "failures": failures})
    );
    if failures > 0 {
        return Err(Error::Torch(format!(
            "{failures} of {cases} fused-activation cases differ from the eager path"
        )));
    }
    Ok(())
}
