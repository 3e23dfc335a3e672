//! The fused PolyNorm / PolyReLU operator (src/ffi/polycom.cpp) against three independent
//! references: the PyTorch reference's golden values (polycom.py, orders 1..8), the eager path
//! (every order, dtype and layout), and float64 finite differences of its closed-form backward.

mod common;

use resnet_train::ffi::{self, CpuIsa, PolyCom};
use resnet_train::model::activation::{polynorm, polyrelu, POLYNORM_EPS};
use resnet_train::model::{ActConfig, ActImpl, ActKind, Activation, Arch, NormAxis, ResNet, ResNetConfig};
use tch::{nn, Device, Kind, Tensor};

fn fused(op: PolyCom, x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    ffi::polycom(op, x, w, b, POLYNORM_EPS, false).expect("fused operator runs")
}

fn eager(op: PolyCom, x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    match op {
        PolyCom::PolyRelu => polyrelu(x, w, b),
        PolyCom::PolyNorm => polynorm(x, w, b, NormAxis::Channel),
    }
}

/// y and the vector-Jacobian products (dx, dw, db) with `gy` of `f` at (x, w, b).
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

const NAMES: [&str; 4] = ["y", "dx", "dw", "db"];

#[test]
fn matches_reference_golden_values_for_orders_1_to_8() {
    let g = common::golden("activations_o1_8.safetensors");
    for (op, name) in [(PolyCom::PolyRelu, "polyrelu"), (PolyCom::PolyNorm, "polynorm")] {
        for order in 1..=8 {
            let key = format!("{name}.o{order}.channel");
            let t = |s: &str| g[&format!("{key}.{s}")].shallow_clone();
            for (kind, tol) in [(Kind::Double, 1e-12), (Kind::Float, 1e-4)] {
                let c = |s: &str| t(s).to_kind(kind);
                let ours = value_and_grads(|x, w, b| fused(op, x, w, b), &c("x"), &c("w"), &c("b"), &c("gy"));
                for (i, want) in ["y", "gx", "gw", "gb"].iter().enumerate() {
                    let err = common::rel_err(&ours[i].to_kind(Kind::Double), &t(want));
                    assert!(err < tol, "{key}.{want} ({kind:?}): relative error {err:e} >= {tol:e}");
                }
            }
        }
    }
}

/// Shapes that stress the kernels' layouts and tails.
fn shapes() -> Vec<(&'static str, Vec<i64>)> {
    vec![
        ("nchw", vec![2, 5, 7, 9]),     // H*W = 63: a partial tile
        ("wide", vec![1, 3, 20, 20]),   // batch 1, several tiles
        ("c1", vec![3, 1, 4, 5]),       // one channel: rsqrt of x^2i itself
        ("hw1", vec![4, 19, 1, 1]),     // pooled features: per-row path
        ("2d", vec![6, 37]),            // 2-d: dim 1
        ("3d", vec![2, 4, 11]),         // 3-d: channels then a flattened rest
        ("many_c", vec![2, 130, 3, 3]), // channel loop longer than a vector
    ]
}

/// Layout variants of a 4-d tensor: contiguous, channels_last, non-contiguous (a strided slice).
fn layouts(x: &Tensor) -> Vec<(&'static str, Tensor)> {
    let mut out = vec![("contiguous", x.shallow_clone())];
    if x.dim() == 4 {
        out.push(("channels_last", ffi::to_channels_last(x).expect("channels_last")));
        let wide = Tensor::cat(&[x, x], 3); // [.., 2W]
        out.push(("strided", wide.slice(3, 0, 2 * x.size()[3], 2)));
        out.push(("permuted", x.permute([0, 1, 3, 2]).contiguous().permute([0, 1, 3, 2])));
    } else {
        out.push(("transposed", x.transpose(0, 1).contiguous().transpose(0, 1)));
    }
    out
}

fn check_against_eager(op: PolyCom, order: i64, dtype: Kind, shape: &[i64], label: &str) {
    tch::manual_seed(order * 1000 + shape.iter().sum::<i64>());
    let opts = (Kind::Double, Device::Cpu);
    // fp16 holds up to 65504: a smaller spread keeps order-8 gradients in range.
    let x64 = Tensor::randn(shape, opts) * if dtype == Kind::Half { 0.8 } else { 1.3 };
    let w = Tensor::randn([order], opts) / order as f64;
    let b = Tensor::from_slice(&[0.3f64]);
    let gy = Tensor::randn(shape, opts);
    // fp32 arithmetic for fp32/bf16/fp16 inputs: the eager reference sees the same (rounded) input
    // upcast to fp32, as `act_fp32 = true` does.
    let acc = if dtype == Kind::Double { Kind::Double } else { Kind::Float };
    let (w, b) = (w.to_kind(acc), b.to_kind(acc));
    let x = x64.to_kind(dtype);
    let (tol_y, tol_dx, tol_coef): (f64, f64, f64) = match dtype {
        Kind::Double => (1e-12, 1e-11, 1e-11),
        Kind::Float => (2e-5, 1e-4, 1e-5),
        // dx is rounded to the input's 8 / 11 significant bits.
        _ => (2e-5, 1e-2, 1e-5),
    };
    // One channel: dx = w eps / (x^2 + eps)^1.5 is a cancellation (1 - x^2 r^2) that fp32 resolves
    // only to ~1e-4 of the largest gradient, on the eager path as on the fused one.
    let tol_dx = if shape[1] == 1 && op == PolyCom::PolyNorm { tol_dx.max(1e-3) } else { tol_dx };
    for (layout, xl) in layouts(&x) {
        let want = value_and_grads(|x, w, b| eager(op, &x.to_kind(acc), w, b), &xl, &w, &b, &gy);
        // dw and db are sums over every element whose terms cancel: their error is measured
        // against the sum of the terms' magnitudes (the same gradients at |x|, |gy|, in f64).
        let abs64 = |t: &Tensor| t.to_kind(Kind::Double).abs();
        let (w64, b64) = (w.to_kind(Kind::Double), b.to_kind(Kind::Double));
        let scale = value_and_grads(|x, w, b| eager(op, x, w, b), &abs64(&xl), &w64, &b64, &gy.abs());
        let got = value_and_grads(|x, w, b| fused(op, x, w, b), &xl, &w, &b, &gy);
        assert_eq!(got[0].kind(), acc, "{label} {layout}: output type");
        assert_eq!(got[1].kind(), dtype, "{label} {layout}: dx type");
        assert_eq!(got[0].size(), shape, "{label} {layout}: output shape");
        for i in 0..4 {
            let tol = [tol_y, tol_dx, tol_coef, tol_coef][i];
            let (ours, theirs) = (got[i].to_kind(Kind::Double), want[i].to_kind(Kind::Double));
            let err = if i < 2 {
                common::rel_err(&ours, &theirs)
            } else {
                (&ours - &theirs).abs().max().double_value(&[])
                    / scale[i].abs().max().double_value(&[]).max(1e-30)
            };
            assert!(err < tol, "{label} {layout} {}: relative error {err:e} >= {tol:e}", NAMES[i]);
        }
    }
}

