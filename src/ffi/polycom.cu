// The fused PolyNorm / PolyReLU CUDA kernels. Compiled at first use with NVRTC (no CUDA toolkit at
// build time; build.rs embeds this file in the shim) and launched by polycom_cuda.cpp on the current
// stream. The same maths as polycom_cpu.cpp (see there for the backward's closed form); fp32
// arithmetic for fp32/bf16/fp16 inputs, fp64 for fp64.
//
// Layouts: x as [outer, C, inner]. `rows` kernels (inner == 1: channels-last, 2-d): one warp per
// pixel, lanes over the channels. `cols` kernels (inner > 1: NCHW): one thread per pixel, looping
// over the channels at stride `inner` (neighbouring threads read neighbouring addresses).
// Reductions for dw and db: a fixed tree per block into partials[block][k + 1], summed by the
// caller (deterministic).
//
// Self-contained: no headers (NVRTC has none by default), bf16/fp16 converted by hand / by PTX.
// The same source also compiles as host C++ (RT_SIMT_HOST, polycom_cuda_sim.cpp) and runs on the
// CPU under a SIMT emulator (simt_host.h), which is how the tests check these kernels without a GPU.

#ifndef RT_SIMT_HOST
#define RT_KERNEL extern "C" __global__ void __launch_bounds__(BLOCK)
#define RT_REGISTER(fn)
#endif

#define MAX_ORDER 8
#define BLOCK 256
#define WARPS (BLOCK / 32)

typedef long long i64;
struct bf16_t { unsigned short bits; };
struct f16_t { unsigned short bits; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(bf16_t v) { return __uint_as_float(((unsigned)v.bits) << 16); }
__device__ __forceinline__ float to_acc(f16_t v) {
#ifdef RT_SIMT_HOST
  return ::rt_simt::half_bits_to_float(v.bits);
#else
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
  return f;
#endif
}

template <typename T> __device__ __forceinline__ T from_acc(float v);
template <typename T> __device__ __forceinline__ T from_acc(double v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <> __device__ __forceinline__ bf16_t from_acc<bf16_t>(float v) {
  unsigned u = __float_as_uint(v);
  bf16_t r;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    r.bits = 0x7fc0;  // NaN
  } else {
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    r.bits = (unsigned short)(u >> 16);
  }
  return r;
}
template <> __device__ __forceinline__ f16_t from_acc<f16_t>(float v) {
  f16_t r;
#ifdef RT_SIMT_HOST
  r.bits = ::rt_simt::float_to_half_bits(v);
#else
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(v));
#endif
  return r;
}

__device__ __forceinline__ float rsqrt_acc(float v) { return 1.0f / sqrtf(v); }
__device__ __forceinline__ double rsqrt_acc(double v) { return 1.0 / sqrt(v); }

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// sum_{i<k} c[i] x^i.
template <typename A>
__device__ __forceinline__ A horner(const A *c, int k, A x) {
  A acc = 0;
#pragma unroll
  for (int i = MAX_ORDER - 1; i >= 0; i--)
    if (i < k) acc = acc * x + c[i];
  return acc;
}

// Sums vals[0..n) over the block (fixed order) and writes them to out[0..n) (thread 0).
template <typename A>
__device__ void block_sums(A *vals, int n, A *out) {
  __shared__ A scratch[WARPS][MAX_ORDER + 1];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int j = 0; j <= MAX_ORDER; j++) {
    if (j < n) {
      A v = warp_sum(vals[j]);
      if (lane == 0) scratch[warp][j] = v;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int j = 0; j < n; j++) {
      A s = 0;
      for (int w = 0; w < WARPS; w++) s += scratch[w][j];
      out[j] = s;
    }
  }
}

// ---- PolyNorm forward ----

template <typename T, typename O, typename A>
__device__ void polynorm_fwd_rows(const T *x, O *y, A *rs, const A *w, const A *b, i64 rows, int C, int k, A eps) {
  const i64 row = (i64)blockIdx.x * WARPS + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const T *xr = x + row * C;
  A s[MAX_ORDER];
#pragma unroll
  for (int i = 0; i < MAX_ORDER; i++) s[i] = 0;
  for (int c = lane; c < C; c += 32) {
    const A v = to_acc(xr[c]), sq = v * v;
    A pw = sq;
#pragma unroll
    for (int i = 0; i < MAX_ORDER; i++)
      if (i < k) {
        s[i] += pw;
        pw *= sq;
      }
  }
  A coef[MAX_ORDER];
#pragma unroll
  for (int i = 0; i < MAX_ORDER; i++)
    if (i < k) {
      const A r = rsqrt_acc(warp_sum(s[i]) / (A)C + eps);
      if (lane == 0) rs[row * k + i] = r;
      coef[i] = r * w[i];
    }
  const A bias = b[0];
  for (int c = lane; c < C; c += 32) {
    const A v = to_acc(xr[c]);
    y[row * C + c] = from_acc<O>(horner(coef, k, v) * v + bias);
  }
}

