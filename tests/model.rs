//! The ResNet family against torchvision and the reference PolyResNet: parameter counts, key names
//! and shapes, and logits for the same (deterministically derived) weights and input.

mod common;

use resnet_train::model::resnet::{count_params, param_group};
use resnet_train::model::{ActConfig, ActInit, ActKind, Arch, ParamGroup, ResNet, ResNetConfig};
use std::collections::BTreeMap;
use tch::{nn, Device, Kind, Tensor};

fn cfg(arch: Arch, kind: ActKind) -> ResNetConfig {
    ResNetConfig::new(arch, ActConfig::new(kind, 3))
}

fn build(cfg: ResNetConfig) -> (nn::VarStore, ResNet) {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = ResNet::new(&vs.root(), cfg).expect("valid config");
    (vs, m)
}

#[test]
fn parameter_counts_match_torchvision() {
    // torchvision.models.resnetXX() parameter counts.
    let expected = [
        (Arch::Resnet18, 11_689_512, 17),
        (Arch::Resnet34, 21_797_672, 33),
        (Arch::Resnet50, 25_557_032, 49),
        (Arch::Resnet101, 44_549_160, 100),
        (Arch::Resnet152, 60_192_808, 151),
    ];
    for (arch, n, sites) in expected {
        let (vs, _) = build(cfg(arch, ActKind::Relu));
        assert_eq!(count_params(&vs), n, "{arch:?} relu");
        for kind in [ActKind::Polyrelu, ActKind::Polynorm] {
            let c = cfg(arch, kind);
            assert_eq!(c.activation_sites().len(), sites, "{arch:?} sites");
            if arch == Arch::Resnet50 || arch == Arch::Resnet18 {
                let (vs, _) = build(c);
                assert_eq!(count_params(&vs), n + sites as i64 * 4, "{arch:?} {kind:?}: 4 scalars per site");
            }
        }
    }
    let (vs, _) = build(cfg(Arch::Resnet50, ActKind::Polynorm));
    assert_eq!(count_params(&vs), 25_557_032 + 196);
}

