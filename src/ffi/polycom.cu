// The fused PolyNorm / PolyReLU CUDA kernels. Compiled at first use with NVRTC (no CUDA toolkit at
// build time; build.rs embeds this file in the shim) and launched by polycom_cuda.cpp on the current
// stream. The same maths as polycom_cpu.cpp (see there for the backward's closed form); fp32
// arithmetic for fp32/bf16/fp16 inputs, fp64 for fp64.
//
// Layouts: x as [outer, C, inner]. `rows` kernels (inner == 1: channels-last, 2-d): a group of
// G lanes per pixel (G = a power of two <= 32, chosen by the caller so that each lane gets whole
// vectors), lanes over the channels, the group's sums by shuffles. `cols` kernels (inner > 1:
// NCHW): one thread per pixel, looping over the channels at stride `inner` (neighbouring threads
// read neighbouring addresses). PolyReLU: elementwise.
// Bandwidth: the `_vec` entry points move 16 bytes per load (V = 16 / sizeof(T) elements; the
// caller checks the alignment), and the rows and PolyReLU kernels loop over the tensor with a grid
// sized to the GPU (grid-stride), so that each block reduces its dw and db once.
// Reductions for dw and db: a fixed tree per block into partials[block][k + 1], summed by the
// caller (deterministic for a given grid).
//
// Self-contained: no headers (NVRTC has none by default), bf16/fp16 converted by hand / by PTX.
// The same source also compiles as host C++ (RT_SIMT_HOST, polycom_cuda_sim.cpp) and runs on the
// CPU under a SIMT emulator (simt_host.h), which is how the tests check these kernels without a GPU.

#ifndef RT_SIMT_HOST
#ifdef RT_MIN_BLOCKS  // RESNET_TRAIN_CUDA_TUNING's min_blocks (polycom_cuda.cpp)
#define RT_KERNEL extern "C" __global__ void __launch_bounds__(BLOCK, RT_MIN_BLOCKS)
#else
#define RT_KERNEL extern "C" __global__ void __launch_bounds__(BLOCK)
#endif
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

// acc[i] += t * factor^i for i < k (the running powers of the forward's sums and the backward's).
template <typename A>
__device__ __forceinline__ void add_powers(A *acc, A t, A factor, int k) {
#pragma unroll
  for (int i = 0; i < MAX_ORDER; i++)
    if (i < k) {
      acc[i] += t;
      t *= factor;
    }
}

// Sums dw[0..k) and db over the block (fixed order) and writes them to out[0..k] (thread 0).
// Inlined, with db apart from dw: an array indexed by the run-time k would live in local memory.
template <typename A>
__device__ __forceinline__ void block_sums(const A *dw, A db, int k, A *out) {
  __shared__ A scratch[WARPS][MAX_ORDER + 1];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int j = 0; j <= MAX_ORDER; j++) {
    if (j <= k) {
      A v = warp_sum(j < k ? dw[j] : db);
      if (lane == 0) scratch[warp][j] = v;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int j = 0; j <= k; j++) {
      A s = 0;
      for (int w = 0; w < WARPS; w++) s += scratch[w][j];
      out[j] = s;
    }
  }
}

// ---- Vectors: V elements moved by one load or store (16 bytes for V = 16 / sizeof(T)) ----

template <typename T, int V>
struct alignas(sizeof(T) * V >= 16 ? 16 : sizeof(T) * V) Pack {
  T v[V];
};

// A vector access must be aligned to the vector's size: a GPU faults otherwise, the emulator throws.
template <int V, typename T>
__device__ __forceinline__ Pack<T, V> load(const T *p) {
#ifdef RT_SIMT_HOST
  ::rt_simt::check_aligned(p, alignof(Pack<T, V>));
#endif
  return *reinterpret_cast<const Pack<T, V> *>(p);
}

// Whole 16-byte stores by PTX: NVRTC splits a struct assignment of bf16/fp16 values (and of
// some fp32 vectors) into scalar stores.
template <int V, typename T>
__device__ __forceinline__ void store(T *p, const Pack<T, V> &v) {
#ifdef RT_SIMT_HOST
  ::rt_simt::check_aligned(p, alignof(Pack<T, V>));
  *reinterpret_cast<Pack<T, V> *>(p) = v;
#else
  if constexpr (sizeof(Pack<T, V>) % 16 == 0) {
    const unsigned *words = reinterpret_cast<const unsigned *>(&v);
#pragma unroll
    for (int q = 0; q < (int)(sizeof(Pack<T, V>) / 16); q++)
      asm volatile("st.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(reinterpret_cast<char *>(p) + 16 * q),
                   "r"(words[4 * q]), "r"(words[4 * q + 1]), "r"(words[4 * q + 2]), "r"(words[4 * q + 3])
                   : "memory");
  } else {
    *reinterpret_cast<Pack<T, V> *>(p) = v;
  }
#endif
}

