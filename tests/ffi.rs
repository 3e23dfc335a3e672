//! The C++ shim: autocast with a chosen dtype on CPU, channels_last, the CUDA loader on a CPU box.

use resnet_train::ffi;
use tch::{Device, Kind, Tensor};

#[test]
fn cpu_autocast_runs_convs_in_the_chosen_dtype_and_restores_state() {
    let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    let w = Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu));
    let conv = |x: &Tensor| x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
    assert!(!ffi::autocast_enabled(Device::Cpu).unwrap());
    for kind in [Kind::BFloat16, Kind::Half] {
        let guard = ffi::AutocastGuard::new(Device::Cpu, kind).unwrap();
        assert!(ffi::autocast_enabled(Device::Cpu).unwrap());
        assert_eq!(conv(&x).kind(), kind);
        {
            let _inner = ffi::AutocastGuard::new(Device::Cpu, Kind::BFloat16).unwrap();
            assert_eq!(conv(&x).kind(), Kind::BFloat16);
        }
        assert_eq!(conv(&x).kind(), kind, "the inner guard restored the outer dtype");
        drop(guard);
    }
    assert!(!ffi::autocast_enabled(Device::Cpu).unwrap());
    assert_eq!(conv(&x).kind(), Kind::Float);
    assert!(ffi::AutocastGuard::new(Device::Cpu, Kind::Int).is_err());
}

#[test]
fn channels_last_round_trip() {
    let x = Tensor::randn([2, 3, 4, 5], (Kind::Float, Device::Cpu));
    assert!(!ffi::is_channels_last(&x).unwrap());
    let y = ffi::to_channels_last(&x).unwrap();
    assert!(ffi::is_channels_last(&y).unwrap());
    assert_eq!(y.stride(), vec![60, 1, 15, 3]);
    assert!(y.equal(&x));
    let v = Tensor::randn([5], (Kind::Float, Device::Cpu));
    assert!(ffi::to_channels_last(&v).unwrap().equal(&v), "non-4d tensors come back contiguous");
}

#[test]
fn cuda_loader_is_harmless_without_a_gpu() {
    let _ = ffi::load_cuda_library();
    let _ = tch::Cuda::device_count();
    assert!(resnet_train::runtime::parse_device("cpu").is_ok());
    assert!(resnet_train::runtime::parse_device("tpu").is_err());
    if tch::Cuda::device_count() == 0 {
        let err = resnet_train::runtime::parse_device("cuda").unwrap_err().to_string();
        assert!(err.contains("no CUDA device"), "{err}");
    }
}

/// Records name the card from the driver; without a driver (or device) the query is an error that
/// says which, and the description falls back to the device index instead of failing a run.
#[test]
fn cuda_device_description_names_the_card_or_says_why_not() {
    match ffi::cuda_device_description(0) {
        Ok(d) => {
            assert!(d.contains("sm_") && d.contains("GiB") && d.contains("CUDA driver"), "{d}");
            let words = resnet_train::runtime::describe_device(Device::Cuda(0));
            assert!(words.starts_with("Cuda(0): ") && words.ends_with(&d), "{words}");
        }
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("libcuda") || e.contains("cuDevice") || e.contains("cuInit"), "{e}");
            assert_eq!(resnet_train::runtime::describe_device(Device::Cuda(0)), "Cuda(0)");
        }
    }
    let cpu = resnet_train::runtime::describe_device(Device::Cpu);
    assert!(cpu == "Cpu" || cpu.starts_with("Cpu: "), "{cpu}");
}

/// A record names the CPU that made its timings: model, logical CPUs and the vector extensions.
#[test]
fn cpu_description_names_the_model_and_the_vector_extensions() {
    let info = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_fp16\n\n\
                processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_fp16\n";
    assert_eq!(
        resnet_train::runtime::describe_cpu(info).as_deref(),
        Some("Intel(R) Xeon(R) Processor (2 logical CPUs; AVX-512 BF16 FP16)")
    );
    let amd = "processor : 0\nmodel name : AMD EPYC 7B13\nflags : fpu avx2 fma\n";
    assert_eq!(
        resnet_train::runtime::describe_cpu(amd).as_deref(),
        Some("AMD EPYC 7B13 (1 logical CPUs; AVX2)")
    );
    assert_eq!(resnet_train::runtime::describe_cpu("processor : 0\n"), None);
}