fn reference_keys() -> BTreeMap<String, BTreeMap<String, Vec<i64>>> {
    let text = std::fs::read_to_string(common::repo().join("tests/golden/state_dict_keys.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn our_keys(vs: &nn::VarStore) -> BTreeMap<String, Vec<i64>> {
    vs.variables().into_iter().map(|(k, v)| (k, v.size())).collect()
}

#[test]
fn keys_and_shapes_match_torchvision_and_reference() {
    let refs = reference_keys();
    let (vs, _) = build(cfg(Arch::Resnet50, ActKind::Relu));
    assert_eq!(our_keys(&vs), refs["resnet50.torchvision"], "relu ResNet-50 vs torchvision state_dict");
    assert_eq!(our_keys(&vs), refs["resnet50.relu"]);
    for (tag, arch, kind) in [
        ("resnet50.polyrelu", Arch::Resnet50, ActKind::Polyrelu),
        ("resnet50.polynorm", Arch::Resnet50, ActKind::Polynorm),
        ("resnet18.polynorm", Arch::Resnet18, ActKind::Polynorm),
    ] {
        let (vs, _) = build(cfg(arch, kind));
        assert_eq!(our_keys(&vs), refs[tag], "{tag}");
    }
}

#[test]
fn logits_match_reference_for_the_same_weights() {
    let g = common::golden("model_logits.safetensors");
    let input = common::det_input();
    assert_eq!(
        common::rel_err(&input, &g["input"]),
        0.0,
        "the deterministic formula differs from make_golden.py"
    );
    for (tag, arch, kind, init) in [
        ("resnet50.relu", Arch::Resnet50, ActKind::Relu, ActInit::Paper),
        ("resnet50.polyrelu", Arch::Resnet50, ActKind::Polyrelu, ActInit::ReluLike),
        ("resnet50.polynorm", Arch::Resnet50, ActKind::Polynorm, ActInit::Paper),
        ("resnet18.polynorm", Arch::Resnet18, ActKind::Polynorm, ActInit::Paper),
    ] {
        let mut c = cfg(arch, kind);
        c.act.init = init;
        let (mut vs, model) = build(c);
        common::fill_deterministic(&vs, &c);
        let logits = tch::no_grad(|| model.forward_t(&input, false));
        let err = common::rel_err(&logits, &g[&format!("{tag}.eval")]);
        assert!(err < 1e-4, "{tag} eval: relative error {err:e}");
        // Train mode (BatchNorm on batch statistics) in float64: in float32 these logits move by
        // ~1e-2 between float32 and float64, and between CPUs (measured: PyTorch itself on an AVX2
        // EPYC differs from the golden by 9e-3), so only float64 makes a portable golden.
        vs.double();
        let logits = tch::no_grad(|| model.forward_t(&input.to_kind(tch::Kind::Double), true));
        assert_eq!(logits.kind(), tch::Kind::Double);
        let err = common::rel_err(&logits, &g[&format!("{tag}.train_f64")]);
        assert!(err < 1e-8, "{tag} train (float64): relative error {err:e}");
    }
}

/// FFCV's BlurPool (tests/golden/make_golden.py restates its BlurPoolConv2d and wrapping rule) on
/// torchvision's own ResNets and the reference PolyResNet: the same logits for the same weights.
#[test]
fn blurpool_matches_ffcv_on_torchvision_and_the_reference() {
    let g = common::golden("blurpool_logits.safetensors");
    let input = common::det_input();
    for (tag, arch, kind) in [
        ("resnet50.relu", Arch::Resnet50, ActKind::Relu),
        ("resnet18.relu", Arch::Resnet18, ActKind::Relu),
        ("resnet50.polynorm", Arch::Resnet50, ActKind::Polynorm),
    ] {
        let mut c = cfg(arch, kind);
        c.blurpool = true;
        let (mut vs, model) = build(c);
        common::fill_deterministic(&vs, &c);
        // The filter is a constant: the weights are torchvision's, key for key.
        assert_eq!(our_keys(&vs), our_keys(&build(cfg(arch, kind)).0), "{tag}");
        assert_eq!(g[&format!("{tag}.wrapped")].int64_value(&[0]), 6, "FFCV wraps 6 convolutions");
        let logits = tch::no_grad(|| model.forward_t(&input, false));
        let err = common::rel_err(&logits, &g[&format!("{tag}.eval")]);
        assert!(err < 1e-4, "{tag} eval: relative error {err:e}");
        let plain = {
            let (vs, m) = build(cfg(arch, kind));
            common::fill_deterministic(&vs, &cfg(arch, kind));
            tch::no_grad(|| m.forward_t(&input, false))
        };
        assert!(
            common::rel_err(&plain, &g[&format!("{tag}.eval")]) > 1e-2,
            "{tag}: the blur changes the logits"
        );
        vs.double();
        let logits = tch::no_grad(|| model.forward_t(&input.to_kind(Kind::Double), true));
        let err = common::rel_err(&logits, &g[&format!("{tag}.train_f64")]);
        assert!(err < 1e-8, "{tag} train (float64): relative error {err:e}");
    }
    // The forward cost counts the 6 depthwise blurs at their inputs' sizes (ResNet-50, 224 px):
    // layer2's 128- and 256-channel inputs at 56 px, layer3's 256/512 at 28, layer4's 512/1024 at 14.
    let mut c = cfg(Arch::Resnet50, ActKind::Relu);
    let plain = c.forward_cost(224).macs;
    c.blurpool = true;
    let blur = 9.0 * (56.0 * 56.0 * 384.0 + 28.0 * 28.0 * 768.0 + 14.0 * 14.0 * 1536.0);
    assert_eq!(c.forward_cost(224).macs - plain, blur);
}

#[test]
fn observer_sees_every_site_in_order() {
    let c = cfg(Arch::Resnet18, ActKind::Polynorm);
    let (_vs, model) = build(c);
    let mut seen = Vec::new();
    let x = Tensor::randn([1, 3, 32, 32], (Kind::Float, Device::Cpu));
    let _ = tch::no_grad(|| model.forward_observed(&x, false, &mut |site, _| seen.push(site.to_string())));
    assert_eq!(seen, c.activation_sites());
}

#[test]
fn small_stem_keeps_resolution_and_zero_init_residual_zeroes_last_bn() {
    let mut c = cfg(Arch::Resnet50, ActKind::Relu);
    c.small_stem = true;
    c.zero_init_residual = true;
    c.num_classes = 10;
    let (vs, model) = build(c);
    let vars = vs.variables();
    assert_eq!(vars["conv1.weight"].size(), vec![64, 3, 3, 3]);
    assert_eq!(vars["fc.weight"].size(), vec![10, 2048]);
    assert_eq!(vars["layer2.3.bn3.weight"].abs().sum(Kind::Float).double_value(&[]), 0.0);
    assert_eq!(vars["layer2.3.bn2.weight"].mean(Kind::Float).double_value(&[]), 1.0);
    // With a small stem, a 32 px input reaches layer4 at 4x4; the logits have the right shape.
    let mut shapes = Vec::new();
    let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let y = tch::no_grad(|| {
        model.forward_observed(&x, false, &mut |site, t| {
            if site == "act1" || site == "layer4.2.act3" {
                shapes.push(t.size())
            }
        })
    });
    assert_eq!(shapes, vec![vec![2, 64, 32, 32], vec![2, 2048, 4, 4]]);
    assert_eq!(y.size(), vec![2, 10]);
}

#[test]
fn torchvision_init_statistics() {
    // kaiming_normal_(fan_out, relu): std = sqrt(2 / (out_channels * k * k)).
    tch::manual_seed(0);
    let (vs, _) = build(cfg(Arch::Resnet50, ActKind::Relu));
    let w = &vs.variables()["layer3.0.conv2.weight"]; // 256 x 256 x 3 x 3
    let std = w.std(true).double_value(&[]);
    let want = (2.0f64 / (256.0 * 9.0)).sqrt();
    assert!((std / want - 1.0).abs() < 0.02, "std {std} vs {want}");
}

#[test]
fn parameter_groups() {
    assert_eq!(param_group("layer1.0.conv1.weight", &[64, 64, 1, 1]), ParamGroup::Decay);
    assert_eq!(param_group("fc.weight", &[1000, 2048]), ParamGroup::Decay);
    assert_eq!(param_group("fc.bias", &[1000]), ParamGroup::Bias);
    assert_eq!(param_group("layer1.0.bn1.weight", &[64]), ParamGroup::Norm);
    assert_eq!(param_group("layer2.0.downsample.1.bias", &[128]), ParamGroup::Norm);
    assert_eq!(param_group("act1.weight", &[3]), ParamGroup::Activation);
    assert_eq!(param_group("layer4.2.act3.bias", &[1]), ParamGroup::Activation);
}

#[test]
fn invalid_configs_are_errors_not_panics() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut c = cfg(Arch::Resnet18, ActKind::Polynorm);
    c.act.order = 9;
    assert!(ResNet::new(&vs.root(), c).is_err());
    let mut c = cfg(Arch::Resnet18, ActKind::Relu);
    c.num_classes = 0;
    assert!(ResNet::new(&vs.root(), c).unwrap_err().to_string().contains("--num-classes"));
}

#[test]
fn drop_path_zeroes_whole_samples_and_keeps_the_expectation() {
    // timm's drop_path: per sample, 0 with probability p, else x / (1 - p).
    let _g = common::global_lock();
    tch::manual_seed(7);
    let x = Tensor::ones([20_000, 2, 3, 3], (Kind::Float, Device::Cpu));
    let y = resnet_train::model::resnet::drop_path(&x, 0.25);
    let per_sample = y.flatten(1, -1);
    let (lo, hi) = (per_sample.min_dim(1, false).0, per_sample.max_dim(1, false).0);
    assert_eq!(lo, hi, "a sample is dropped or kept as a whole");
    let zero = lo.eq(0.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    let kept = lo.ne(0.0);
    let kept_value = lo.masked_select(&kept).unique_dim(0, true, false, false).0;
    assert_eq!(Vec::<f32>::try_from(&kept_value).unwrap(), vec![1.0 / 0.75]);
    assert!((zero - 0.25).abs() < 0.015, "dropped fraction {zero}");
    assert!((y.mean(Kind::Double).double_value(&[]) - 1.0).abs() < 0.02);
    assert!(resnet_train::model::resnet::drop_path(&x, 0.0).equal(&x));
}

/// timm's `--bn-momentum` / `--bn-eps` against the reference PolyResNet-18 with every
/// BatchNorm2d's momentum and eps set alike (tests/golden/make_golden.py bn-settings): train-mode
/// logits, the running statistics one training forward leaves, and eval logits with them.
#[test]
fn bn_momentum_and_eps_match_torch_batchnorm_with_those_settings() {
    let g = common::golden("bn_settings.safetensors");
    let mut c = cfg(Arch::Resnet18, ActKind::Polynorm);
    c.bn_momentum = Some(0.01);
    c.bn_eps = Some(1e-3);
    let (mut vs, model) = build(c);
    common::fill_deterministic(&vs, &c);
    vs.double();
    let input = common::det_input();
    let logits = tch::no_grad(|| model.forward_t(&input.to_kind(Kind::Double), true));
    let err = common::rel_err(&logits, &g["train_f64"]);
    assert!(err < 1e-8, "train (float64): relative error {err:e}");
    let vars = vs.variables();
    for name in ["bn1", "layer4.1.bn2"] {
        for stat in ["running_mean", "running_var"] {
            let key = format!("{name}.{stat}");
            let err = common::rel_err(&vars[&key], &g[&key]);
            assert!(err < 1e-10, "{key}: relative error {err:e}");
        }
    }
    vs.float();
    let logits = tch::no_grad(|| model.forward_t(&input, false));
    let err = common::rel_err(&logits, &g["eval"]);
    assert!(err < 1e-4, "eval: relative error {err:e}");
    // Torch's defaults are not what the golden holds: the settings are used, not just stored.
    let (vs_d, default) = build(cfg(Arch::Resnet18, ActKind::Polynorm));
    common::fill_deterministic(&vs_d, &cfg(Arch::Resnet18, ActKind::Polynorm));
    let plain = tch::no_grad(|| default.forward_t(&input, false));
    assert!(common::rel_err(&plain, &g["eval"]) > 1e-3);
    // Recorded in model files only when set, so older files keep reading as torch's defaults.
    let json = serde_json::to_string(&c).unwrap();
    assert!(json.contains("\"bn_momentum\":0.01") && json.contains("\"bn_eps\":0.001"), "{json}");
    assert!(!serde_json::to_string(&cfg(Arch::Resnet18, ActKind::Relu)).unwrap().contains("bn_"));
    for (m, e) in [(Some(1.5), None), (Some(-0.1), None), (None, Some(0.0)), (None, Some(f64::NAN))] {
        let bad = ResNetConfig { bn_momentum: m, bn_eps: e, ..c };
        let msg = bad.validate().unwrap_err().to_string();
        assert!(msg.contains(if m.is_some() { "--bn-momentum" } else { "--bn-eps" }), "{msg}");
    }
}

/// DropBlock equals timm 1.0.31's `drop_block_2d` bit for bit (tests/golden/make_golden.py
/// dropblock): the same seed rate (a double), and from the block centres timm's call drew (the
/// same `bernoulli_` on libtorch's generator as ours), the same blocks, scale and output, in
/// float32, float64 and bfloat16, with a block clipped to an even size. (The draw itself is not
/// repeated here: the other tests of this binary draw from the same global generator meanwhile.)
#[test]
fn drop_block_matches_timm_bit_for_bit() {
    use resnet_train::model::resnet::{drop_block_gamma, drop_blocks_at};
    let g = common::golden("dropblock.safetensors");
    // (drop_prob, block_size, gamma_scale) as in make_golden.py's DROPBLOCK_CASES.
    let cases = [(0.1, 5, 0.25), (0.1, 3, 1.0), (0.3, 5, 0.25), (0.2, 3, 1.0), (0.2, 3, 1.0)];
    for (i, (p, size, scale)) in cases.into_iter().enumerate() {
        let x = &g[&format!("case{i}.x")];
        let (h, w) = (x.size()[2], x.size()[3]);
        let gamma = drop_block_gamma(h, w, p, size, scale);
        assert_eq!(gamma, g[&format!("case{i}.gamma")].double_value(&[0]), "case {i}: seed rate");
        let y = drop_blocks_at(x, &g[&format!("case{i}.centres")], size);
        let want = &g[&format!("case{i}.y")];
        assert_eq!(y.kind(), want.kind(), "case {i}");
        assert!(y.equal(want), "case {i}: differs from timm by {}", common::rel_err(&y, want));
    }
    let x = Tensor::ones([2, 3, 5, 5], (Kind::Float, Device::Cpu));
    assert!(resnet_train::model::resnet::drop_block(&x, 0.0, 5, 1.0).equal(&x));
}

/// timm's placement: stages 3 and 4 (sizes 5 and 3), after each block's middle BN, in training.
#[test]
fn drop_block_acts_on_stages_three_and_four_in_training_only() {
    let _g = common::global_lock();
    use resnet_train::model::resnet::drop_block_of_stage;
    assert_eq!(
        (0..4).map(drop_block_of_stage).collect::<Vec<_>>(),
        vec![None, None, Some((5, 0.25)), Some((3, 1.0))]
    );
    let mut c = cfg(Arch::Resnet18, ActKind::Relu);
    c.small_stem = true;
    c.num_classes = 10;
    c.drop_block_rate = 0.5; // at 64 px, ~9 expected block centres per batch in layer3 alone
    let (vs_a, with) = build(c);
    let (mut vs_b, without) = build(ResNetConfig { drop_block_rate: 0.0, ..c });
    vs_b.copy(&vs_a).unwrap();
    let x = Tensor::randn([4, 3, 64, 64], (Kind::Float, Device::Cpu));
    assert!(with.forward_t(&x, false).equal(&without.forward_t(&x, false)));
    assert!(!with.forward_t(&x, true).allclose(&without.forward_t(&x, true), 1e-6, 1e-6, false));
    // Stages 1 and 2 are untouched: their activations agree in training too (BN on batch stats).
    let stage_outputs = |m: &ResNet| {
        let mut seen = Vec::new();
        let _ = tch::no_grad(|| {
            m.forward_observed(&x, true, &mut |site: &str, t: &Tensor| {
                seen.push((site.to_string(), t.copy()))
            })
        });
        seen
    };
    let (a, b) = (stage_outputs(&with), stage_outputs(&without));
    for ((site, ta), (_, tb)) in a.iter().zip(&b) {
        let same = ta.equal(tb);
        let early = site == "act1" || site.starts_with("layer1") || site.starts_with("layer2");
        assert_eq!(same, early, "{site}: DropBlock {}", if same { "missing" } else { "too early" });
    }
    assert!(ResNet::new(&nn::VarStore::new(Device::Cpu).root(), ResNetConfig { drop_block_rate: 1.0, ..c })
        .is_err());
}

#[test]
fn drop_path_rates_rise_linearly_over_blocks_and_evaluation_ignores_them() {
    let _g = common::global_lock();
    // timm's rule: block i of n gets rate * i / (n - 1).
    let mut c = cfg(Arch::Resnet50, ActKind::Polynorm);
    c.drop_path_rate = 0.05;
    let rates = c.drop_path_rates();
    assert_eq!(rates.len(), 16);
    for (i, r) in rates.iter().enumerate() {
        assert!((r - 0.05 * i as f64 / 15.0).abs() < 1e-15);
    }
    c.arch = Arch::Resnet18;
    c.small_stem = true;
    c.num_classes = 10;
    c.drop_path_rate = 0.5;
    let (vs_a, with) = build(c);
    let (mut vs_b, without) = build(ResNetConfig { drop_path_rate: 0.0, ..c });
    vs_b.copy(&vs_a).unwrap();
    let x = Tensor::randn([4, 3, 16, 16], (Kind::Float, Device::Cpu));
    assert!(with.forward_t(&x, false).equal(&without.forward_t(&x, false)));
    assert!(!with.forward_t(&x, true).allclose(&without.forward_t(&x, true), 1e-6, 1e-6, false));
    c.drop_path_rate = 1.0;
    assert!(ResNet::new(&nn::VarStore::new(Device::Cpu).root(), c).is_err());
    // timm's `drop`: dropout before the classifier, in training only.
    let d = ResNetConfig { drop_path_rate: 0.0, drop_rate: 0.5, ..c };
    let (vs_d, dropped) = build(d);
    vs_b.copy(&vs_d).unwrap();
    assert!(dropped.forward_t(&x, false).equal(&without.forward_t(&x, false)));
    assert!(!dropped.forward_t(&x, true).allclose(&without.forward_t(&x, true), 1e-6, 1e-6, false));
    assert!(
        ResNet::new(&nn::VarStore::new(Device::Cpu).root(), ResNetConfig { drop_rate: 1.0, ..d }).is_err()
    );
}

#[test]
fn split_batchnorm_normalises_each_split_with_its_own_bn_and_evaluates_with_the_main_one() {
    let _g = common::global_lock(); // draws from libtorch's global generator
                                    // timm's SplitBatchNorm2d: in training, split 0 through the main BN, split i through
                                    // aux_bn[i - 1]; each split's output is then what the plain network (same weights; the
                                    // auxiliary BNs start as copies) computes on that split alone. Eval uses the main BNs.
                                    // The plain network with BatchNorm and the activation as separate operators, as a split
                                    // network runs them: with batches of 2 (layer4: 2 values per channel) BatchNorm is so
                                    // ill-conditioned that the folded operator's rounding (batch norm applied on load) alone moves
                                    // the logits by ~1e-3.
    let mut act = ActConfig::new(ActKind::Polynorm, 3);
    act.implementation = resnet_train::model::ActImpl::FusedAct;
    let plain_cfg = ResNetConfig { num_classes: 10, ..ResNetConfig::new(Arch::Resnet18, act) };
    let split_cfg = ResNetConfig { bn_splits: 3, ..plain_cfg };
    let (mut plain_vs, plain) = build(plain_cfg);
    let (split_vs, split) = build(split_cfg);
    let names: Vec<String> = split_vs.variables().into_keys().collect();
    let aux: Vec<&String> = names.iter().filter(|n| n.contains(".aux_bn.")).collect();
    // 20 BN sites (stem, 16 in blocks, 3 downsamples) x 2 auxiliaries x 4 tensors.
    assert_eq!(aux.len(), 20 * 2 * 4, "{aux:?}");
    assert!(names.contains(&"layer2.0.downsample.1.aux_bn.1.running_var".to_string()));
    assert!(names.contains(&"bn1.aux_bn.0.weight".to_string()));
    let (mut pristine_vs, _) = build(plain_cfg);
    pristine_vs.copy(&split_vs).unwrap();
    let x = Tensor::randn([6, 3, 32, 32], (Kind::Float, Device::Cpu));
    let y = split.forward_t(&x, true);
    let v = split_vs.variables();
    for (s, bn) in [(0, "bn1"), (1, "bn1.aux_bn.0"), (2, "bn1.aux_bn.1")] {
        plain_vs.copy(&pristine_vs).unwrap();
        let want = plain.forward_t(&x.narrow(0, 2 * s, 2), true);
        let d = (y.narrow(0, 2 * s, 2) - want).abs().max().double_value(&[]);
        assert!(d < 1e-4, "split {s}: max |diff| {d}");
        // Each BN's running statistics saw its own split only.
        let pv = plain_vs.variables();
        for stat in ["running_mean", "running_var"] {
            let (got, want) = (&v[&format!("{bn}.{stat}")], &pv[&format!("bn1.{stat}")]);
            assert!(got.allclose(want, 1e-5, 1e-6, false), "{bn}.{stat}");
        }
    }
    plain_vs.copy(&pristine_vs).unwrap();
    let whole = plain.forward_t(&x, true);
    assert!((&y - whole).abs().max().double_value(&[]) > 1e-3, "split BN normalised the batch as one");
    // Eval: the main BNs alone, whatever the batch.
    plain_vs.copy(&split_vs).unwrap();
    let (e, pe) = (split.forward_t(&x, false), plain.forward_t(&x, false));
    assert!((e - pe).abs().max().double_value(&[]) < 1e-5);
}

#[test]
fn a_plain_checkpoint_starts_a_split_bn_model_with_copies_of_its_bns() {
    let _g = common::global_lock(); // draws from libtorch's global generator
                                    // timm's convert_splitbn_model after loading: the auxiliary BNs are copies of the main ones.
    let dir = common::tmpdir();
    let plain_cfg = ResNetConfig { num_classes: 10, ..cfg(Arch::Resnet18, ActKind::Relu) };
    let (plain_vs, _) = build(plain_cfg);
    tch::no_grad(|| {
        for (name, mut t) in plain_vs.variables() {
            if name.contains("bn") {
                t.copy_(&Tensor::rand_like(&t));
            }
        }
    });
    let file = dir.path().join("plain.safetensors");
    resnet_train::model::weights::save_model(&file, &plain_vs, &plain_cfg, None).unwrap();
    let split_cfg = ResNetConfig { bn_splits: 2, ..plain_cfg };
    let (mut split_vs, _) = build(split_cfg);
    let notes = resnet_train::model::weights::load_initial(&mut split_vs, &split_cfg, &[], &file).unwrap();
    assert!(notes.iter().any(|n| n.contains("auxiliary BNs start as copies")), "{notes:?}");
    let (v, p) = (split_vs.variables(), plain_vs.variables());
    for key in
        ["bn1.aux_bn.0.weight", "layer3.0.downsample.1.aux_bn.0.running_var", "layer4.1.bn2.aux_bn.0.bias"]
    {
        let main = key.replace(".aux_bn.0", "");
        assert!(v[key].equal(&p[&main]) && v[&main].equal(&p[&main]), "{key}");
    }
    // And back: a split-BN file starts a plain model, its auxiliary BNs left out.
    let split_file = dir.path().join("split.safetensors");
    resnet_train::model::weights::save_model(&split_file, &split_vs, &split_cfg, None).unwrap();
    let (mut again, _) = build(plain_cfg);
    resnet_train::model::weights::load_initial(&mut again, &plain_cfg, &[], &split_file).unwrap();
    assert!(again.variables()["bn1.weight"].equal(&p["bn1.weight"]));
}