template <typename T, typename O, typename A>
__device__ void polynorm_fwd_cols(const T *x, O *y, A *rs, const A *w, const A *b, i64 outer, int C, i64 inner, int k,
                                  A eps) {
  const i64 pix = (i64)blockIdx.x * BLOCK + threadIdx.x;
  if (pix >= outer * inner) return;
  const i64 o = pix / inner, p = pix % inner;
  const T *xs = x + o * C * inner + p;
  A s[MAX_ORDER];
#pragma unroll
  for (int i = 0; i < MAX_ORDER; i++) s[i] = 0;
  for (int c = 0; c < C; c++) {
    const A v = to_acc(xs[(i64)c * inner]), sq = v * v;
    A pw = sq;
#pragma unroll
    for (int i = 0; i < MAX_ORDER; i++)
      if (i < k) {
        s[i] += pw;
        pw *= sq;
      }
  }
  A coef[MAX_ORDER];
#pragma unroll
  for (int i = 0; i < MAX_ORDER; i++)
    if (i < k) {
      const A r = rsqrt_acc(s[i] / (A)C + eps);
      rs[(o * k + i) * inner + p] = r;
      coef[i] = r * w[i];
    }
  const A bias = b[0];
  O *ys = y + o * C * inner + p;
  for (int c = 0; c < C; c++) {
    const A v = to_acc(xs[(i64)c * inner]);
    ys[(i64)c * inner] = from_acc<O>(horner(coef, k, v) * v + bias);
  }
}

// ---- PolyNorm backward ----

template <typename T, typename O, typename A>
__device__ void polynorm_bwd_rows(const T *x, const O *gy, const A *rs, T *dx, const A *w, A *partials, i64 rows,
                                  int C, int k) {
  const i64 row = (i64)blockIdx.x * WARPS + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  A acc[MAX_ORDER + 1];
#pragma unroll
  for (int j = 0; j <= MAX_ORDER; j++) acc[j] = 0;
  if (row < rows) {
    const T *xr = x + row * C;
    const O *gr = gy + row * C;
    A d[MAX_ORDER], gsum = 0;
#pragma unroll
    for (int i = 0; i < MAX_ORDER; i++) d[i] = 0;
    for (int c = lane; c < C; c += 32) {
      const A v = to_acc(xr[c]), g = to_acc(gr[c]);
      gsum += g;
      A t = g * v;
#pragma unroll
      for (int i = 0; i < MAX_ORDER; i++)
        if (i < k) {
          d[i] += t;
          t *= v;
        }
    }
    A pc[MAX_ORDER], qc[MAX_ORDER];
#pragma unroll
    for (int i = 0; i < MAX_ORDER; i++)
      if (i < k) {
        const A di = warp_sum(d[i]), r = rs[row * k + i], iw = (A)(i + 1) * w[i];
        if (lane == 0) acc[i] = r * di;
        pc[i] = iw * r;
        qc[i] = iw * r * r * r * di / (A)C;
      }
    gsum = warp_sum(gsum);
    if (lane == 0) acc[k] = gsum;
    for (int c = lane; c < C; c += 32) {
      const A v = to_acc(xr[c]), g = to_acc(gr[c]);
      dx[row * C + c] = from_acc<T>(g * horner(pc, k, v) - v * horner(qc, k, v * v));
    }
  }
  block_sums(acc, k + 1, partials + (i64)blockIdx.x * (k + 1));
}

template <typename T, typename O, typename A>
__device__ void polynorm_bwd_cols(const T *x, const O *gy, const A *rs, T *dx, const A *w, A *partials, i64 outer,
                                  int C, i64 inner, int k) {
  const i64 pix = (i64)blockIdx.x * BLOCK + threadIdx.x;
  A acc[MAX_ORDER + 1];
#pragma unroll
  for (int j = 0; j <= MAX_ORDER; j++) acc[j] = 0;
  if (pix < outer * inner) {
    const i64 o = pix / inner, p = pix % inner;
    const T *xs = x + o * C * inner + p;
    const O *gs = gy + o * C * inner + p;
    A d[MAX_ORDER], gsum = 0;
#pragma unroll
    for (int i = 0; i < MAX_ORDER; i++) d[i] = 0;
    for (int c = 0; c < C; c++) {
      const A v = to_acc(xs[(i64)c * inner]), g = to_acc(gs[(i64)c * inner]);
      gsum += g;
      A t = g * v;
#pragma unroll
      for (int i = 0; i < MAX_ORDER; i++)
        if (i < k) {
          d[i] += t;
          t *= v;
        }
    }
    A pc[MAX_ORDER], qc[MAX_ORDER];
#pragma unroll
    for (int i = 0; i < MAX_ORDER; i++)
      if (i < k) {
        const A r = rs[(o * k + i) * inner + p], iw = (A)(i + 1) * w[i];
        acc[i] = r * d[i];
        pc[i] = iw * r;
        qc[i] = iw * r * r * r * d[i] / (A)C;
      }
    acc[k] = gsum;
    T *dxs = dx + o * C * inner + p;
    for (int c = 0; c < C; c++) {
      const A v = to_acc(xs[(i64)c * inner]), g = to_acc(gs[(i64)c * inner]);
      dxs[(i64)c * inner] = from_acc<T>(g * horner(pc, k, v) - v * horner(qc, k, v * v));
    }
  }
  block_sums(acc, k + 1, partials + (i64)blockIdx.x * (k + 1));
}