// Sum over the G lanes of an aligned group (G a power of two); every lane of the warp must call
// it, with the same G.
template <typename A>
__device__ __forceinline__ A group_sum(A v, int G) {
  for (int o = G >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Rows kernels: the pixels a thread's group serves, in a grid-stride loop. Every thread of a
// block runs the same number of iterations (lanes past the end take part in the shuffles with
// `valid` false), so the shuffles and the final block reduction see the whole block.
struct RowWalk {
  int G, sub, rows_per_block, slot;
  __device__ RowWalk(int group) : G(group) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    sub = lane & (G - 1);
    slot = warp * (32 / G) + lane / G;
    rows_per_block = WARPS * (32 / G);
  }
  __device__ i64 first() const { return (i64)blockIdx.x * rows_per_block; }
  __device__ i64 stride() const { return (i64)gridDim.x * rows_per_block; }
};

// ---- Where a kernel reads the activation's input x ----
// x itself, or, with BatchNorm folded into the operator, recomputed on load from batch norm's
// input z: x = X(T(z * scale[c] + shift[c]) + identity), rounded as the separate operators round
// it (batch norm's output, then the residual add), then clamped to [-clamp, clamp] when clamp > 0
// (act_clamp; the gradient is zero where x was outside). Saves the pass that would write x.
// X: x's type, the identity's and dx's: T, or A for a bf16/fp16 z with an fp32 residual (the
// `_wide` kernels: the residual stream of fp32 outputs, where type promotion makes x fp32).
template <typename T, typename A, typename X = T>
struct Source {
  const T *x;         // x, or z when scale is set
  const X *identity;  // the residual added after batch norm, or null
  const A *scale;     // per channel (gamma * invstd), or null: x is read as is
  const A *shift;     // per channel (beta - mean * scale)
  A clamp;            // > 0: act_clamp
  i64 inner;          // elements per channel and sample: 1 (channels-last, 2-d) or H*W (NCHW)
  int C;
};

// x at channel c from its loaded z (or x) and identity values; `inside`: clamp's gradient mask.
template <typename T, typename A, typename X>
__device__ __forceinline__ A source_x(const Source<T, A, X> &s, A z, A identity, int c, bool &inside) {
  A v = z;
  if (s.scale) {
    v = to_acc(from_acc<T>(v * s.scale[c] + s.shift[c]));
    if (s.identity) v = to_acc(from_acc<X>(v + identity));
  }
  inside = true;
  if (s.clamp > 0) {
    inside = v >= -s.clamp && v <= s.clamp;       // false for NaN, as at::ge / at::le
    v = v < -s.clamp ? -s.clamp : (v > s.clamp ? s.clamp : v);  // NaN stays NaN, as at::clamp
  }
  return v;
}

// The rows kernels' V values of x at channels c..c+V-1 of one row (xr: x or z; ir: the identity
// or null), with clamp's gradient mask.
// With z_out, also the values as loaded (z, batch norm's input: the folded backward's sums need it).
template <int V, typename T, typename A, typename X>
__device__ __forceinline__ void load_x(const Source<T, A, X> &s, const T *xr, const X *ir, int c, A *v, bool *inside,
                                       A *z_out = nullptr) {
  const Pack<T, V> px = load<V>(xr + c);
  Pack<X, V> pi;
  if (ir) pi = load<V>(ir + c);
#pragma unroll
  for (int j = 0; j < V; j++) {
    if (z_out) z_out[j] = to_acc(px.v[j]);
    v[j] = source_x(s, to_acc(px.v[j]), ir ? to_acc(pi.v[j]) : (A)0, c + j, inside[j]);
  }
}

// The channel of element i of a dense tensor in s's layout.
template <typename T, typename A, typename X>
__device__ __forceinline__ int channel_of(const Source<T, A, X> &s, i64 i) {
  return s.inner == 1 ? (int)(i % s.C) : (int)((i / s.inner) % s.C);
}

// ---- PolyNorm forward ----

template <typename T, typename O, typename A, int V, typename X>
__device__ void polynorm_fwd_rows(Source<T, A, X> src, O *y, A *rs, const A *w, const A *b, i64 rows, int C, int k,
                                  A eps, int G) {
  const RowWalk walk(G);
  A wk[MAX_ORDER];
#pragma unroll
  for (int i = 0; i < MAX_ORDER; i++) wk[i] = i < k ? w[i] : (A)0;
  const A bias = b[0];
  for (i64 base = walk.first(); base < rows; base += walk.stride()) {
    const i64 row = base + walk.slot;
    const bool valid = row < rows;
    const T *xr = src.x + row * C;
    const X *ir = src.identity ? src.identity + row * C : nullptr;
    A s[MAX_ORDER];
#pragma unroll
    for (int i = 0; i < MAX_ORDER; i++) s[i] = 0;
    if (valid) {
      for (int c = walk.sub * V; c < C; c += G * V) {
        A v[V];
        bool inside[V];
        load_x<V>(src, xr, ir, c, v, inside);
#pragma unroll
        for (int j = 0; j < V; j++) {
          const A sq = v[j] * v[j];
          add_powers(s, sq, sq, k);
        }
      }
    }
    A coef[MAX_ORDER];
#pragma unroll
    for (int i = 0; i < MAX_ORDER; i++)
      if (i < k) {
        const A r = rsqrt_acc(group_sum(s[i], G) / (A)C + eps);
        if (valid && walk.sub == 0) rs[row * k + i] = r;
        coef[i] = r * wk[i];
      }
    if (valid) {
      O *yr = y + row * C;
      for (int c = walk.sub * V; c < C; c += G * V) {  // again: just read, from cache
        A v[V];
        bool inside[V];
        load_x<V>(src, xr, ir, c, v, inside);
        Pack<O, V> out;
#pragma unroll
        for (int j = 0; j < V; j++) out.v[j] = from_acc<O>(horner(coef, k, v[j]) * v[j] + bias);
        store<V>(yr + c, out);
      }
    }
  }
}

template <typename T, typename O, typename A, typename X>
__device__ void polynorm_fwd_cols(Source<T, A, X> src, O *y, A *rs, const A *w, const A *b, i64 outer, int C,
                                  i64 inner, int k, A eps) {
  const i64 pix = (i64)blockIdx.x * BLOCK + threadIdx.x;
  if (pix >= outer * inner) return;
  const i64 o = pix / inner, p = pix % inner;
  const T *xs = src.x + o * C * inner + p;
  const X *is = src.identity ? src.identity + o * C * inner + p : nullptr;
  A s[MAX_ORDER];
#pragma unroll
  for (int i = 0; i < MAX_ORDER; i++) s[i] = 0;
  for (int c = 0; c < C; c++) {
    bool inside;
    const A v = source_x(src, to_acc(xs[(i64)c * inner]), is ? to_acc(is[(i64)c * inner]) : (A)0, c, inside);
    add_powers(s, v * v, v * v, k);
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
    bool inside;
    const A v = source_x(src, to_acc(xs[(i64)c * inner]), is ? to_acc(is[(i64)c * inner]) : (A)0, c, inside);
    ys[(i64)c * inner] = from_acc<O>(horner(coef, k, v) * v + bias);
  }
}

// ---- PolyNorm backward ----

// Batch norm's backward folded into the rows kernels (the `_fold` entry points, training): as
// each lane writes dx it also adds up batch norm's two per-channel sums, of g = dx rounded to z's
// type (what libtorch's batch norm backward would read) and of g (z - mean), so that no pass of
// its own reads dx and z for them. A lane serves the same channels in every row of its grid-stride
// loop (c = sub * V + m * G * V), so it keeps its sums in shared memory of its own: entry
// e = m * V + j of lane t at fold[e * BLOCK + t]; no atomics, a fixed order, and one reduction per
// block at the end into bn_partials[block][2C] (sum g, then sum g (z - mean)), which
// bn_fold_finalize adds up over the blocks. FOLD_BYTES of shared memory hold FOLD_CAP(A)
// channels per lane (20 in fp32, 10 in fp64): the host folds only where ceil(C / (G V)) V fits.
#define FOLD_BYTES 40960
#define FOLD_CAP(A) (FOLD_BYTES / (int)sizeof(A) / BLOCK / 2)

// The block's sums, [2 * FOLD_CAP(A)][BLOCK], this thread's entries zeroed.
template <typename A>
__device__ __forceinline__ A *fold_begin() {
  __shared__ A fold_sums[2 * FOLD_CAP(A) * BLOCK];
  for (int e = 0; e < 2 * FOLD_CAP(A); e++) fold_sums[e * BLOCK + threadIdx.x] = 0;
  return fold_sums;
}

// Entry e of this thread: the element's dx (as stored) rounded to z's type T, and z - mean.
template <typename T, typename A, typename X>
__device__ __forceinline__ void fold_add(A *fold, int e, X dx, A z, A mean) {
  const A g = to_acc(from_acc<T>(to_acc(dx)));
  A *sums = fold + e * BLOCK + threadIdx.x;
  sums[0] += g;
  sums[FOLD_CAP(A) * BLOCK] += g * (z - mean);
}

// Channel c's sums: lane sub = (c / V) % G of every group of the block, entry
// (c / (G V)) V + c % V; added in the groups' order into bn_partials[block][2C]. Every thread of
// the block calls it.
template <typename A, int V>
__device__ __forceinline__ void fold_end(const A *fold, int C, int G, A *bn_partials) {
  __syncthreads();
  A *out = bn_partials + (i64)blockIdx.x * 2 * C;
  for (int c = threadIdx.x; c < C; c += BLOCK) {
    const int sub = (c / V) % G, e = (c / (G * V)) * V + c % V;
    A sg = 0, sgz = 0;
    for (int lane = sub; lane < BLOCK; lane += G) {
      sg += fold[e * BLOCK + lane];
      sgz += fold[(FOLD_CAP(A) + e) * BLOCK + lane];
    }
    out[c] = sg;
    out[C + c] = sgz;
  }
}

template <typename T, typename O, typename A, int V, typename X, bool Fold = false>
__device__ void polynorm_bwd_rows(Source<T, A, X> src, const O *gy, const A *rs, X *dx, const A *w, A *partials,
                                  i64 rows, int C, int k, int G, const A *bn_mean = nullptr,
                                  A *bn_partials = nullptr) {
  const RowWalk walk(G);
  A *fold = nullptr;
  if constexpr (Fold) fold = fold_begin<A>();
  A iw[MAX_ORDER];
#pragma unroll
  for (int i = 0; i < MAX_ORDER; i++) iw[i] = i < k ? (A)(i + 1) * w[i] : (A)0;
  A acc[MAX_ORDER], acc_db = 0;  // this thread's share of dw_i (sum r_i d_i) and db (sum dy)
#pragma unroll
  for (int j = 0; j < MAX_ORDER; j++) acc[j] = 0;
  for (i64 base = walk.first(); base < rows; base += walk.stride()) {
    const i64 row = base + walk.slot;
    const bool valid = row < rows;
    const T *xr = src.x + row * C;
    const X *ir = src.identity ? src.identity + row * C : nullptr;
    const O *gr = gy + row * C;
    A d[MAX_ORDER], gsum = 0;
#pragma unroll
    for (int i = 0; i < MAX_ORDER; i++) d[i] = 0;
    if (valid) {
      for (int c = walk.sub * V; c < C; c += G * V) {
        A v[V];
        bool inside[V];
        load_x<V>(src, xr, ir, c, v, inside);
        const Pack<O, V> pg = load<V>(gr + c);
#pragma unroll
        for (int j = 0; j < V; j++) {
          const A g = to_acc(pg.v[j]);
          gsum += g;
          add_powers(d, g * v[j], v[j], k);
        }
      }
    }
    A pc[MAX_ORDER], qc[MAX_ORDER];
#pragma unroll
    for (int i = 0; i < MAX_ORDER; i++)
      if (i < k) {
        const A di = group_sum(d[i], G), r = valid ? rs[row * k + i] : (A)0;
        if (walk.sub == 0) acc[i] += r * di;
        pc[i] = iw[i] * r;
        qc[i] = iw[i] * r * r * r * di / (A)C;
      }
    gsum = group_sum(gsum, G);
    if (walk.sub == 0) acc_db += gsum;
    if (valid) {
      X *dxr = dx + row * C;
      for (int c = walk.sub * V, m = 0; c < C; c += G * V, m++) {  // again: just read, from cache
        A v[V], z[V];
        bool inside[V];
        load_x<V>(src, xr, ir, c, v, inside, Fold ? z : nullptr);
        const Pack<O, V> pg = load<V>(gr + c);
        Pack<X, V> out;
#pragma unroll
        for (int j = 0; j < V; j++) {
          const A g = to_acc(pg.v[j]);
          out.v[j] = from_acc<X>(inside[j] ? g * horner(pc, k, v[j]) - v[j] * horner(qc, k, v[j] * v[j]) : (A)0);
          if constexpr (Fold) fold_add<T>(fold, m * V + j, out.v[j], z[j], bn_mean[c + j]);
        }
        store<V>(dxr + c, out);
      }
    }
  }
  block_sums(acc, acc_db, k, partials + (i64)blockIdx.x * (k + 1));
  if constexpr (Fold) fold_end<A, V>(fold, C, G, bn_partials);
}

template <typename T, typename O, typename A, typename X>
__device__ void polynorm_bwd_cols(Source<T, A, X> src, const O *gy, const A *rs, X *dx, const A *w, A *partials,
                                  i64 outer, int C, i64 inner, int k) {
  const i64 pix = (i64)blockIdx.x * BLOCK + threadIdx.x;
  A acc[MAX_ORDER], acc_db = 0;
#pragma unroll
  for (int j = 0; j < MAX_ORDER; j++) acc[j] = 0;
  if (pix < outer * inner) {
    const i64 o = pix / inner, p = pix % inner;
    const T *xs = src.x + o * C * inner + p;
    const X *is = src.identity ? src.identity + o * C * inner + p : nullptr;
    const O *gs = gy + o * C * inner + p;
    A d[MAX_ORDER], gsum = 0;
#pragma unroll
    for (int i = 0; i < MAX_ORDER; i++) d[i] = 0;
    for (int c = 0; c < C; c++) {
      bool inside;
      const A v = source_x(src, to_acc(xs[(i64)c * inner]), is ? to_acc(is[(i64)c * inner]) : (A)0, c, inside);
      const A g = to_acc(gs[(i64)c * inner]);
      gsum += g;
      add_powers(d, g * v, v, k);
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
    acc_db = gsum;
    X *dxs = dx + o * C * inner + p;
    for (int c = 0; c < C; c++) {
      bool inside;
      const A v = source_x(src, to_acc(xs[(i64)c * inner]), is ? to_acc(is[(i64)c * inner]) : (A)0, c, inside);
      const A g = to_acc(gs[(i64)c * inner]);
      dxs[(i64)c * inner] = from_acc<X>(inside ? g * horner(pc, k, v) - v * horner(qc, k, v * v) : (A)0);
    }
  }
  block_sums(acc, acc_db, k, partials + (i64)blockIdx.x * (k + 1));
}

// ---- PolyReLU: elementwise, V elements per thread and step of a grid-stride loop ----

template <typename A>
__device__ __forceinline__ A relu_acc(A v) {
  return v > 0 ? v : (v != v ? v : (A)0);  // NaN stays NaN, as torch.relu
}

// Elements [0, n) as V-element vectors from index 0 (the caller checked the alignment), the last
// n % V one by one; `fn(i, count)` handles elements i..i+count.
template <int V, typename F>
__device__ __forceinline__ void for_each_vector(i64 n, F fn) {
  const i64 vectors = n / V, thread = (i64)blockIdx.x * BLOCK + threadIdx.x, threads = (i64)gridDim.x * BLOCK;
  for (i64 i = thread; i < vectors; i += threads) fn(i * V, V);
  for (i64 i = vectors * V + thread; i < n; i += threads) fn(i, 1);
}

// With a folded batch norm, the `_vec` kernels need each vector in one channel plane (s.inner a
// multiple of V) or in consecutive channels (s.inner == 1): the caller checks.
template <typename T, typename O, typename A, int V, typename X>
__device__ void polyrelu_fwd(Source<T, A, X> src, O *y, const A *w, const A *b, i64 n, int k) {
  A c[MAX_ORDER];
#pragma unroll
  for (int i = 0; i < MAX_ORDER; i++) c[i] = i < k ? w[i] : (A)0;
  const A bias = b[0];
  for_each_vector<V>(n, [&](i64 i, int count) {
    const int c0 = src.scale ? channel_of(src, i) : 0;
    if (count == V) {
      const Pack<T, V> p = load<V>(src.x + i);
      Pack<X, V> pi;
      if (src.identity) pi = load<V>(src.identity + i);
      Pack<O, V> out;
#pragma unroll
      for (int j = 0; j < V; j++) {
        bool inside;
        const int ch = src.inner == 1 ? (c0 + j) % src.C : c0;
        const A r = relu_acc(source_x(src, to_acc(p.v[j]), src.identity ? to_acc(pi.v[j]) : (A)0, ch, inside));
        out.v[j] = from_acc<O>(horner(c, k, r) * r + bias);
      }
      store<V>(y + i, out);
    } else {
      bool inside;
      const A v = source_x(src, to_acc(src.x[i]), src.identity ? to_acc(src.identity[i]) : (A)0, c0, inside);
      const A r = relu_acc(v);
      y[i] = from_acc<O>(horner(c, k, r) * r + bias);
    }
  });
}

// One element's dx (zero outside act_clamp's range), and its terms of dw_i (g r^i) and db (g)
// added to acc and acc_db.
template <typename T, typename A>
__device__ __forceinline__ T polyrelu_grad(A v, bool inside, A g, const A *ic, int k, A *acc, A &acc_db) {
  const bool positive = v > 0;
  const A r = positive ? v : (A)0;
  add_powers(acc, g * r, r, k);
  acc_db += g;
  return from_acc<T>(positive && inside ? g * horner(ic, k, r) : (A)0);
}

template <typename T, typename O, typename A, int V, typename X>
__device__ void polyrelu_bwd(Source<T, A, X> src, const O *gy, X *dx, const A *w, A *partials, i64 n, int k) {
  A ic[MAX_ORDER], acc[MAX_ORDER], acc_db = 0;
#pragma unroll
  for (int i = 0; i < MAX_ORDER; i++) {
    ic[i] = i < k ? (A)(i + 1) * w[i] : (A)0;
    acc[i] = 0;
  }
  for_each_vector<V>(n, [&](i64 i, int count) {
    const int c0 = src.scale ? channel_of(src, i) : 0;
    if (count == V) {
      const Pack<T, V> px = load<V>(src.x + i);
      Pack<X, V> pi;
      if (src.identity) pi = load<V>(src.identity + i);
      const Pack<O, V> pg = load<V>(gy + i);
      Pack<X, V> out;
#pragma unroll
      for (int j = 0; j < V; j++) {
        const int c = src.inner == 1 ? (c0 + j) % src.C : c0;
        bool inside;
        const A v = source_x(src, to_acc(px.v[j]), src.identity ? to_acc(pi.v[j]) : (A)0, c, inside);
        out.v[j] = polyrelu_grad<X>(v, inside, to_acc(pg.v[j]), ic, k, acc, acc_db);
      }
      store<V>(dx + i, out);
    } else {
      bool inside;
      const A v = source_x(src, to_acc(src.x[i]), src.identity ? to_acc(src.identity[i]) : (A)0, c0, inside);
      dx[i] = polyrelu_grad<X>(v, inside, to_acc(gy[i]), ic, k, acc, acc_db);
    }
  });
  block_sums(acc, acc_db, k, partials + (i64)blockIdx.x * (k + 1));
}

// PolyReLU's backward with batch norm's sums folded in (training, z channels-last or 2-d): rows
// of C channels walked as PolyNorm's rows kernels walk them (a group of G lanes per row, each
// lane the same channels in every row), so that each lane keeps its channels' sums (fold_begin).
template <typename T, typename O, typename A, int V, typename X>
__device__ void polyrelu_bwd_rows_fold(Source<T, A, X> src, const O *gy, X *dx, const A *w, A *partials, i64 rows,
                                       int C, int k, int G, const A *bn_mean, A *bn_partials) {
  const RowWalk walk(G);
  A *fold = fold_begin<A>();
  A ic[MAX_ORDER], acc[MAX_ORDER], acc_db = 0;
#pragma unroll
  for (int i = 0; i < MAX_ORDER; i++) {
    ic[i] = i < k ? (A)(i + 1) * w[i] : (A)0;
    acc[i] = 0;
  }
  for (i64 base = walk.first(); base < rows; base += walk.stride()) {
    const i64 row = base + walk.slot;
    if (row >= rows) continue;
    const T *xr = src.x + row * C;
    const X *ir = src.identity ? src.identity + row * C : nullptr;
    const O *gr = gy + row * C;
    X *dxr = dx + row * C;
    for (int c = walk.sub * V, m = 0; c < C; c += G * V, m++) {
      A v[V], z[V];
      bool inside[V];
      load_x<V>(src, xr, ir, c, v, inside, z);
      const Pack<O, V> pg = load<V>(gr + c);
      Pack<X, V> out;
#pragma unroll
      for (int j = 0; j < V; j++) {
        out.v[j] = polyrelu_grad<X>(v[j], inside[j], to_acc(pg.v[j]), ic, k, acc, acc_db);
        fold_add<T>(fold, m * V + j, out.v[j], z[j], bn_mean[c + j]);
      }
      store<V>(dxr + c, out);
    }
  }
  block_sums(acc, acc_db, k, partials + (i64)blockIdx.x * (k + 1));
  fold_end<A, V>(fold, C, G, bn_partials);
}

// ---- Batch norm's backward, from the sums the `_fold` kernels took ----

// One thread per channel: the blocks' partial sums added up in block order (in double), and
// what bn_bwd_elemt needs, coefs[4][C] = (mean, sum g / M, sum g (z - mean) invstd^2 / M,
// invstd gamma), with dgamma = invstd sum g (z - mean) and dbeta = sum g (M: elements per
// channel; gamma null: no affine weight). libtorch's formula.
template <typename A>
__device__ void bn_fold_finalize(const A *bn_partials, i64 blocks, int C, A count, const A *mean, const A *invstd,
                                 const A *gamma, A *coefs, A *dgamma, A *dbeta) {
  const int c = blockIdx.x * BLOCK + threadIdx.x;
  if (c >= C) return;
  double sg = 0, sgz = 0;
  for (i64 b = 0; b < blocks; b++) {
    sg += (double)bn_partials[b * 2 * C + c];
    sgz += (double)bn_partials[b * 2 * C + C + c];
  }
  const A is = invstd[c], sum_g = (A)sg, sum_gz = (A)sgz;
  coefs[c] = mean[c];
  coefs[C + c] = sum_g / count;
  coefs[2 * C + c] = sum_gz * is * is / count;
  coefs[3 * C + c] = gamma ? is * gamma[c] : is;
  dgamma[c] = sum_gz * is;
  dbeta[c] = sum_g;
}

// dz = (g - sum g / M - (z - mean) invstd^2 sum g (z - mean) / M) invstd gamma, g = dx rounded to
// z's type, elementwise (dz may be dx: each vector is read before it is written). The `_vec`
// kernels need each vector in one channel plane or in consecutive channels, as polyrelu's.
template <typename T, typename A, int V, typename X>
__device__ void bn_bwd_elemt(const X *dx, const T *z, T *dz, const A *coefs, i64 n, int C, i64 inner) {
  const A *mean = coefs, *mean_g = coefs + C, *kc = coefs + 2 * C, *ac = coefs + 3 * C;
  const auto dz_of = [&](A d, A zv, int c) {
    const A g = to_acc(from_acc<T>(d));
    return from_acc<T>((g - mean_g[c] - (zv - mean[c]) * kc[c]) * ac[c]);
  };
  for_each_vector<V>(n, [&](i64 i, int count) {
    const int c0 = inner == 1 ? (int)(i % C) : (int)((i / inner) % C);
    if (count == V) {
      const Pack<X, V> pd = load<V>(dx + i);
      const Pack<T, V> pz = load<V>(z + i);
      Pack<T, V> out;
#pragma unroll
      for (int j = 0; j < V; j++) out.v[j] = dz_of(to_acc(pd.v[j]), to_acc(pz.v[j]), inner == 1 ? (c0 + j) % C : c0);
      store<V>(dz + i, out);
    } else {
      dz[i] = dz_of(to_acc(dx[i]), to_acc(z[i]), c0);
    }
  });
}

// ---- Entry points, one per input type and output type ----
// O: the output's (and its gradient's) type: the arithmetic type A, or with the `_lp` tags the
// low-precision input type itself (`act_out_lowp`). X: x's (the identity's, dx's) type: T, or
// with the `_wide` tags A (see Source). V: the elements of T in 16 bytes, used by the `_vec`
// kernels (rows: C a multiple of V; every pointer 16-byte aligned; X = A then moves 32 bytes).

#define RT_ROWS_AND_RELU_KERNELS(SUFFIX, TAG, T, O, A, V, X)                                                           \
  RT_KERNEL polynorm_fwd_rows##SUFFIX##_##TAG(Source<T, A, X> x, O *y, A *rs, const A *w, const A *b, i64 rows,        \
                                              int C, int k, A eps, int G) {                                            \
    polynorm_fwd_rows<T, O, A, V, X>(x, y, rs, w, b, rows, C, k, eps, G);                                              \
  }                                                                                                                    \
  RT_REGISTER(polynorm_fwd_rows##SUFFIX##_##TAG)                                                                       \
  RT_KERNEL polynorm_bwd_rows##SUFFIX##_##TAG(Source<T, A, X> x, const O *gy, const A *rs, X *dx, const A *w,          \
                                              A *partials, i64 rows, int C, int k, int G) {                            \
    polynorm_bwd_rows<T, O, A, V, X>(x, gy, rs, dx, w, partials, rows, C, k, G);                                       \
  }                                                                                                                    \
  RT_REGISTER(polynorm_bwd_rows##SUFFIX##_##TAG)                                                                       \
  RT_KERNEL polynorm_bwd_rows_fold##SUFFIX##_##TAG(Source<T, A, X> x, const O *gy, const A *rs, X *dx, const A *w,     \
                                                   A *partials, i64 rows, int C, int k, int G, const A *bn_mean,       \
                                                   A *bn_partials) {                                                   \
    polynorm_bwd_rows<T, O, A, V, X, true>(x, gy, rs, dx, w, partials, rows, C, k, G, bn_mean, bn_partials);           \
  }                                                                                                                    \
  RT_REGISTER(polynorm_bwd_rows_fold##SUFFIX##_##TAG)                                                                  \
  RT_KERNEL polyrelu_bwd_rows_fold##SUFFIX##_##TAG(Source<T, A, X> x, const O *gy, X *dx, const A *w, A *partials,     \
                                                   i64 rows, int C, int k, int G, const A *bn_mean,                    \
                                                   A *bn_partials) {                                                   \
    polyrelu_bwd_rows_fold<T, O, A, V, X>(x, gy, dx, w, partials, rows, C, k, G, bn_mean, bn_partials);                \
  }                                                                                                                    \
  RT_REGISTER(polyrelu_bwd_rows_fold##SUFFIX##_##TAG)                                                                  \
  RT_KERNEL polyrelu_fwd##SUFFIX##_##TAG(Source<T, A, X> x, O *y, const A *w, const A *b, i64 n, int k) {              \
    polyrelu_fwd<T, O, A, V, X>(x, y, w, b, n, k);                                                                     \
  }                                                                                                                    \
  RT_REGISTER(polyrelu_fwd##SUFFIX##_##TAG)                                                                            \
  RT_KERNEL polyrelu_bwd##SUFFIX##_##TAG(Source<T, A, X> x, const O *gy, X *dx, const A *w, A *partials, i64 n,        \
                                         int k) {                                                                      \
    polyrelu_bwd<T, O, A, V, X>(x, gy, dx, w, partials, n, k);                                                         \
  }                                                                                                                    \
  RT_REGISTER(polyrelu_bwd##SUFFIX##_##TAG)

#define RT_POLYCOM_KERNELS(TAG, T, O, A, V, X)                                                                         \
  RT_ROWS_AND_RELU_KERNELS(, TAG, T, O, A, 1, X)                                                                       \
  RT_ROWS_AND_RELU_KERNELS(_vec, TAG, T, O, A, V, X)                                                                   \
  RT_KERNEL polynorm_fwd_cols_##TAG(Source<T, A, X> x, O *y, A *rs, const A *w, const A *b, i64 outer, int C,          \
                                    i64 inner, int k, A eps) {                                                         \
    polynorm_fwd_cols<T, O, A, X>(x, y, rs, w, b, outer, C, inner, k, eps);                                            \
  }                                                                                                                    \
  RT_REGISTER(polynorm_fwd_cols_##TAG)                                                                                 \
  RT_KERNEL polynorm_bwd_cols_##TAG(Source<T, A, X> x, const O *gy, const A *rs, X *dx, const A *w,                    \
                                    A *partials, i64 outer, int C, i64 inner, int k) {                                 \
    polynorm_bwd_cols<T, O, A, X>(x, gy, rs, dx, w, partials, outer, C, inner, k);                                     \
  }                                                                                                                    \
  RT_REGISTER(polynorm_bwd_cols_##TAG)

// Batch norm's backward after the `_fold` kernels: per z type (and, `_wide`, an fp32 dx).
#define RT_BN_FOLD_KERNELS(SUFFIX, TAG, T, A, V, X)                                                                    \
  RT_KERNEL bn_bwd_elemt##SUFFIX##_##TAG(const X *dx, const T *z, T *dz, const A *coefs, i64 n, int C, i64 inner) {    \
    bn_bwd_elemt<T, A, V, X>(dx, z, dz, coefs, n, C, inner);                                                           \
  }                                                                                                                    \
  RT_REGISTER(bn_bwd_elemt##SUFFIX##_##TAG)

#define RT_BN_FOLD_KERNEL_PAIR(TAG, T, A, V, X) \
  RT_BN_FOLD_KERNELS(, TAG, T, A, 1, X)         \
  RT_BN_FOLD_KERNELS(_vec, TAG, T, A, V, X)

#define RT_BN_FOLD_FINALIZE(TAG, A)                                                                                    \
  RT_KERNEL bn_fold_finalize_##TAG(const A *bn_partials, i64 blocks, int C, A count, const A *mean, const A *invstd,   \
                                   const A *gamma, A *coefs, A *dgamma, A *dbeta) {                                    \
    bn_fold_finalize<A>(bn_partials, blocks, C, count, mean, invstd, gamma, coefs, dgamma, dbeta);                     \
  }                                                                                                                    \
  RT_REGISTER(bn_fold_finalize_##TAG)

RT_POLYCOM_KERNELS(f32, float, float, float, 4, float)
RT_POLYCOM_KERNELS(f64, double, double, double, 2, double)
RT_POLYCOM_KERNELS(bf16, bf16_t, float, float, 8, bf16_t)
RT_POLYCOM_KERNELS(f16, f16_t, float, float, 8, f16_t)
RT_POLYCOM_KERNELS(bf16_lp, bf16_t, bf16_t, float, 8, bf16_t)
RT_POLYCOM_KERNELS(f16_lp, f16_t, f16_t, float, 8, f16_t)
RT_POLYCOM_KERNELS(bf16_wide, bf16_t, float, float, 8, float)
RT_POLYCOM_KERNELS(f16_wide, f16_t, float, float, 8, float)
RT_BN_FOLD_KERNEL_PAIR(f32, float, float, 4, float)
RT_BN_FOLD_KERNEL_PAIR(f64, double, double, 2, double)
RT_BN_FOLD_KERNEL_PAIR(bf16, bf16_t, float, 8, bf16_t)
RT_BN_FOLD_KERNEL_PAIR(f16, f16_t, float, 8, f16_t)
RT_BN_FOLD_KERNEL_PAIR(bf16_wide, bf16_t, float, 8, float)
RT_BN_FOLD_KERNEL_PAIR(f16_wide, f16_t, float, 8, float)
RT_BN_FOLD_FINALIZE(f32, float)
RT_BN_FOLD_FINALIZE(f64, double)