fn all_against_eager(isa: CpuIsa) {
    ffi::set_polycom_cpu_isa(isa).expect("isa");
    for op in [PolyCom::PolyRelu, PolyCom::PolyNorm] {
        for order in 1..=8 {
            for dtype in [Kind::Double, Kind::Float, Kind::BFloat16, Kind::Half] {
                for (name, shape) in shapes() {
                    let label = format!("{op:?} k={order} {dtype:?} {name} {isa:?}");
                    check_against_eager(op, order, dtype, &shape, &label);
                }
            }
        }
    }
}

/// Every order, dtype, shape and layout, with the CPU kernels this machine picks and with every
/// narrower build it can run (all are shipped; a machine without AVX2 runs the portable one).
#[test]
fn equals_eager_for_every_order_dtype_and_layout() {
    let _lock = common::global_lock();
    let best = ffi::polycom_cpu_isa().expect("isa");
    all_against_eager(CpuIsa::Auto);
    for narrower in [CpuIsa::Avx2, CpuIsa::Portable] {
        if (narrower as i32) < (best as i32) {
            all_against_eager(narrower);
        }
    }
    if best == CpuIsa::Portable {
        eprintln!("NOTE: this CPU has no AVX2: only the portable kernels were tested");
    }
    ffi::set_polycom_cpu_isa(CpuIsa::Auto).expect("isa");
}

/// Central differences in float64 against the closed-form backward (dx, dw, db), PolyNorm on
/// both layouts and PolyReLU away from the kink at 0.
#[test]
fn backward_matches_finite_differences() {
    tch::manual_seed(7);
    let opts = (Kind::Double, Device::Cpu);
    for op in [PolyCom::PolyNorm, PolyCom::PolyRelu] {
        for order in [1, 2, 3, 5, 8] {
            for shape in [vec![2, 3, 2, 2], vec![3, 5]] {
                let mut x = Tensor::randn(&shape[..], opts);
                if op == PolyCom::PolyRelu {
                    x = &x + x.sign() * 0.05; // keep |x| >= 0.05: no sample straddles the kink
                }
                let w = Tensor::randn([order], opts) / order as f64;
                let b = Tensor::from_slice(&[0.2f64]);
                let gy = Tensor::randn(&shape[..], opts);
                let [_, dx, dw, db] = value_and_grads(|x, w, b| fused(op, x, w, b), &x, &w, &b, &gy);
                let loss = |x: &Tensor, w: &Tensor, b: &Tensor| {
                    (fused(op, x, w, b) * &gy).sum(Kind::Double).double_value(&[])
                };
                let h = 1e-6;
                let numeric = |t: &Tensor, which: usize| -> Tensor {
                    let flat: Vec<f64> = Vec::try_from(t.flatten(0, -1)).expect("values");
                    let mut out = Vec::with_capacity(flat.len());
                    for j in 0..flat.len() {
                        let bump = |d: f64| {
                            let mut v = flat.clone();
                            v[j] += d;
                            let p = Tensor::from_slice(&v).reshape(t.size());
                            match which {
                                0 => loss(&p, &w, &b),
                                1 => loss(&x, &p, &b),
                                _ => loss(&x, &w, &p),
                            }
                        };
                        out.push((bump(h) - bump(-h)) / (2.0 * h));
                    }
                    Tensor::from_slice(&out).reshape(t.size())
                };
                for (name, analytic, num) in
                    [("dx", &dx, numeric(&x, 0)), ("dw", &dw, numeric(&w, 1)), ("db", &db, numeric(&b, 2))]
                {
                    let err = common::rel_err(analytic, &num);
                    assert!(
                        err < 1e-6,
                        "{op:?} k={order} {shape:?} {name}: relative error {err:e} vs finite differences"
                    );
                }
            }
        }
    }
}

/// f's results with libtorch's pool at 1, 2 and 3 threads (the caller holds the global lock); the
/// thread count restored after.
fn with_1_2_3_threads<T>(f: impl Fn() -> Vec<T>) -> Vec<Vec<T>> {
    let before = tch::get_num_threads();
    let runs = [1, 2, 3]
        .into_iter()
        .map(|threads| {
            tch::set_num_threads(threads);
            f()
        })
        .collect();
    tch::set_num_threads(before);
    runs
}

/// Bit-identical results for any thread count (partial sums are added in a fixed order).
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let _lock = common::global_lock();
    tch::manual_seed(3);
    let opts = (Kind::Float, Device::Cpu);
    let x = Tensor::randn([8, 64, 28, 28], opts);
    let x_cl = ffi::to_channels_last(&x).expect("channels_last");
    let w = Tensor::from_slice(&[0.5f32, 0.3, 0.2]);
    let b = Tensor::from_slice(&[0.1f32]);
    let gy = Tensor::randn([8, 64, 28, 28], opts);
    let runs = with_1_2_3_threads(|| {
        let mut r = Vec::new();
        for op in [PolyCom::PolyNorm, PolyCom::PolyRelu] {
            for xi in [&x, &x_cl] {
                r.extend(value_and_grads(|x, w, b| fused(op, x, w, b), xi, &w, &b, &gy));
            }
        }
        r
    });
    for (i, r) in runs.iter().enumerate().skip(1) {
        for (a, b) in r.iter().zip(&runs[0]) {
            assert!(a.equal(b), "run with {} threads differs from 1 thread", [1, 2, 3][i]);
        }
    }
}

/// Inf and NaN in the input come out as the eager path gives them (the stability monitors rely on
/// non-finite values propagating).
#[test]
fn non_finite_inputs_propagate() {
    let x = Tensor::from_slice(&[1.0f32, f32::NAN, -2.0, f32::INFINITY, 0.5, -1.0]).reshape([1, 3, 2, 1]);
    let w = Tensor::from_slice(&[0.5f32, 0.5]);
    let b = Tensor::from_slice(&[0.0f32]);
    for op in [PolyCom::PolyRelu, PolyCom::PolyNorm] {
        let ours = fused(op, &x, &w, &b);
        let theirs = eager(op, &x, &w, &b);
        let finite_ours: Vec<bool> = Vec::try_from(ours.isfinite().flatten(0, -1)).expect("flags");
        let finite_theirs: Vec<bool> = Vec::try_from(theirs.isfinite().flatten(0, -1)).expect("flags");
        assert_eq!(finite_ours, finite_theirs, "{op:?}: which outputs are finite");
    }
}