// ---- PolyReLU ----

template <typename T, typename O, typename A>
__device__ void polyrelu_fwd(const T *x, O *y, const A *w, const A *b, i64 n, int k) {
  const i64 j = (i64)blockIdx.x * BLOCK + threadIdx.x;
  if (j >= n) return;
  const A v = to_acc(x[j]);
  const A r = v > 0 ? v : (v != v ? v : (A)0);  // NaN stays NaN, as torch.relu
  A c[MAX_ORDER];
#pragma unroll
  for (int i = 0; i < MAX_ORDER; i++)
    if (i < k) c[i] = w[i];
  y[j] = from_acc<O>(horner(c, k, r) * r + b[0]);
}

template <typename T, typename O, typename A>
__device__ void polyrelu_bwd(const T *x, const O *gy, T *dx, const A *w, A *partials, i64 n, int k) {
  const i64 j = (i64)blockIdx.x * BLOCK + threadIdx.x;
  A acc[MAX_ORDER + 1];
#pragma unroll
  for (int i = 0; i <= MAX_ORDER; i++) acc[i] = 0;
  if (j < n) {
    const A v = to_acc(x[j]), g = to_acc(gy[j]);
    const bool positive = v > 0;
    const A r = positive ? v : (A)0;
    A c[MAX_ORDER], t = g * r;
#pragma unroll
    for (int i = 0; i < MAX_ORDER; i++)
      if (i < k) {
        c[i] = (A)(i + 1) * w[i];
        acc[i] = t;
        t *= r;
      }
    acc[k] = g;
    dx[j] = from_acc<T>(positive ? g * horner(c, k, r) : (A)0);
  }
  block_sums(acc, k + 1, partials + (i64)blockIdx.x * (k + 1));
}

// ---- Entry points, one per input type and output type ----
// O: the output's (and its gradient's) type: the arithmetic type A, or with the `_lp` tags the
// low-precision input type itself (`act_out_lowp`).

#define RT_POLYCOM_KERNELS(TAG, T, O, A)                                                                     \
  RT_KERNEL polynorm_fwd_rows_##TAG(const T *x, O *y, A *rs, const A *w, const A *b, i64 rows, int C, int k,   \
                                    A eps) {                                                                   \
    polynorm_fwd_rows<T, O, A>(x, y, rs, w, b, rows, C, k, eps);                                               \
  }                                                                                                            \
  RT_REGISTER(polynorm_fwd_rows_##TAG)                                                                         \
  RT_KERNEL polynorm_fwd_cols_##TAG(const T *x, O *y, A *rs, const A *w, const A *b, i64 outer, int C,         \
                                    i64 inner, int k, A eps) {                                                 \
    polynorm_fwd_cols<T, O, A>(x, y, rs, w, b, outer, C, inner, k, eps);                                       \
  }                                                                                                            \
  RT_REGISTER(polynorm_fwd_cols_##TAG)                                                                         \
  RT_KERNEL polynorm_bwd_rows_##TAG(const T *x, const O *gy, const A *rs, T *dx, const A *w, A *partials,      \
                                    i64 rows, int C, int k) {                                                  \
    polynorm_bwd_rows<T, O, A>(x, gy, rs, dx, w, partials, rows, C, k);                                        \
  }                                                                                                            \
  RT_REGISTER(polynorm_bwd_rows_##TAG)                                                                         \
  RT_KERNEL polynorm_bwd_cols_##TAG(const T *x, const O *gy, const A *rs, T *dx, const A *w, A *partials,      \
                                    i64 outer, int C, i64 inner, int k) {                                      \
    polynorm_bwd_cols<T, O, A>(x, gy, rs, dx, w, partials, outer, C, inner, k);                                \
  }                                                                                                            \
  RT_REGISTER(polynorm_bwd_cols_##TAG)                                                                         \
  RT_KERNEL polyrelu_fwd_##TAG(const T *x, O *y, const A *w, const A *b, i64 n, int k) {                       \
    polyrelu_fwd<T, O, A>(x, y, w, b, n, k);                                                                   \
  }                                                                                                            \
  RT_REGISTER(polyrelu_fwd_##TAG)                                                                              \
  RT_KERNEL polyrelu_bwd_##TAG(const T *x, const O *gy, T *dx, const A *w, A *partials, i64 n, int k) {        \
    polyrelu_bwd<T, O, A>(x, gy, dx, w, partials, n, k);                                                       \
  }                                                                                                            \
  RT_REGISTER(polyrelu_bwd_##TAG)

RT_POLYCOM_KERNELS(f32, float, float, float)
RT_POLYCOM_KERNELS(f64, double, double, double)
RT_POLYCOM_KERNELS(bf16, bf16_t, float, float)
RT_POLYCOM_KERNELS(f16, f16_t, float, float)
RT_POLYCOM_KERNELS(bf16_lp, bf16_t, bf16_t, float)
RT_POLYCOM_KERNELS(f16_lp, f16_t, f16_t, float)
