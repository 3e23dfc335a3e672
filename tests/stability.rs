//! Stability monitors: per-site statistics against a direct computation, and the mechanism the
//! stability work is about: at the paper's init PolyReLU (k >= 2) raises the residual stream to
//! the k-th power block after block, so a ResNet-50 forward pass leaves the fp16 range in layer1
//! and explodes past 1e20 (or to inf/NaN) within layer1-3 even in fp32 — after which libtorch's
//! batch norm turns the stream into zeros or NaN — while PolyNorm stays bounded and relu-like
//! PolyReLU starts finite.

mod common;

use resnet_train::model::{ActConfig, ActInit, ActKind, Arch, ResNet, ResNetConfig};
use resnet_train::train::stability::{first_beyond, first_nonfinite, forward_monitored, FP16_MAX};
use tch::{nn, Device, Kind, Tensor};

fn model(kind: ActKind, order: i64, init: ActInit, arch: Arch) -> (nn::VarStore, ResNet) {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut cfg = ResNetConfig::new(arch, ActConfig::new(kind, order));
    cfg.act.init = init;
    let m = resnet_train::model::seeded(0, || ResNet::new(&vs.root(), cfg)).unwrap();
    (vs, m)
}

fn input(n: i64, px: i64) -> Tensor {
    resnet_train::model::seeded(1, || Tensor::randn([n, 3, px, px], (Kind::Float, Device::Cpu)))
}

#[test]
fn monitors_agree_with_a_direct_computation() {
    let (_vs, m) = model(ActKind::Polynorm, 3, ActInit::Paper, Arch::Resnet18);
    let x = input(2, 64);
    let (logits, stats) = tch::no_grad(|| forward_monitored(&m, &x, true)).unwrap();
    let mut direct = Vec::new();
    let again = tch::no_grad(|| {
        m.forward_observed(&x, true, &mut |site, t| direct.push((site.to_string(), t.copy())))
    });
    assert_eq!(stats.len(), 17);
    assert!(logits.allclose(&again, 1e-5, 1e-5, false));
    for (s, (site, t)) in stats.iter().zip(&direct) {
        assert_eq!(&s.site, site);
        assert_eq!(s.nonfinite, 0);
        let want = t.abs().max().double_value(&[]);
        assert!((s.max_abs - want).abs() <= 1e-6 * want.max(1.0), "{site}: {} vs {want}", s.max_abs);
    }
    // Non-finite values are counted, and max |x| is taken over the finite ones.
    let (_vs, m) = model(ActKind::Polyrelu, 8, ActInit::Paper, Arch::Resnet18);
    let big = input(1, 64) * 1e6;
    let (_, stats) = tch::no_grad(|| forward_monitored(&m, &big, true)).unwrap();
    let first = first_nonfinite(&stats).expect("order 8 on a 1e6-scaled input overflows");
    assert!(first.nonfinite > 0 && first.max_abs.is_finite());
}

#[test]
fn polyrelu_overflows_within_layer1_to_3_at_paper_init_polynorm_stays_bounded() {
    // As measured with the PyTorch reference: ResNet-50, batch 8, 128 px, train mode, fp32
    // (k = 2: ~1e2 after layer1.0, ~1e7 after layer1.2; here 98 and 3.3e7).
    let x = input(8, 128);
    for order in [2, 3] {
        let (_vs, m) = model(ActKind::Polyrelu, order, ActInit::Paper, Arch::Resnet50);
        let (_, stats) = tch::no_grad(|| forward_monitored(&m, &x, true)).unwrap();
        let in_layers_1_to_3 =
            |site: &str| ["layer1.", "layer2.", "layer3."].iter().any(|p| site.starts_with(p));
        let fp16 = first_beyond(&stats, FP16_MAX)
            .unwrap_or_else(|| panic!("PolyReLU k={order} stayed in fp16 range"));
        assert!(fp16.site.starts_with("layer1."), "k={order}: leaves the fp16 range at {}", fp16.site);
        let blown =
            first_beyond(&stats, 1e20).unwrap_or_else(|| panic!("PolyReLU k={order} stayed below 1e20"));
        assert!(in_layers_1_to_3(&blown.site), "k={order}: explodes at {}", blown.site);
        // After the explosion the stream is dead: zeros or non-finite at the last site.
        let last = stats.last().unwrap();
        assert!(last.max_abs == 0.0 || last.nonfinite > 0, "k={order}: {last:?}");
        eprintln!(
            "PolyReLU k={order}: beyond fp16 at {}, beyond 1e20 at {} ({:.2e})",
            fp16.site, blown.site, blown.max_abs
        );

        let (_vs, m) = model(ActKind::Polynorm, order, ActInit::Paper, Arch::Resnet50);
        let (_, stats) = tch::no_grad(|| forward_monitored(&m, &x, true)).unwrap();
        let worst = stats.iter().map(|s| s.max_abs).fold(0.0, f64::max);
        assert!(first_nonfinite(&stats).is_none() && worst < 100.0, "PolyNorm k={order}: max |x| {worst}");
        eprintln!("PolyNorm k={order}: max |activation| {worst:.1}");

        let (_vs, m) = model(ActKind::Polyrelu, order, ActInit::ReluLike, Arch::Resnet50);
        let (_, stats) = tch::no_grad(|| forward_monitored(&m, &x, true)).unwrap();
        assert!(first_nonfinite(&stats).is_none(), "relu-like PolyReLU k={order} starts finite");
    }
}