/// `Activation` picks the fused operator by default and the eager path on request, with the same
/// values; the clamp remedy still applies; act_fp32 = false under low precision stays eager.
#[test]
fn activation_uses_fused_or_eager_with_the_same_values() {
    tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let x = Tensor::randn([4, 16, 6, 6], (Kind::Float, Device::Cpu)) * 2.0;
    for kind in [ActKind::Polyrelu, ActKind::Polynorm] {
        for clamp in [None, Some(0.75)] {
            let mut cfg = ActConfig::new(kind, 3);
            cfg.clamp = clamp;
            let name = format!("{kind:?}{}", clamp.is_some());
            let fused_act = Activation::new(&vs.root() / format!("f{name}"), cfg);
            cfg.implementation = ActImpl::Eager;
            let eager_act = Activation::new(&vs.root() / format!("e{name}"), cfg);
            let err = common::rel_err(&fused_act.forward(&x), &eager_act.forward(&x));
            assert!(err < 1e-6, "{kind:?} clamp {clamp:?}: fused vs eager {err:e}");
            if let Some(c) = clamp {
                let big = Tensor::full([1, 16, 1, 1], 10.0, (Kind::Float, Device::Cpu));
                let at_c = Tensor::full([1, 16, 1, 1], c, (Kind::Float, Device::Cpu));
                assert!(common::rel_err(&fused_act.forward(&big), &fused_act.forward(&at_c)) == 0.0);
            }
        }
    }
    // act_fp32 = false with a bf16 input: the eager bf16 arithmetic, bit for bit (the fused
    // operator is fp32 inside, so it must not run there).
    let xb = x.to_kind(Kind::BFloat16);
    let mut cfg = ActConfig::new(ActKind::Polynorm, 3);
    cfg.fp32 = false;
    let lowp = Activation::new(&vs.root() / "lowp", cfg);
    cfg.implementation = ActImpl::Eager;
    let lowp_eager = Activation::new(&vs.root() / "lowp_eager", cfg);
    assert!(lowp.forward(&xb).equal(&lowp_eager.forward(&xb)), "act_fp32 = false runs the eager path");
    cfg.fp32 = true;
    cfg.implementation = ActImpl::Fused;
    let act = Activation::new(&vs.root() / "fp32", cfg);
    assert_eq!(act.forward(&xb).kind(), Kind::Float, "fp32 arithmetic, fp32 output");
}

/// `act_out_lowp`: the fp32 result rounded once to the bf16/fp16 input's type, on both paths, with
/// the gradients of that rounded output; fp32 and fp64 inputs are unaffected.
#[test]
fn low_precision_output_rounds_the_fp32_result_once() {
    tch::manual_seed(6);
    let vs = nn::VarStore::new(Device::Cpu);
    let x32 = Tensor::randn([4, 24, 5, 5], (Kind::Float, Device::Cpu)) * 1.5;
    let gy = Tensor::randn([4, 24, 5, 5], (Kind::Float, Device::Cpu));
    for kind in [ActKind::Polyrelu, ActKind::Polynorm] {
        let mut cfg = ActConfig::new(kind, 3);
        let fp32_out = Activation::new(&vs.root() / format!("{kind:?}fp32"), cfg);
        cfg.out_lowp = true;
        let fused_act = Activation::new(&vs.root() / format!("{kind:?}f"), cfg);
        cfg.implementation = ActImpl::Eager;
        let eager_act = Activation::new(&vs.root() / format!("{kind:?}e"), cfg);
        assert_eq!(fused_act.forward(&x32).kind(), Kind::Float, "fp32 input: fp32 output");
        for dtype in [Kind::BFloat16, Kind::Half] {
            let x = x32.to_kind(dtype);
            let wide = fp32_out.forward(&x);
            let grads = |act: &Activation| {
                let x = x.detach().set_requires_grad(true);
                let y = act.forward(&x);
                (&y * gy.to_kind(y.kind())).sum(Kind::Float).backward();
                (y.detach(), x.grad())
            };
            let (fy, fdx) = grads(&fused_act);
            let (ey, edx) = grads(&eager_act);
            assert_eq!((fy.kind(), ey.kind()), (dtype, dtype), "{kind:?} {dtype:?}: output type");
            // One rounding of (nearly) the same fp32 value: equal but for rare one-ulp ties.
            let ulp = if dtype == Kind::BFloat16 { 2f64.powi(-8) } else { 2f64.powi(-11) };
            assert!(
                common::rel_err(&fy, &wide.to_kind(dtype)) == 0.0,
                "{kind:?} {dtype:?}: rounds the fp32 result"
            );
            let err = common::rel_err(&fy, &ey);
            assert!(err <= ulp, "{kind:?} {dtype:?}: fused vs eager {err:e}");
            let err = common::rel_err(&fdx, &edx);
            assert!(err < 1e-2, "{kind:?} {dtype:?}: dx fused vs eager {err:e}");
        }
    }
}

/// One BatchNorm + activation site, computed as the ResNet computes it with `implementation`:
/// y, the running statistics after it, and the gradients of (z, gamma, beta, residual, w, b).
fn bn_site(
    implementation: ActImpl,
    kind: ActKind,
    clamp: Option<f64>,
    z: &Tensor,
    residual: Option<&Tensor>,
    train: bool,
    gy: &Tensor,
) -> Vec<(&'static str, Tensor)> {
    let vs = nn::VarStore::new(Device::Cpu);
    let c = z.size()[1];
    // Not torch's defaults (timm's --bn-momentum / --bn-eps): both paths must take them.
    let settings = resnet_train::model::batch_norm::BnSettings { momentum: 0.3, eps: 1e-3 };
    let site = resnet_train::model::batch_norm::BatchNorm::new(&vs.root() / "bn", c, false, 0, settings);
    let bn = &site.main;
    let mut cfg = ActConfig::new(kind, 3);
    cfg.implementation = implementation;
    cfg.clamp = clamp;
    let act = Activation::new(&vs.root() / "act", cfg);
    tch::no_grad(|| {
        // Values away from the defaults, the same for every call: a closed form, not libtorch's
        // global generator, which the tests running in parallel threads draw from too (a draw
        // between a seed and these made the two calls' running statistics differ).
        let fixed = |seed: f64, lo: f64, spread: f64| {
            (Tensor::arange(c, (Kind::Float, Device::Cpu)) * (seed * 0.37)).sin() * spread + lo
        };
        let set = |t: &Tensor, v: Tensor| t.shallow_clone().copy_(&v);
        set(bn.ws.as_ref().expect("affine"), fixed(1.0, 1.0, 0.5));
        set(bn.bs.as_ref().expect("affine"), fixed(2.0, 0.0, 0.3));
        set(&bn.running_mean, fixed(3.0, 0.0, 0.2));
        set(&bn.running_var, fixed(4.0, 1.0, 0.5));
    });
    let mut vs = vs;
    if z.kind() == Kind::Double {
        vs.double();
    }
    let z = z.detach().set_requires_grad(true);
    let residual = residual.map(|r| r.detach().set_requires_grad(true));
    let params = vs.variables();
    let y = if implementation == ActImpl::Fused {
        // The operator itself (Activation::forward_bn would fall back to separate operators with
        // a warning if it failed).
        let args = resnet_train::model::sync_bn::args(bn, site.settings, train);
        let op = if kind == ActKind::Polyrelu { PolyCom::PolyRelu } else { PolyCom::PolyNorm };
        let (w, b) = (&params["act.weight"], &params["act.bias"]);
        let act = ffi::PolyComArgs { op, w, b, eps: POLYNORM_EPS, lowp_out: false, clamp };
        ffi::bn_polycom(&z, &args, residual.as_ref(), &act).expect("fused operator runs")
    } else {
        act.forward_bn(&site, &z, residual.as_ref(), train, resnet_train::model::Consumer::Any)
    };
    (&y * gy.to_kind(y.kind())).sum(Kind::Float).backward();
    let grad = |name: &str| params[name].grad();
    let mut out = vec![
        ("y", y.detach()),
        ("running_mean", bn.running_mean.copy()),
        ("running_var", bn.running_var.copy()),
        ("dz", z.grad()),
        ("dgamma", grad("bn.weight")),
        ("dbeta", grad("bn.bias")),
        ("dw", grad("act.weight")),
        ("db", grad("act.bias")),
    ];
    if let Some(r) = residual {
        out.push(("dresidual", r.grad()));
    }
    out
}