/// fp16 convolutions' weight gradients on the CPU come from the shim's kernel (fp32 arithmetic on
/// the fp16 values, rounded once; libtorch's own is oneDNN's reference loops, 25x slower): each
/// equals the float64 gradient of the same fp16 values to fp16's rounding, as do the input
/// gradients (libtorch's kernel), for the ResNet's shapes, strides, groups and channels_last.
#[test]
fn fp16_convolution_gradients_on_cpu_equal_float64_to_fp16_rounding() {
    tch::manual_seed(7);
    // (input channels, output channels, kernel, stride, padding, groups, channels_last)
    let cases = [
        (3, 8, 7, 2, 3, 1, false), // the stem
        (8, 8, 3, 1, 1, 1, false),
        (8, 16, 1, 2, 0, 1, false), // a downsampling shortcut
        (8, 8, 3, 2, 1, 2, true),
        (16, 8, 3, 1, 1, 1, true),
    ];
    for (ci, co, k, s, p, groups, channels_last) in cases {
        let case = format!("{ci}->{co} k{k} s{s} g{groups} channels_last {channels_last}");
        let mut x = Tensor::randn([2, ci, 9, 9], (Kind::Float, Device::Cpu)).to_kind(Kind::Half);
        if channels_last {
            x = ffi::to_channels_last(&x).unwrap();
        }
        let w =
            (Tensor::randn([co, ci / groups, k, k], (Kind::Float, Device::Cpu)) * 0.3).to_kind(Kind::Half);
        let conv = |x: &Tensor, w: &Tensor| x.conv2d(w, None::<Tensor>, [s, s], [p, p], [1, 1], groups);
        // fp16 values, so the fp16 backward's incoming gradient is the same as float64's.
        let g = Tensor::randn(conv(&x, &w).size(), (Kind::Float, Device::Cpu))
            .to_kind(Kind::Half)
            .to_kind(Kind::Double);
        let grads = |x: &Tensor, w: &Tensor| {
            let (x, w) = (x.detach().set_requires_grad(true), w.detach().set_requires_grad(true));
            (conv(&x, &w).to_kind(Kind::Double) * &g).sum(Kind::Double).backward();
            (x.grad(), w.grad())
        };
        let (gx, gw) = grads(&x, &w);
        assert_eq!((gx.kind(), gw.kind()), (Kind::Half, Kind::Half), "{case}");
        let (rx, rw) = grads(&x.to_kind(Kind::Double), &w.to_kind(Kind::Double));
        // Rounded once to fp16 (half an ulp: 2^-11 relative), plus fp32 accumulation error (at most
        // a few 1e-6 of the sum of the terms' magnitudes here).
        let g_abs = g.abs();
        let magnitude = |x: &Tensor, w: &Tensor, of_weight: bool| {
            let (x, w) = (x.abs().detach().set_requires_grad(true), w.abs().detach().set_requires_grad(true));
            (conv(&x, &w) * &g_abs).sum(Kind::Double).backward();
            if of_weight {
                w.grad()
            } else {
                x.grad()
            }
        };
        let (x64, w64) = (x.to_kind(Kind::Double), w.to_kind(Kind::Double));
        for (name, got, want, terms) in [
            ("weight", &gw, &rw, magnitude(&x64, &w64, true)),
            ("input", &gx, &rx, magnitude(&x64, &w64, false)),
        ] {
            let excess =
                (got.to_kind(Kind::Double) - want).abs() - want.abs() * 2f64.powi(-11) - terms * 1e-5;
            let worst = excess.max().double_value(&[]);
            assert!(worst <= 0.0, "{case}: the {name} gradient is off by {worst} beyond fp16 rounding");
        }
    }
}

