// What every C entry point of the shim shares: C++ exceptions become -1 plus a malloc'ed message
// (freed by the caller through rt_free), and tensor arrays from Rust become std::vectors.
#pragma once
#include <ATen/ATen.h>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace rt {

inline char *dup(const std::string &s) {
  char *p = static_cast<char *>(std::malloc(s.size() + 1));
  if (p) std::memcpy(p, s.c_str(), s.size() + 1);
  return p;
}

template <typename F>
int guarded(char **err, F &&f) {
  try {
    f();
    return 0;
  } catch (const c10::Error &e) {
    // The message the user can act on; the C++ backtrace helps no one running the tool.
    if (err) *err = dup(e.what_without_backtrace());
  } catch (const std::exception &e) {
    if (err) *err = dup(e.what());
  } catch (...) {
    if (err) *err = dup("unknown C++ exception");
  }
  return -1;
}

// n tensors handed over as tch's C_tensor pointers (torch::Tensor*), shared, not copied.
inline std::vector<at::Tensor> list(void **ts, int n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (int i = 0; i < n; i++) out.push_back(*static_cast<at::Tensor *>(ts[i]));
  return out;
}

// Whether a flat walk over `a`'s memory meets the same elements as one over `b`'s: same sizes, and
// the same strides on every axis longer than one. The stride of a length-1 axis is arbitrary (a
// 1x1 convolution's channels_last weight [O, I, 1, 1] has strides (I, 1, I, I), its contiguous
// gradient (I, 1, 1, 1)), so comparing all strides copies tensors that are already laid out alike.
inline bool same_layout(const at::Tensor &a, const at::Tensor &b) {
  if (a.sizes() != b.sizes()) return false;
  for (int64_t d = 0; d < a.dim(); d++)
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  return true;
}

}  // namespace rt