/// BatchNorm (and the residual add) folded into the fused activation's autograd node
/// (`ActImpl::Fused` in the ResNet) computes what libtorch's BatchNorm followed by the fused
/// activation computes: the same running statistics to their storage's rounding, and the same
/// output and gradients (the kernels apply batch norm as they load z, or, with a residual of
/// another type, libtorch's batch norm runs and backward recomputes x; in training on the CPU
/// batch norm's backward is folded in too: its sums taken by the activation's backward kernels,
/// against libtorch's batch norm backward here), for both activations, in training and eval mode,
/// with the `act_clamp` remedy, NCHW and channels_last, with and without a residual of z's or a
/// wider type, in fp64, fp32, bf16 and fp16; at an H*W of whole vectors and not, at a small H*W
/// in a whole number of vectors per sample (16 x 3 x 3: the CPU kernels' spread per-element
/// scale), and with enough pixels (2 x 48 x 48) that the folded channels-last kernels take
/// several row blocks per work item; with the CPU kernels this machine picks and every narrower
/// build it runs.
#[test]
fn batch_norm_folded_into_the_activation_changes_no_value() {
    let _lock = common::global_lock();
    let best = ffi::polycom_cpu_isa().expect("isa");
    for isa in [CpuIsa::Auto, CpuIsa::Avx2, CpuIsa::Portable] {
        if isa != CpuIsa::Auto && (isa as i32) >= (best as i32) {
            continue;
        }
        ffi::set_polycom_cpu_isa(isa).expect("isa");
        for shape in [[3, 8, 5, 7], [2, 16, 3, 3], [2, 3, 48, 48]] {
            batch_norm_folded_changes_no_value_at(&shape, isa);
        }
    }
    ffi::set_polycom_cpu_isa(CpuIsa::Auto).expect("isa");
}