/// `runtime::use_device` makes a rank's GPU the current device (torch.cuda.set_device); without a
/// CUDA device the shim call is an error, not a crash, and use_device leaves the CPU alone.
#[test]
fn cuda_set_device_is_an_error_without_cuda() {
    if tch::Cuda::device_count() == 0 {
        let msg = ffi::cuda_set_device(0).unwrap_err().to_string();
        assert!(msg.to_lowercase().contains("cuda"), "{msg}");
    } else {
        ffi::cuda_set_device(0).expect("cuda:0 exists");
    }
    resnet_train::runtime::use_device(Device::Cpu);
}

/// PyTorch's fused SGD and Adam kernels walk a parameter, its gradient and its state with one
/// index on the CPU: a channels_last weight with a contiguous gradient or state (or the reverse)
/// must still take the step each element's own values give (closed forms), and state tensors keep
/// their layout. A 1x1 convolution's weight [O, I, 1, 1] is the case where the two layouts differ
/// in strides but not in order (the step then takes the tensors as they are).
#[test]
fn fused_optimizer_steps_follow_each_parameters_layout() {
    let opts = (Kind::Float, Device::Cpu);
    // channels_last strides (C H W, 1, W C, C), also on length-1 axes (as a module's weights get
    // them), where `contiguous(ChannelsLast)` would keep a [4, 3, 1, 1] tensor's (3, 1, 1, 1).
    let cl_strides = |s: [i64; 4]| [s[1] * s[2] * s[3], 1, s[3] * s[1], s[1]];
    let cl = |t: &Tensor| {
        let s: [i64; 4] = t.size().try_into().unwrap();
        let out = Tensor::empty_strided(s, cl_strides(s), opts);
        out.shallow_clone().copy_(t);
        out
    };
    let layouts = [(true, false, true), (true, true, false), (false, true, true), (true, true, true)];
    // (parameter shape; parameter, gradient, state layouts: channels_last or contiguous)
    for (shape, (p_cl, g_cl, s_cl)) in
        [[2i64, 3, 4, 5], [4, 3, 1, 1]].into_iter().flat_map(|s| layouts.map(|l| (s, l)))
    {
        let values =
            |seed: f64| (Tensor::arange(shape.iter().product::<i64>(), opts) * seed).sin().reshape(shape);
        let (p0, g0) = (values(0.7), values(1.3));
        let case = format!("{shape:?}: parameter channels_last {p_cl}, gradient {g_cl}, state {s_cl}");
        let layout = |t: &Tensor, on: bool| if on { cl(t) } else { t.copy() };
        let strides =
            |on: bool| if on { cl_strides(shape).to_vec() } else { Tensor::zeros(shape, opts).stride() };
        // SGD, momentum 0.9, decay 0.1, two steps (the second reads the buffer).
        let p = layout(&p0, p_cl);
        let b = layout(&Tensor::zeros(shape, opts), s_cl);
        let g = layout(&g0, g_cl);
        let (mut want_p, mut want_b) = (p0.copy(), Tensor::zeros(shape, opts));
        for first_step in [true, false] {
            let step = ffi::SgdStep {
                lr: 0.5,
                momentum: 0.9,
                weight_decay: 0.1,
                nesterov: false,
                first_step,
                trust: None,
            };
            ffi::foreach_sgd(&[p.shallow_clone()], &[g.shallow_clone()], &[b.shallow_clone()], step).unwrap();
            let d = &g0 + &want_p * 0.1;
            want_b = if first_step { d } else { &want_b * 0.9 + d };
            want_p = &want_p - &want_b * 0.5;
        }
        let err = (&p - &want_p).abs().max().double_value(&[]);
        assert!(err < 1e-6, "SGD, {case}: parameter off by {err}");
        assert!((&b - &want_b).abs().max().double_value(&[]) < 1e-6, "SGD, {case}: momentum buffer");
        assert_eq!(b.stride(), strides(s_cl), "SGD, {case}: the buffer keeps its layout");
        assert!(g.equal(&layout(&g0, g_cl)), "SGD, {case}: the gradient is left as it was");

        // AdamW, one step from zero moments: p (1 - lr wd) - lr g / (|g| + eps).
        let p = layout(&p0, p_cl);
        let (m, v) = (layout(&Tensor::zeros(shape, opts), s_cl), layout(&Tensor::zeros(shape, opts), s_cl));
        let count = Tensor::ones([], opts);
        let step = ffi::AdamStep { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
        ffi::fused_adam(
            &[p.shallow_clone()],
            &[g.shallow_clone()],
            &[m.shallow_clone()],
            &[v.shallow_clone()],
            &count,
            step,
            true,
        )
        .unwrap();
        let want_p = &p0 * (1.0 - 0.01 * 0.1) - &g0 / (g0.abs() + 1e-8) * 0.01;
        let err = (&p - &want_p).abs().max().double_value(&[]);
        assert!(err < 1e-6, "AdamW, {case}: parameter off by {err}");
        assert!((&m - &g0 * 0.1).abs().max().double_value(&[]) < 1e-7, "AdamW, {case}: first moment");
        assert_eq!(v.stride(), strides(s_cl), "AdamW, {case}: the state keeps its layout");
    }
}

/// The global gradient norm (clipping and the guards read it) is what `torch.nn.utils.
/// clip_grad_norm_` computes: libtorch's per-tensor norms (`_foreach_norm`), then the norm of
/// those; on the CPU the shim spreads the per-tensor norms over the threads, which must not change
/// a bit, whatever the thread count and the tensors' sizes, layouts and dtypes.
#[test]
fn clip_grad_norm_equals_libtorchs_foreach_norm_bit_for_bit() {
    let opts = (Kind::Float, Device::Cpu);
    let grads: Vec<Tensor> = (0..37)
        .map(|i| {
            let n = [1, 7, 64, 1000, 70_000, 300_000][i % 6] + i as i64;
            let t = (Tensor::arange(n, opts) * (0.37 + i as f64)).sin() * (1.0 + i as f64);
            match i % 4 {
                0 => ffi::to_channels_last(&t.narrow(0, 0, n / 4 * 4).reshape([n / 4, 2, 2, 1])).unwrap(),
                1 => t.to_kind(Kind::BFloat16),
                _ => t,
            }
        })
        .collect();
    // at::norm(t) is linalg_vector_norm(t, 2), what `_foreach_norm` takes of each tensor.
    let per_tensor: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
    let want = Tensor::stack(&per_tensor, 0).norm().to_kind(Kind::Float).double_value(&[]);
    let threads = tch::get_num_threads();
    for t in [1, 2, 3] {
        tch::set_num_threads(t);
        let got = ffi::foreach_clip_grad_norm(&grads, 0.0).unwrap().double_value(&[]);
        assert_eq!(got.to_bits(), want.to_bits(), "{t} threads: {got} vs {want}");
    }
    tch::set_num_threads(threads);
}

/// The optimizers' scalars cross the FFI as #[repr(C)] structs: each field of the Rust twin sits
/// at the offset shim.h's struct gives it, so neither side can reorder one alone.
#[test]
fn optimizer_hyper_structs_match_the_shims_field_for_field() {
    use resnet_train::ffi::{
        shim_hyper_offsets, AdabeliefHyper, AdanHyper, LapropHyper, NadamHyper, OptimizerHyper, RadamHyper,
    };
    fn check<H: OptimizerHyper>() {
        assert_eq!(shim_hyper_offsets::<H>(), Some(H::offsets()), "{}", H::NAME);
    }
    check::<AdanHyper>();
    check::<LapropHyper>();
    check::<RadamHyper>();
    check::<NadamHyper>();
    check::<AdabeliefHyper>();
}
