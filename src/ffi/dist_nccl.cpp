// The NCCL backend of c10d for CUDA tensors (what PyTorch DDP uses on GPUs), built as its own
// shared object (libresnet_train_nccl.so) against libtorch_cuda.so: the binary embeds it and loads
// it only on CUDA machines (ffi::dist), so CPU-only installs build and start without CUDA or NCCL.
//
// Compiled with -DUSE_C10D_NCCL -DUSE_CUDA against the PyPI CUDA runtime, CRT and NCCL headers,
// with cuda_stub/ standing in for the CUDA math libraries' headers.
#include "guarded.h"

#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <chrono>

extern "C" {

// A ProcessGroupNCCL over `store` (a c10::intrusive_ptr<c10d::Store>* from dist.cpp); *out: a
// new c10::intrusive_ptr<c10d::Backend>*, handed to rt_dist_wrap_backend.
__attribute__((visibility("default"))) int rt_dist_nccl_backend(void *store, int rank, int world,
                                                                int64_t timeout_ms, void **out, char **err) {
  return rt::guarded(err, [&] {
    auto s = *static_cast<c10::intrusive_ptr<c10d::Store> *>(store);
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = std::chrono::milliseconds(timeout_ms);
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(s, rank, world, opts);
    *out = new c10::intrusive_ptr<c10d::Backend>(pg);
  });
}

__attribute__((visibility("default"))) void rt_dist_nccl_free_string(char *p) { std::free(p); }

}  // extern "C"