fn batch_norm_folded_changes_no_value_at(shape: &[i64], isa: CpuIsa) {
    // Normal draws from a generator of this test's own, not libtorch's global one: tests in other
    // threads of this binary re-seed and draw from that, and once such a draw put an fp32 x within
    // rounding of PolyReLU's kink (where the two paths' x round differently) and failed dz.
    let numel = shape.iter().product::<i64>() as usize;
    let normal = |seed: u64| {
        let values = ffi::seeded_randn(seed, numel).expect("draws");
        Tensor::from_slice(&values).to_kind(Kind::Float).reshape(shape)
    };
    let base = normal(12) * 1.5 + 0.2;
    let gy = normal(13);
    let identity = normal(14);
    for kind in [ActKind::Polyrelu, ActKind::Polynorm] {
        for (dtype, tol) in
            [(Kind::Double, 1e-12_f64), (Kind::Float, 1e-5), (Kind::BFloat16, 2e-2), (Kind::Half, 5e-3)]
        {
            for (layout, z) in
                layouts(&base.to_kind(dtype)).into_iter().filter(|(_, z)| z.size() == base.size())
            {
                for residual in [None, Some(identity.to_kind(dtype)), Some(identity.to_kind(Kind::Float))] {
                    for (train, clamp) in [(true, None), (false, None), (true, Some(0.75))] {
                        let label = format!(
                            "{shape:?} {kind:?} {dtype:?} {layout} residual {:?} train {train} clamp {clamp:?} \
                             {isa:?}",
                            residual.as_ref().map(|r| r.kind())
                        );
                        let folded = bn_site(ActImpl::Fused, kind, clamp, &z, residual.as_ref(), train, &gy);
                        let separate =
                            bn_site(ActImpl::FusedAct, kind, clamp, &z, residual.as_ref(), train, &gy);
                        assert_eq!(folded.len(), separate.len());
                        for ((name, a), (_, b)) in folded.iter().zip(&separate) {
                            if ["running_mean", "running_var"].contains(name) {
                                // The same statistics update (batch_norm_update_stats: batch norm's
                                // own), stored in fp32 (fp64); summed in fp32 in another order where
                                // the layouts differ (4,608 values per channel at 2 x 48 x 48).
                                let err = common::rel_err(a, b);
                                let stat_tol = if dtype == Kind::Double { 1e-14 } else { 1e-5 };
                                assert!(err < stat_tol, "{label}: {name} relative error {err:e}");
                            } else {
                                assert_eq!(a.kind(), b.kind(), "{label}: {name}'s type");
                                let err = common::rel_err(a, b);
                                // dw and db: sums over every element, terms of both signs, from x
                                // that the two paths round differently (batch norm applied on load
                                // or by libtorch): at 13,824 elements fp32 resolves them to ~1e-5.
                                // dgamma and dbeta: sums over 4,608 elements per channel, in double
                                // in the folded backward, in fp32 in libtorch's (a full run saw 1.7e-5 for
                                // dbeta on random data of the cancelling kind).
                                let sums = ["dw", "db", "dgamma", "dbeta"];
                                let tol = if dtype == Kind::Float && sums.contains(name) {
                                    tol.max(1e-4)
                                } else {
                                    tol
                                };
                                assert!(err < tol, "{label}: {name} relative error {err:e} >= {tol:e}");
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The folded batch norm backward's per-channel sums are added up in a fixed order: in NCHW the
/// whole site (y, running statistics, dz, dgamma, dbeta) is bit-identical for 1, 2 and 3 threads,
/// for both activations, fp32 and bf16 with an fp32 residual. (Not channels-last: there
/// libtorch's own batch statistics, `batch_norm_update_stats`, sum per thread, and every value
/// after them follows.)
#[test]
fn folded_batch_norm_gradients_do_not_depend_on_the_thread_count() {
    let _lock = common::global_lock();
    tch::manual_seed(5);
    let shape = [4, 24, 20, 20];
    let base = Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 1.5 + 0.2;
    let gy = Tensor::randn(shape, (Kind::Float, Device::Cpu));
    let identity = Tensor::randn(shape, (Kind::Float, Device::Cpu));
    let runs = with_1_2_3_threads(|| {
        let mut r = Vec::new();
        for kind in [ActKind::Polyrelu, ActKind::Polynorm] {
            for dtype in [Kind::Float, Kind::BFloat16] {
                let z = base.to_kind(dtype);
                for residual in [None, Some(&identity)] {
                    r.extend(bn_site(ActImpl::Fused, kind, None, &z, residual, true, &gy));
                }
            }
        }
        r
    });
    for (i, r) in runs.iter().enumerate().skip(1) {
        for ((name, a), (_, b)) in r.iter().zip(&runs[0]) {
            assert!(a.equal(b), "{name} with {} threads differs from 1 thread", [1, 2, 3][i]);
        }
    }
}

/// Applied on load, batch norm's output and the residual sum are rounded to bf16/fp16 in
/// registers (polycom_cpu.cpp `round_to`), as libtorch rounds the separate operators' stored
/// tensors: checked bit for bit with an identity batch norm (eval mode, unit statistics, gamma 1,
/// beta 0: x = round(z + identity)) and order-1 PolyReLU (y = relu(x)) against libtorch's
/// low-precision add and relu, over ties, infinities, NaN and overflow, with every CPU build
/// this machine runs. With an fp32 residual (the residual stream of fp32 outputs) the sum is
/// fp32, as type promotion makes it: x = fp32(z) + identity, not rounded to z's type.
#[test]
fn batch_norm_on_load_rounds_as_libtorch_in_bf16_and_fp16() {
    let _lock = common::global_lock();
    let best = ffi::polycom_cpu_isa().expect("isa");
    let isas: Vec<CpuIsa> = [CpuIsa::Avx512, CpuIsa::Avx2, CpuIsa::Portable]
        .into_iter()
        .filter(|isa| (*isa as i32) <= (best as i32))
        .collect();
    tch::manual_seed(21);
    let shape = [2, 5, 9, 11];
    let opts = (Kind::Float, Device::Cpu);
    for (dtype, big) in [(Kind::BFloat16, 3e38), (Kind::Half, 6e4)] {
        let z = Tensor::randn(shape, opts) * 3.0;
        let identity = Tensor::randn(shape, opts) * 3.0;
        // Special values: NaN, +-inf, and two large values whose sum overflows.
        let flat_z = z.view([-1]);
        let flat_id = identity.view([-1]);
        for (i, (a, b)) in
            [(f64::NAN, 1.0), (1.0, f64::NAN), (f64::INFINITY, 1.0), (f64::NEG_INFINITY, -2.0), (big, big)]
                .into_iter()
                .enumerate()
        {
            let _ = flat_z.get(i as i64 * 7).fill_(a);
            let _ = flat_id.get(i as i64 * 7).fill_(b);
        }
        let wide_identity = identity.shallow_clone();
        let (z, identity) = (z.to_kind(dtype), identity.to_kind(dtype));
        let c = shape[1];
        let (gamma, beta) = (Tensor::ones([c], opts), Tensor::zeros([c], opts));
        let (running_mean, running_var) = (Tensor::zeros([c], opts), Tensor::ones([c], opts));
        let (w, b) = (Tensor::ones([1], opts), Tensor::zeros([1], opts));
        for isa in &isas {
            ffi::set_polycom_cpu_isa(*isa).expect("isa");
            for ((layout, zl), identity) in
                [("nchw", z.shallow_clone()), ("channels_last", ffi::to_channels_last(&z).expect("cl"))]
                    .into_iter()
                    .flat_map(|(name, t)| {
                        [((name, t.shallow_clone()), &identity), ((name, t), &wide_identity)]
                    })
            {
                let id = if layout == "nchw" {
                    identity.shallow_clone()
                } else {
                    ffi::to_channels_last(identity).expect("cl")
                };
                let expected = (&z + identity).relu();
                let bn = ffi::BatchNormArgs {
                    gamma: Some(&gamma),
                    beta: Some(&beta),
                    running_mean: &running_mean,
                    running_var: &running_var,
                    train: false,
                    momentum: 0.1,
                    eps: 0.0,
                };
                let act = ffi::PolyComArgs {
                    op: PolyCom::PolyRelu,
                    w: &w,
                    b: &b,
                    eps: POLYNORM_EPS,
                    lowp_out: true,
                    clamp: None,
                };
                let y = ffi::bn_polycom(&zl, &bn, Some(&id), &act).expect("bn_polycom");
                let label = format!("{dtype:?} {layout} {isa:?} residual {:?}", identity.kind());
                assert_eq!(y.kind(), expected.kind(), "{label}");
                let same = y.eq_tensor(&expected).logical_or(&y.isnan().logical_and(&expected.isnan()));
                let mismatches = same.logical_not().sum(Kind::Int64).int64_value(&[]);
                assert_eq!(mismatches, 0, "{label}: {mismatches} elements differ from libtorch's rounding");
                assert!(y.reshape([-1]).get(0).isnan().int64_value(&[]) == 1, "{label}: NaN propagates");
                if identity.kind() == dtype || dtype == Kind::BFloat16 {
                    assert!(
                        y.reshape([-1]).get(28).isinf().int64_value(&[]) == 1,
                        "{label}: the overflowing sum is inf"
                    );
                }
            }
        }
    }
    ffi::set_polycom_cpu_isa(CpuIsa::Auto).expect("isa");
}

/// Bytes a ResNet-50 training step adds to the model (`bench`'s step_mem, counted by the shim's
/// CPU allocator: activations kept for backward, gradients, optimizer state), in GiB.
fn step_memory(act: &str, act_impl: &str, precision: &str, extra: &[&str]) -> f64 {
    let mut args = vec!["bench", "--arch", "resnet50", "--batch", "8", "--res", "128", "--device", "cpu"];
    args.extend([
        "--steps",
        "1",
        "--warmup",
        "0",
        "--threads",
        "2",
        "--json",
        "--act",
        act,
        "--act-impl",
        act_impl,
    ]);
    args.extend(["--precision", precision]);
    args.extend(extra);
    let out = std::process::Command::new(common::bin()).args(&args).output().expect("bench starts");
    assert!(out.status.success(), "bench {args:?} failed:\n{}", common::output_text(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.starts_with('{')).expect("a JSON line");
    let json: serde_json::Value = serde_json::from_str(line).expect("JSON");
    // The record says which CPU made it ("Cpu: MODEL (N logical CPUs; ISA)" where /proc/cpuinfo tells).
    assert!(json["device_name"].as_str().is_some_and(|d| d.starts_with("Cpu")), "{line}");
    json["step_mem_gib"].as_f64().expect("step_mem_gib")
}

/// The memory goal, on the CPU where it can be counted exactly: with BatchNorm folded
/// into the fused operator a PolyNorm site keeps what a ReLU site keeps, so a PolyNorm ResNet-50
/// step holds within 1.15x of ReLU's bytes (measured 1.05x in fp32; the activation alone, after
/// libtorch's BatchNorm, keeps its input too: 1.3x). bf16 autocast with `--act-out-lowp`, the
/// GPU configuration, likewise.
#[test]
fn folded_batch_norm_brings_polynorm_memory_to_relu() {
    for (precision, extra) in [("fp32", vec![]), ("bf16", vec!["--act-out-lowp"])] {
        let relu = step_memory("relu", "fused", precision, &[]);
        let folded = step_memory("polynorm", "fused", precision, &extra);
        let separate = step_memory("polynorm", "fused-act", precision, &extra);
        eprintln!("{precision}: step memory relu {relu} GiB, polynorm folded {folded}, separate {separate}");
        assert!(folded <= 1.15 * relu, "{precision}: PolyNorm {folded} GiB vs ReLU {relu} GiB");
        assert!(
            separate > folded * 1.1,
            "{precision}: folding BatchNorm saves memory ({separate} vs {folded})"
        );
    }
}

/// The weights and the input of the ResNet-50 gradient comparison, drawn once: the runs copy
/// them rather than re-seeding libtorch's global generator, which the tests running in parallel
/// threads draw from too (a draw in between would give two runs different weights).
struct Resnet50Case {
    init: nn::VarStore,
    x: Tensor,
}

fn resnet50_config(implementation: ActImpl) -> ResNetConfig {
    let mut act = ActConfig::new(ActKind::Polynorm, 3);
    act.implementation = implementation;
    let mut cfg = ResNetConfig::new(Arch::Resnet50, act);
    cfg.num_classes = 10;
    cfg
}

impl Resnet50Case {
    fn new() -> Self {
        let init = nn::VarStore::new(Device::Cpu);
        ResNet::new(&init.root(), resnet50_config(ActImpl::Eager)).expect("model");
        Resnet50Case { init, x: Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu)) }
    }

    /// Every parameter gradient of the PolyNorm ResNet-50 with `implementation` in `kind` (one
    /// training-mode forward and backward).
    fn grads(&self, implementation: ActImpl, kind: Kind) -> Vec<(String, Tensor)> {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let model = ResNet::new(&vs.root(), resnet50_config(implementation)).expect("model");
        vs.copy(&self.init).expect("the same parameters");
        if kind == Kind::Double {
            vs.double();
        }
        let logits = model.forward_t(&self.x.to_kind(kind), true);
        logits.cross_entropy_for_logits(&Tensor::from_slice(&[1i64, 7])).backward();
        sorted_grads(&vs).into_iter().map(|(name, g)| (name, g.to_kind(Kind::Double))).collect()
    }
}

/// Every trainable variable's gradient, sorted by name.
fn sorted_grads(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut grads: Vec<_> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(name, t)| (name, t.grad()))
        .collect();
    grads.sort_by(|a, b| a.0.cmp(&b.0));
    grads
}

/// In a whole network the fused operator computes the same gradients as the eager path: equal to
/// ~1e-11 in float64, and in fp32 no further from the float64 gradients than the eager fp32 ones.
/// (The activation coefficients' gradients are ill-conditioned: BatchNorm after each site makes
/// the loss nearly invariant to their scale, so Σ_i w_i·dL/dw_i cancels and fp32 leaves them with
/// ~1e-2 relative error on either path. Two fp32 training runs, fused and eager, therefore part
/// ways after a few steps at a high learning rate, as two eager runs with different thread counts
/// do, only sooner.)
#[test]
fn resnet50_gradients_match_the_eager_path_in_float64() {
    let case = Resnet50Case::new();
    let reference = case.grads(ActImpl::Eager, Kind::Double);
    // The relative error of each gradient with a non-negligible norm; the worst of them.
    let worst = |grads: &[(String, Tensor)]| -> (f64, String) {
        let mut worst = (0.0, String::new());
        for ((name, g), (_, r)) in grads.iter().zip(&reference) {
            let norm = r.norm().double_value(&[]);
            if norm > 1e-9 {
                let err = (g - r).norm().double_value(&[]) / norm;
                if err > worst.0 {
                    worst = (err, name.clone());
                }
            }
        }
        worst
    };
    // Fused: BatchNorm and the residual add folded into the activation's node; FusedAct: the
    // fused activation alone.
    for implementation in [ActImpl::Fused, ActImpl::FusedAct] {
        let (fused64, name) = worst(&case.grads(implementation, Kind::Double));
        assert!(fused64 < 1e-9, "float64: {implementation:?} vs eager {fused64:e} at {name}");
    }
    let (fused32, fused_name) = worst(&case.grads(ActImpl::Fused, Kind::Float));
    let (eager32, _) = worst(&case.grads(ActImpl::Eager, Kind::Float));
    assert!(
        fused32 < 2.0 * eager32 + 1e-6,
        "fp32 fused gradients {fused32:e} (at {fused_name}) vs eager fp32's {eager32:e} from float64"
    );
}

/// Under bf16/fp16 autocast with fp32 arithmetic (the default), a block's inner sites return the
/// autocast type, which is what the next convolution casts their fp32 output to: the training
/// forward (`forward_t`) gives the same logits and every gradient bit for bit as the monitored
/// forward, which keeps every site's output fp32 (the reference's type), on every path (BatchNorm
/// folded into the fused operator, the fused activation alone, eager), in both layouts.
#[test]
fn inner_sites_in_the_autocast_type_change_no_bit_of_the_step() {
    let case = Resnet50Case::new();
    let labels = Tensor::from_slice(&[1i64, 7]);
    for implementation in [ActImpl::Fused, ActImpl::FusedAct, ActImpl::Eager] {
        for dtype in [Kind::BFloat16, Kind::Half] {
            for channels_last in [false, true] {
                let run = |observed: bool| {
                    let vs = nn::VarStore::new(Device::Cpu);
                    let model = ResNet::new(&vs.root(), resnet50_config(implementation)).expect("model");
                    let mut vs = vs;
                    vs.copy(&case.init).expect("the same parameters");
                    let mut x = case.x.shallow_clone();
                    if channels_last {
                        resnet_train::model::to_channels_last(&vs).expect("channels_last");
                        x = ffi::to_channels_last(&x).expect("channels_last");
                    }
                    let mut site_types = Vec::new();
                    let logits = {
                        let _autocast = ffi::AutocastGuard::new(Device::Cpu, dtype).expect("autocast");
                        if observed {
                            model.forward_observed(&x, true, &mut |_, t| site_types.push(t.kind()))
                        } else {
                            model.forward_t(&x, true)
                        }
                    };
                    if observed {
                        assert!(site_types.iter().all(|&k| k == Kind::Float), "monitors see fp32 outputs");
                        assert_eq!(site_types.len(), 49, "every site observed");
                    }
                    logits.to_kind(Kind::Float).cross_entropy_for_logits(&labels).backward();
                    (logits.detach(), sorted_grads(&vs))
                };
                let case_name = format!("{implementation:?} {dtype:?} channels_last={channels_last}");
                let (logits, grads) = run(false);
                let (ref_logits, ref_grads) = run(true);
                assert!(logits.equal(&ref_logits), "{case_name}: logits");
                assert!(bool::try_from(logits.isfinite().all()).unwrap(), "{case_name}: finite");
                for ((name, g), (_, r)) in grads.iter().zip(&ref_grads) {
                    assert!(g.equal(r), "{case_name}: gradient of {name}");
                }
            }
        }
    }
}

/// A site whose output only a convolution reads returns the autocast type: the fp32 result
/// rounded once (what the convolution's cast gives), with the same input gradient.
#[test]
fn a_site_read_by_a_convolution_returns_what_the_convolution_would_cast() {
    use resnet_train::model::Consumer;
    tch::manual_seed(11);
    let vs = nn::VarStore::new(Device::Cpu);
    let x32 = Tensor::randn([2, 16, 3, 5], (Kind::Float, Device::Cpu)) * 1.5;
    let gy = Tensor::randn([2, 16, 3, 5], (Kind::Float, Device::Cpu));
    for kind in [ActKind::Polyrelu, ActKind::Polynorm] {
        for implementation in [ActImpl::Fused, ActImpl::Eager] {
            let mut cfg = ActConfig::new(kind, 3);
            cfg.implementation = implementation;
            let act = Activation::new(&vs.root() / format!("{kind:?}{implementation:?}"), cfg);
            for dtype in [Kind::BFloat16, Kind::Half] {
                let run = |consumer: Consumer| {
                    let x = x32.to_kind(dtype).set_requires_grad(true);
                    let y = act.forward_to(&x, consumer);
                    let kind = y.kind();
                    // The convolution's input: the autocast type either way.
                    let y = y.to_kind(dtype);
                    (&y * gy.to_kind(dtype)).sum(Kind::Float).backward();
                    (kind, y.detach(), x.grad())
                };
                let (kind_conv, y_conv, dx_conv) = run(Consumer::Convolution);
                let (kind_any, y_any, dx_any) = run(Consumer::Any);
                let name = format!("{kind:?} {implementation:?} {dtype:?}");
                assert_eq!((kind_conv, kind_any), (dtype, Kind::Float), "{name}: output types");
                assert!(y_conv.equal(&y_any), "{name}: values");
                assert!(dx_conv.equal(&dx_any), "{name}: input gradient");
            }
            assert_eq!(act.forward_to(&x32, Consumer::Convolution).kind(), Kind::Float, "fp32 input");
        }
    }
}

/// polycom.cu's entry points: 14 kernels (forward and backward; rows, cols, elementwise; scalar
/// and _vec; PolyNorm's and PolyReLU's rows backward with batch norm's sums folded in) x 8 type
/// tags, batch norm's backward from those sums (scalar and _vec) x 6 (z's type, and bf16/fp16 z
/// with an fp32 dx), and the sums' finalisation x 2 (fp32, fp64).
const KERNELS: usize = 14 * 8 + 2 * 6 + 2;

/// The CUDA kernels' source compiles with NVRTC for the GPUs the project targets, with no GPU
/// (the nvidia-cuda-nvrtc wheel that scripts/bootstrap.sh installs), so that a syntax or type
/// error in src/ffi/polycom.cu cannot land unnoticed. Numerical checks run when a GPU is lent.
/// And ptxas's report for sm_90 (H100/H200): the PolyNorm kernels of bf16/fp16 training spill no
/// register (a spill is a memory round trip inside a memory-bound loop), and no kernel spills
/// more than 64 bytes (today at most 44: fp16 PolyReLU's forward, at ptxas's 32-register target).
#[test]
fn cuda_kernels_compile_with_nvrtc_and_the_training_kernels_do_not_spill() {
    let Some(nvrtc) =
        common::nvrtc_or_skip("cuda_kernels_compile_with_nvrtc_and_the_training_kernels_do_not_spill")
    else {
        return;
    };
    for arch in ["compute_80", "sm_80"] {
        let log = ffi::polycom_cuda_compile_check(arch, Some(&nvrtc)).expect("the check runs");
        assert!(log.is_none(), "polycom.cu does not compile for {arch}:\n{}", log.unwrap_or_default());
    }
    let report = ffi::polycom_cuda_ptxas_report("sm_90", Some(&nvrtc), "")
        .expect("the check runs")
        .unwrap_or_else(|log| panic!("polycom.cu does not compile for sm_90:\n{log}"));
    // "Compiling entry function 'NAME' for 'sm_90'" ... "N bytes spill stores" ... "Used R registers"
    let number_before = |text: &str, what: &str| -> Option<u64> {
        let end = text.find(what)?;
        text[..end].trim_end().rsplit(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    let kernels: Vec<(String, u64, u64)> = report
        .split("Compiling entry function '")
        .skip(1)
        .map(|k| {
            let name = k.split('\'').next().unwrap_or("").to_string();
            let spilled = number_before(k, "bytes spill stores").unwrap_or_else(|| panic!("{name}: {k}"));
            let registers = number_before(k, "registers").unwrap_or_else(|| panic!("{name}: {k}"));
            (name, spilled, registers)
        })
        .collect();
    assert_eq!(kernels.len(), KERNELS, "{report}");
    for (name, spilled, registers) in &kernels {
        eprintln!("{name:32} {registers:4} registers {spilled:4} bytes spilled");
        let training =
            name.starts_with("polynorm") && ["bf16", "f16"].iter().any(|t| name.contains(&format!("_{t}")));
        assert!(!training || *spilled == 0, "{name} spills {spilled} bytes at {registers} registers");
        assert!(*spilled <= 64, "{name} spills {spilled} bytes at {registers} registers");
    }
}

/// What the CUDA kernels compile to (PTX for sm_90, no GPU needed): no kernel spills to local
/// memory (an array indexed at run time lands there and costs a memory round trip per access),
/// and every `_vec` kernel moves its tensors in 16-byte loads and stores - the point of those
/// kernels, which NVRTC silently drops for some struct copies of bf16/fp16 values.
#[test]
fn cuda_kernels_compile_to_wide_accesses_without_local_memory() {
    let Some(nvrtc) = common::nvrtc_or_skip("cuda_kernels_compile_to_wide_accesses_without_local_memory")
    else {
        return;
    };
    let ptx = ffi::polycom_cuda_ptx("compute_90", Some(&nvrtc), "")
        .expect("NVRTC runs")
        .expect("polycom.cu compiles");
    let entries: Vec<(&str, &str)> =
        ptx.split(".entry ").skip(1).map(|e| (e.split('(').next().unwrap_or(""), e)).collect();
    assert_eq!(entries.len(), KERNELS, "{:?}", entries.iter().map(|e| e.0).collect::<Vec<_>>());
    // The GPU path launches kernels by name, the names the SIMT emulator's build of the same source
    // accepts (check-act --simulate-cuda runs every path under it): the image holds every one.
    let mut in_image: Vec<&str> = entries.iter().map(|e| e.0).collect();
    in_image.sort_unstable();
    assert_eq!(in_image, ffi::polycom_cuda_kernel_names().expect("the names"));
    for (name, body) in &entries {
        assert!(!body.contains(".local"), "{name} uses local memory");
        assert!(!body.contains(".minnctapersm"), "{name}: no register budget unless tuned");
        if name.contains("_vec_") {
            // 16 bytes: four 32-bit or two 64-bit elements.
            let wide = [
                "ld.global.v4.",
                "ld.global.nc.v4.",
                "ld.global.v2.f64",
                "ld.global.nc.v2.f64",
                "ld.global.v2.u64",
            ];
            assert!(wide.iter().any(|w| body.contains(w)), "{name}: no 16-byte loads");
            assert!(body.contains("st.v4.b32"), "{name}: no 16-byte stores");
        }
    }
}

/// `RESNET_TRAIN_CUDA_TUNING` (what a GPU session varies without a rebuild) reaches the compiled
/// kernels - min_blocks as `__launch_bounds__`' minimum blocks per SM, in every kernel's PTX - and
/// a wrong value is a clear error, before any work when it comes from the environment.
#[test]
fn cuda_kernel_tuning_reaches_the_kernels_and_a_wrong_value_is_an_error() {
    for bad in
        ["min_blocks=9", "min_blocks=four", "blocks_per_sm=0", "registers=64", "min_blocks", "bn_fold=2"]
    {
        let msg = ffi::check_cuda_tuning(bad).unwrap_err().to_string();
        assert!(msg.contains("RESNET_TRAIN_CUDA_TUNING") && msg.contains(bad), "{bad}: {msg}");
    }
    ffi::check_cuda_tuning("min_blocks=4,blocks_per_sm=16,bn_fold=0").expect("a valid tuning");
    ffi::check_cuda_tuning("").expect("no tuning");
    let out = std::process::Command::new(common::bin())
        .args(["check-act", "--device", "cpu"])
        .env("RESNET_TRAIN_CUDA_TUNING", "min_blocks=99")
        .output()
        .unwrap();
    let msg = common::output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{msg}");
    assert!(msg.contains("RESNET_TRAIN_CUDA_TUNING: \"min_blocks=99\""), "{msg}");
    let Some(nvrtc) = common::nvrtc_or_skip("cuda_kernel_tuning_reaches_the_kernels (PTX part)") else {
        return;
    };
    let ptx = ffi::polycom_cuda_ptx("compute_90", Some(&nvrtc), "min_blocks=4")
        .expect("NVRTC runs")
        .expect("polycom.cu compiles");
    let entries: Vec<&str> = ptx.split(".entry ").skip(1).collect();
    assert_eq!(entries.len(), KERNELS);
    assert!(entries.iter().all(|e| e.contains(".minnctapersm 4")), "min_blocks reaches every kernel");
    let log =
        ffi::polycom_cuda_ptx("compute_90", Some(&nvrtc), "blocks_per_sm=x").expect("runs").unwrap_err();
    assert!(log.contains("blocks_per_sm=x"), "{log}");
}

/// The compiled kernels are kept in the cache folder between processes (every rank and every run
/// would otherwise spend NVRTC's seconds again): a second compile is a read of the stored image,
/// and a damaged file (one flipped byte) is detected by its checksum and compiled again, never
/// loaded; the folder keeps the 8 newest images. PTX here (no GPU needed, and the same path as a
/// GPU's cubin).
#[test]
fn compiled_cuda_kernels_are_cached_and_a_damaged_file_is_compiled_again() {
    let Some(nvrtc) =
        common::nvrtc_or_skip("compiled_cuda_kernels_are_cached_and_a_damaged_file_is_compiled_again")
    else {
        return;
    };
    let dir = common::tmpdir();
    // Images of earlier versions, written a day ago and before: the folder keeps the newest 8.
    let day = std::time::Duration::from_secs(86_400);
    let stale: Vec<std::path::PathBuf> =
        (0..9).map(|i| dir.path().join(format!("polycom-sm_90-{i:016x}.bin"))).collect();
    for (i, path) in stale.iter().enumerate() {
        let file = std::fs::File::create(path).unwrap();
        file.set_modified(std::time::SystemTime::now() - day * (i as u32 + 1)).unwrap();
    }
    let compile = || {
        ffi::polycom_cuda_cached_compile("compute_90", Some(&nvrtc), dir.path(), "")
            .expect("NVRTC runs")
            .expect("polycom.cu compiles")
    };
    let (cached, size) = compile();
    assert!(!cached && size > 100_000, "first compile: {cached} {size}");
    // The new image and the 7 newest stale ones stay; the 2 oldest are gone.
    assert!(stale[..7].iter().all(|p| p.exists()) && !stale[7].exists() && !stale[8].exists());
    for path in &stale[..7] {
        std::fs::remove_file(path).unwrap();
    }
    let files: Vec<std::path::PathBuf> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("polycom-compute_90-") && name.ends_with(".bin"), "{name}");
    assert_eq!(compile(), (true, size), "the stored image is used");
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&files[0], &bytes).unwrap();
    assert_eq!(compile(), (false, size), "a damaged file is compiled again");
    assert_eq!(compile(), (true, size), "and stored again");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
}

/// The SIMT emulator that runs the CUDA kernels' source on the CPU (`check-act --simulate-cuda`,
/// tests/cli.rs): a correct kernel computes the closed form through warp shuffles and
/// `__syncthreads`; lanes that exit before a full-warp shuffle, or threads waiting at different
/// `__syncthreads` calls - bugs a GPU runs through silently - are errors that say so.
#[test]
fn simt_emulator_reports_misused_shuffles() {
    let (blocks, threads) = (3u32, 256u32);
    let sums =
        ffi::simt_selftest(ffi::SimtSelftest::Correct, blocks, threads).expect("a correct kernel runs");
    for (block, sum) in sums.iter().enumerate() {
        let first = block as f64 * threads as f64;
        let closed_form = threads as f64 * (2.0 * first + threads as f64 - 1.0) / 2.0;
        assert_eq!(*sum, closed_form, "block {block}");
    }
    // Emulators on several OS threads at once (parallel tests) keep their own shared memory.
    let closed_forms = |blocks: u32| -> Vec<f64> {
        (0..blocks)
            .map(|b| threads as f64 * (2.0 * (b * threads) as f64 + threads as f64 - 1.0) / 2.0)
            .collect()
    };
    let runs: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || ffi::simt_selftest(ffi::SimtSelftest::Correct, 200, threads)))
        .collect();
    for run in runs {
        assert_eq!(run.join().expect("thread").expect("runs"), closed_forms(200));
    }
    let err = ffi::simt_selftest(ffi::SimtSelftest::LanesExitBeforeShuffle, 2, 64).unwrap_err().to_string();
    assert!(err.contains("block 0, warp 0: 16 lanes at a full-warp shuffle while 16 have exited"), "{err}");
    let err = ffi::simt_selftest(ffi::SimtSelftest::DivergentBarrier, 1, 64).unwrap_err().to_string();
    assert!(err.contains("divergent __syncthreads (32 threads wait at one call, 32 at another)"), "{err}");
}

/// The simulated kernels convert fp16 as the GPU's cvt instructions do, checked against
/// libtorch's own conversions: all 65,536 fp16 values to fp32 and back (NaNs stay NaN), and
/// fp32 values - random, subnormal in fp16, beyond fp16's range, and the exact midpoints between
/// neighbouring fp16 values - rounded to nearest even, to the bit.
#[test]
fn simulated_fp16_conversions_match_libtorch() {
    let all_bits: Vec<i16> = (0..=u16::MAX).map(|b| b as i16).collect();
    let as_float: Vec<f32> =
        Vec::try_from(Tensor::from_slice(&all_bits).view_dtype(Kind::Half).to_kind(Kind::Float))
            .expect("fp32 values");
    let (bits, back) = ffi::simt_half_conversions(&as_float).expect("conversions run");
    for (i, f) in as_float.iter().enumerate() {
        if f.is_nan() {
            assert!(back[i].is_nan() && bits[i] & 0x7c00 == 0x7c00 && bits[i] & 0x3ff != 0, "NaN {i:#06x}");
        } else {
            assert_eq!((bits[i], back[i].to_bits()), (i as u16, f.to_bits()), "fp16 {i:#06x}");
        }
    }
    // Midpoints between neighbouring finite fp16 values (exact in fp32), ties to even.
    let mut values: Vec<f32> = (0..0x7bffu16)
        .map(|b| (as_float[b as usize] as f64 + as_float[b as usize + 1] as f64) as f32 / 2.0)
        .flat_map(|m| [m, -m])
        .collect();
    // Random magnitudes from a local generator (libtorch's global one is shared with the tests
    // running in parallel).
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for scale in [1e-8f64, 1e-6, 1e-4, 1.0, 300.0, 6e4, 7e4, 1e6] {
        for _ in 0..4096 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let unit = (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
            values.push((unit * scale) as f32);
        }
    }
    values.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        65504.0,
        65519.99,
        65520.0,
        f32::MIN_POSITIVE,
    ]);
    let want: Vec<i16> =
        Vec::try_from(Tensor::from_slice(&values).to_kind(Kind::Half).view_dtype(Kind::Int16))
            .expect("fp16 bits");
    let (bits, _) = ffi::simt_half_conversions(&values).expect("conversions run");
    for (i, v) in values.iter().enumerate() {
        assert_eq!(bits[i], want[i] as u16, "fp32 {v:e} ({:#010x})", v.to_bits());
    }
}
