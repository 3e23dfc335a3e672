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
