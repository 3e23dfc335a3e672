//! The activations against the PyTorch reference's golden values (tests/golden/activations.safetensors,
//! from `polycom.py golden`): forward and backward w.r.t. x, w and b, in f64 and f32.

mod common;

use resnet_train::model::activation::{polynorm, polyrelu};
use resnet_train::model::{ActConfig, ActInit, ActKind, Activation, NormAxis};
use tch::{nn, Kind, Tensor};

fn check_case(kind: ActKind, order: i64, axis: NormAxis, precision: Kind, tol: f64) {
    let g = common::golden("activations.safetensors");
    let key = format!(
        "{}.o{order}.{}",
        if kind == ActKind::Polyrelu { "polyrelu" } else { "polynorm" },
        match axis {
            NormAxis::Channel => "channel",
            NormAxis::Layer => "layer",
        }
    );
    let t = |s: &str| g[&format!("{key}.{s}")].to_kind(precision);
    let x = t("x").set_requires_grad(true);
    let w = t("w").set_requires_grad(true);
    let b = t("b").set_requires_grad(true);
    let y = match kind {
        ActKind::Polyrelu => polyrelu(&x, &w, &b),
        _ => polynorm(&x, &w, &b, axis),
    };
    (&y * t("gy")).sum(precision).backward(); // the vector-Jacobian product with gy
    for (name, ours, theirs) in [
        ("y", y.detach(), t("y")),
        ("gx", x.grad(), t("gx")),
        ("gw", w.grad(), t("gw")),
        ("gb", b.grad(), t("gb")),
    ] {
        assert_eq!(ours.size(), theirs.size(), "{key}.{name} shape");
        let err = common::rel_err(&ours, &theirs);
        assert!(err < tol, "{key}.{name} ({precision:?}): relative error {err:e} >= {tol:e}");
    }
}

fn all_cases(precision: Kind, tol: f64) {
    for order in 1..=4 {
        check_case(ActKind::Polyrelu, order, NormAxis::Channel, precision, tol);
        check_case(ActKind::Polynorm, order, NormAxis::Channel, precision, tol);
        check_case(ActKind::Polynorm, order, NormAxis::Layer, precision, tol);
    }
}

#[test]
fn forward_and_backward_match_reference_in_f64() {
    all_cases(Kind::Double, 1e-12);
}

#[test]
fn forward_and_backward_match_reference_in_f32() {
    all_cases(Kind::Float, 2e-5);
}

#[test]
fn init_is_paper_or_relu_like() {
    let vs = nn::VarStore::new(tch::Device::Cpu);
    for order in 1..=8 {
        let paper =
            Activation::new(&vs.root() / format!("p{order}"), ActConfig::new(ActKind::Polynorm, order));
        let _ = paper;
        let mut cfg = ActConfig::new(ActKind::Polyrelu, order);
        cfg.init = ActInit::ReluLike;
        let _relu_like = Activation::new(&vs.root() / format!("r{order}"), cfg);
    }
    let vars = vs.variables();
    for order in 1..=8i64 {
        let w: Vec<f32> = Vec::try_from(&vars[&format!("p{order}.weight")]).unwrap();
        assert_eq!(w, vec![1.0 / order as f32; order as usize]);
        let w: Vec<f32> = Vec::try_from(&vars[&format!("r{order}.weight")]).unwrap();
        let mut want = vec![0.0f32; order as usize];
        want[0] = 1.0;
        assert_eq!(w, want);
        for p in ["p", "r"] {
            assert_eq!(Vec::<f32>::try_from(&vars[&format!("{p}{order}.bias")]).unwrap(), vec![0.0]);
        }
    }
}

#[test]
fn relu_like_polyrelu_is_relu_and_relu_has_no_params() {
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let mut cfg = ActConfig::new(ActKind::Polyrelu, 4);
    cfg.init = ActInit::ReluLike;
    let act = Activation::new(&vs.root() / "a", cfg);
    let relu = Activation::new(&vs.root() / "r", ActConfig::new(ActKind::Relu, 3));
    let x = Tensor::randn([4, 8, 5, 5], (Kind::Float, tch::Device::Cpu));
    assert!(common::rel_err(&act.forward(&x), &x.relu()) < 1e-7);
    assert!(common::rel_err(&relu.forward(&x), &x.relu()) == 0.0);
    assert_eq!(vs.variables().len(), 2, "relu owns no parameters");
}

#[test]
fn polynorm_2d_input_normalises_over_dim_1_for_both_axes() {
    let x = Tensor::randn([3, 7], (Kind::Double, tch::Device::Cpu));
    let w = Tensor::from_slice(&[1.0f64]);
    let b = Tensor::from_slice(&[0.0f64]);
    let closed = &x * (x.square().mean_dim(1, true, None) + 1e-6).rsqrt();
    for axis in [NormAxis::Channel, NormAxis::Layer] {
        assert!(common::rel_err(&polynorm(&x, &w, &b, axis), &closed) < 1e-14);
    }
}

#[test]
fn order_out_of_range_is_an_error() {
    for order in [0, 9, -1] {
        let err = ActConfig::new(ActKind::Polynorm, order).validate().unwrap_err().to_string();
        assert!(err.contains("--order") && err.contains("1..=8"), "{err}");
    }
}
