// The fused PolyNorm / PolyReLU CPU kernels, vectorised with ATen's `at::vec::Vectorized` and
// parallel with `at::parallel_for`. build.rs compiles this file once per instruction set
// (-DRT_ISA=default; avx2 and avx512 with ATen's flags and -DCPU_CAPABILITY_AVX2/AVX512), as
// ATen builds its own kernels; polycom.cpp picks the table at run time.
//
// Why these kernels are cheap: the eager PolyNorm makes ~20 passes over each activation and keeps
// every power for backward. Here forward reads x twice (the k channel sums per pixel, then the
// output) and backward reads x and dy twice (the k sums of dy x^i, then dx), as streams, with the
// per-pixel sums in cache; only x and the k rsqrt values per pixel are saved.
//
// Reductions (dw, db) are summed per work item into a buffer and added up in item order, so the
// gradients are bit-identical for any thread count.
#include "polycom_kernels.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#ifndef RT_ISA
#error "build.rs defines RT_ISA (default or avx2)"
#endif
#define RT_CONCAT2(a, b) a##b
#define RT_CONCAT(a, b) RT_CONCAT2(a, b)

namespace rt_polycom {
namespace {

using at::vec::Vectorized;

// fp32 arithmetic for float, bf16 and fp16 inputs; fp64 for double (the finite-difference tests).
template <typename T>
using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;

// v rounded to T and back (bf16/fp16: round to nearest even, exactly as a store and a load).
// In registers, without ATen's pack-and-unpack through a T vector: the on-load kernels round
// x once or twice per element, which through ATen's conversions cost more than their arithmetic.
// bf16: ATen's rounding (c10::BFloat16's round_to_nearest_even, NaN to 0xffff) on the fp32 bits;
// fp16: the F16C conversion instructions ATen's own vectorised fp16 conversion uses.
template <typename T>
C10_ALWAYS_INLINE Vectorized<Acc<T>> round_to(const Vectorized<Acc<T>> &v) {
  if constexpr (std::is_same_v<T, Acc<T>>) {
    return v;
  } else {
#if defined(CPU_CAPABILITY_AVX512)
    const __m512 f = v;
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      const __m512i u = _mm512_castps_si512(f);
      const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
      __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb);
      r = _mm512_and_si512(r, _mm512_set1_epi32(static_cast<int>(0xffff0000u)));
      const __mmask16 ordered = _mm512_cmp_ps_mask(f, f, _CMP_ORD_Q);
      return _mm512_castsi512_ps(_mm512_mask_blend_epi32(ordered, _mm512_set1_epi32(static_cast<int>(0xffff0000u)), r));
    } else {
      return _mm512_cvtph_ps(_mm512_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
#elif defined(CPU_CAPABILITY_AVX2)
    const __m256 f = v;
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      const __m256i u = _mm256_castps_si256(f);
      const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
      __m256i r = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb);
      r = _mm256_and_si256(r, _mm256_set1_epi32(static_cast<int>(0xffff0000u)));
      const __m256 nan = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0xffff0000u)));
      return _mm256_blendv_ps(_mm256_castsi256_ps(r), nan, _mm256_cmp_ps(f, f, _CMP_UNORD_Q));
    } else {
      return _mm256_cvtph_ps(_mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
#else
    return std::get<0>(at::vec::convert_to_float<T>(at::vec::convert_from_float<T>(v, v)));
#endif
  }
}

// n <= V::size() elements of p as a vector of the arithmetic type; the tail is zero-padded.
// bf16/fp16: a whole vector converts with ATen's own vectorised conversion (AVX2: one 16-byte
// load, then a shift (bf16) or vcvtph2ps (fp16)); exact, as the scalar conversion of the tail.
template <typename T>
inline Vectorized<Acc<T>> load(const T *p, int64_t n) {
  using A = Acc<T>;
  using V = Vectorized<A>;
  if constexpr (std::is_same_v<T, A>) {
    return n == V::size() ? V::loadu(p) : V::loadu(p, n);
  } else {
    if (n == V::size()) {
      V out;
      if constexpr (std::is_same_v<T, c10::BFloat16>)
        at::vec::load_fp32_from_bf16(p, out);
      else
        at::vec::load_fp32_from_fp16(p, out);
      return out;
    }
#if defined(CPU_CAPABILITY_AVX512)
    // A masked 16-bit load, converted as a whole vector: at the small H*W of ResNet's last
    // stages (7x7 at 224 px) most vectors of an NCHW channel row are partial.
    const __m256i h = _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1), p);
    if constexpr (std::is_same_v<T, c10::BFloat16>)
      return V(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
    else
      return V(_mm512_cvtph_ps(h));
#else
    __at_align__ A buf[V::size()];
    for (int64_t i = 0; i < n; i++) buf[i] = static_cast<A>(p[i]);
    for (int64_t i = n; i < V::size(); i++) buf[i] = A(0);
    return V::loadu(buf);
#endif
  }
}

// The first n lanes of v to p, rounded to T (bf16/fp16: to nearest even, vectorised by ATen).
template <typename T>
inline void store(T *p, const Vectorized<Acc<T>> &v, int64_t n) {
  using A = Acc<T>;
  using V = Vectorized<A>;
  if constexpr (std::is_same_v<T, A>) {
    if (n == V::size())
      v.store(p);
    else
      v.store(p, n);
  } else if (n == V::size()) {
    at::vec::convert_from_float<T>(v, v).store(p, n);  // the first half of the 2 x V::size() lanes
  } else {
#if defined(CPU_CAPABILITY_AVX512)
    // Rounded as a whole vector (round_to: c10's rounding), stored with a 16-bit mask.
    __m256i h;
    if constexpr (std::is_same_v<T, c10::BFloat16>)
      h = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(round_to<T>(v)), 16));
    else
      h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_mask_storeu_epi16(p, static_cast<__mmask16>((1u << n) - 1), h);
#else
    __at_align__ A buf[V::size()];
    v.store(buf);
    for (int64_t i = 0; i < n; i++) p[i] = static_cast<T>(buf[i]);
#endif
  }
}

// store's values, narrowed in registers on AVX-512 (round_to, then a 32-to-16-bit move) where
// ATen's convert_from_float converts two vectors (here v twice): the batch norm gradient's pass,
// which does little else. (Used in every kernel, it measured slower in the activation-alone
// operator's channels-last bf16 backward, session 40.)
template <typename T>
C10_ALWAYS_INLINE void store_narrowed(T *p, const Vectorized<Acc<T>> &v, int64_t n) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (!std::is_same_v<T, Acc<T>>) {
    if (n == Vectorized<Acc<T>>::size()) {
      __m256i h;
      if constexpr (std::is_same_v<T, c10::BFloat16>)
        h = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(round_to<T>(v)), 16));
      else
        h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm256_storeu_si256(reinterpret_cast<__m256i *>(p), h);
      return;
    }
  }
#endif
  store(p, v, n);
}

// Sum of the first n lanes, in double.
template <typename A>
inline double lane_sum(const Vectorized<A> &v, int64_t n) {
  __at_align__ A buf[Vectorized<A>::size()];
  v.store(buf);
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += buf[i];
  return s;
}

// sum_{i<k} c[i] * x^i (Horner).
template <typename V>
inline V horner(const V *c, int k, const V &x) {
  V acc = c[k - 1];
  for (int i = k - 2; i >= 0; i--) acc = acc * x + c[i];
  return acc;
}

// acc[i * stride] += base * factor^i for i < k: the k running power sums of one vector
// (forward: base = factor = x^2; backward: base = g x, factor = x).
template <typename V>
inline void add_powers(V *acc, int64_t stride, V base, const V &factor, int k) {
  acc[0] = acc[0] + base;
  for (int i = 1; i < k; i++) {
    base = base * factor;
    acc[i * stride] = acc[i * stride] + base;
  }
}

// Where the kernels read x: x itself, or (BatchNorm folded in, CpuBatchNorm) batch norm's input z
// and the rest of the map x = X(T(z * scale + shift) + identity), clamped. T: z's type; X: x's
// type, the identity's and dx's: T, or the arithmetic type for a bf16/fp16 z with an fp32
// residual (`wide_identity`).
template <typename T, typename X = T>
struct Src {
  using A = Acc<T>;
  static_assert(std::is_same_v<X, T> || std::is_same_v<X, A>, "x is in z's type or the arithmetic type");
  const T *x;               // x, or z when scale is set
  const X *identity;        // or null
  const A *scale, *shift;   // per channel, or null: x read as is
  A clamp;                  // > 0: act_clamp

  Src(const void *x_, const CpuBatchNorm *bn)
      : x(static_cast<const T *>(x_)),
        identity(bn ? static_cast<const X *>(bn->identity) : nullptr),
        scale(bn ? static_cast<const A *>(bn->scale) : nullptr),
        shift(bn ? static_cast<const A *>(bn->shift) : nullptr),
        clamp(bn ? static_cast<A>(bn->clamp) : A(0)) {}
  bool on_load() const { return scale != nullptr; }
};

// n lanes of x at element `off` of s (the tail zero, as load's), with the channel's (or each
// lane's channel's) scale and shift; *mask: all ones where x lay inside the clamp (when given and
// s clamps).
// (Always inlined: as a call per vector it cost as much as the arithmetic it saves.)
template <typename T, typename X>
C10_ALWAYS_INLINE Vectorized<Acc<T>> load_x(const Src<T, X> &s, int64_t off, int64_t n, const Vectorized<Acc<T>> &scale,
                                 const Vectorized<Acc<T>> &shift, Vectorized<Acc<T>> *mask = nullptr,
                                 Vectorized<Acc<T>> *z = nullptr) {
  using A = Acc<T>;
  using V = Vectorized<A>;
  V v = load(s.x + off, n);
  if (z) *z = v;  // as loaded (batch norm's input with on load), the tail zero
  if (!s.on_load()) return v;
  v = round_to<T>(v * scale + shift);
  if (s.identity) v = round_to<X>(v + load(s.identity + off, n));
  if (s.clamp > 0) {
    const V lo(-s.clamp), hi(s.clamp);
    if (mask) *mask = (v >= lo) & (v <= hi);  // false for NaN, as at::ge / at::le
    v = at::vec::clamp(v, lo, hi);            // NaN stays NaN, as at::clamp
  }
  return n == V::size() ? v : V::set(V(A(0)), v, n);
}

// The mask of load_x applied to a gradient (a no-op unless s clamps).
template <typename T, typename X>
C10_ALWAYS_INLINE Vectorized<Acc<T>> masked(const Src<T, X> &s, const Vectorized<Acc<T>> &g,
                                            const Vectorized<Acc<T>> &mask) {
  return s.on_load() && s.clamp > 0 ? g & mask : g;
}

// Items are processed in parallel, each writing `width` doubles of partial sums; reduce(item,
// partials) then takes them in item order (deterministic for any thread count).
template <typename F, typename R>
void parallel_items_reduce(int64_t items, int64_t work_per_item, int64_t width, const F &f, const R &reduce) {
  std::vector<double> partials(width > 0 ? items * width : 0, 0.0);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_item));
  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; item++) f(item, width > 0 ? &partials[item * width] : nullptr);
  });
  if (width > 0)
    for (int64_t item = 0; item < items; item++) reduce(item, &partials[item * width]);
}

// The same, the items' partial sums added up into out[0..width).
template <typename F>
void parallel_items(int64_t items, int64_t work_per_item, int64_t width, double *out, const F &f) {
  for (int64_t j = 0; j < width; j++) out[j] = 0;
  parallel_items_reduce(items, work_per_item, width, f, [&](int64_t, const double *part) {
    for (int64_t j = 0; j < width; j++) out[j] += part[j];
  });
}

// Batch norm's backward folded in (CpuBnGrad): the gradient of batch norm's output is dx rounded
// to z's type T, as the separate operators hand it over; its first n lanes, the rest zero
// (whatever d holds there).
template <typename T>
C10_ALWAYS_INLINE Vectorized<Acc<T>> bn_grad_of(const Vectorized<Acc<T>> &d, int64_t n) {
  using V = Vectorized<Acc<T>>;
  const V g = round_to<T>(d);
  return n == V::size() ? g : V::set(V(Acc<T>(0)), g, n);
}

// With the folded sums, channels-last items hold one partial sum per channel: about 256 items
// (of whole kRowsPerItem blocks), so that those partials stay small next to the tensors.
constexpr int64_t kRowsPerItem = 16;
inline int64_t rows_per_item(int64_t rows, bool fold) {
  if (!fold) return kRowsPerItem;
  const int64_t r = (rows + 255) / 256;
  return std::max(kRowsPerItem, (r + kRowsPerItem - 1) / kRowsPerItem * kRowsPerItem);
}

// acc[0..n) += g and acc[C..C+n) += g (z - mean): one vector of a channels-last row's channels.
template <typename A>
C10_ALWAYS_INLINE void add_bn_sums(A *acc, int64_t C, int64_t n, const Vectorized<A> &g, const Vectorized<A> &z,
                                   const A *mean) {
  store(acc, load(acc, n) + g, n);
  store(acc + C, load(acc + C, n) + g * (z - load(mean, n)), n);
}

// ---------------------------------------------------------------------------------------------
// PolyNorm, channels at stride `inner` > 1 (NCHW): a work item is one sample's chunk of up to
// kChunk neighbouring pixels. Each pass walks the channels in order and reads the chunk's pixels
// of each channel as one contiguous run (a whole H*W row at ResNet sizes), so that memory is read
// as a stream; the per-pixel sums (k x chunk) stay in L1/L2. (Short runs of a few cache lines per
// channel, 4 KiB apart, defeat the hardware prefetcher: that layout ran 3-4x slower.)

constexpr int64_t kChunk = 2048;

template <typename T, typename X, typename Y>
void polynorm_forward_strided(const Src<T, X> &x, Y *y, Acc<T> *rs, NormShape s, const Coefs &c, double eps) {
  using A = Acc<T>;
  using V = Vectorized<A>;
  constexpr int64_t VS = V::size();
  const int k = c.order;
  const int64_t C = s.channels, HW = s.inner, chunks = (HW + kChunk - 1) / kChunk;
  parallel_items(s.outer * chunks, C * std::min(HW, kChunk), 0, nullptr, [&](int64_t item, double *) {
    const int64_t o = item / chunks, p0 = (item % chunks) * kChunk, len = std::min(kChunk, HW - p0);
    const int64_t nv = (len + VS - 1) / VS;
    const auto n_of = [&](int64_t v) { return std::min(VS, len - v * VS); };
    const int64_t xs = o * C * HW + p0;
    const auto scale = [&](int64_t ch) { return x.on_load() ? V(x.scale[ch]) : V(A(1)); };
    const auto shift = [&](int64_t ch) { return x.on_load() ? V(x.shift[ch]) : V(A(0)); };
    std::vector<V> sums(k * nv, V(A(0)));  // sums[i * nv + v]: sum over channels of x^(2i+2)
    for (int64_t ch = 0; ch < C; ch++) {
      const int64_t row = xs + ch * HW;
      const V sc = scale(ch), sh = shift(ch);
      for (int64_t v = 0; v < nv; v++) {
        const V xv = load_x(x, row + v * VS, n_of(v), sc, sh);
        add_powers(&sums[v], nv, xv * xv, xv * xv, k);
      }
    }
    // In place: sums become coef[i] = w_i * rsqrt(mean(x^2i) + eps), the coefficient of x^(i+1).
    const V vc(static_cast<A>(C)), ve(static_cast<A>(eps));
    for (int i = 0; i < k; i++) {
      const V w(static_cast<A>(c.weight[i]));
      A *r_out = rs + (o * k + i) * HW + p0;
      for (int64_t v = 0; v < nv; v++) {
        const V r = (sums[i * nv + v] / vc + ve).rsqrt();
        store(r_out + v * VS, r, n_of(v));
        sums[i * nv + v] = r * w;
      }
    }
    const V b(static_cast<A>(c.bias));
    Y *ys = y + o * C * HW + p0;
    for (int64_t ch = 0; ch < C; ch++) {
      const int64_t row = xs + ch * HW;
      const V sc = scale(ch), sh = shift(ch);
      for (int64_t v = 0; v < nv; v++) {
        const V xv = load_x(x, row + v * VS, n_of(v), sc, sh);
        V acc = sums[(k - 1) * nv + v];
        for (int i = k - 2; i >= 0; i--) acc = acc * xv + sums[i * nv + v];
        store(ys + ch * HW + v * VS, acc * xv + b, n_of(v));
      }
    }
  });
}

// Backward in closed form. Per pixel, with r_i = rsqrt(S_i / C + eps), S_i = sum_c x_c^2i and
// D_i = sum_c g_c x_c^i:
//   dx_c = sum_i i w_i x_c^(i-1) (r_i g_c - r_i^3 D_i x_c^i / C)
//        = g_c P(x_c) - x_c Q(x_c^2),  P(x) = sum_i i w_i r_i x^(i-1),  Q(u) = sum_i i w_i r_i^3 D_i / C u^(i-1)
//   dw_i = sum_pixels r_i D_i,  db = sum g.
// Fold: out also gets batch norm's sums (CpuBnGrad) at out[k + 1 ..], from the mean's values.
template <bool Fold, typename T, typename X, typename Y>
void polynorm_backward_strided(const Src<T, X> &x, const Y *gy, const Acc<T> *rs, X *dx, NormShape s,
                               const Coefs &c, double *out, const Acc<T> *mean) {
  using A = Acc<T>;
  using V = Vectorized<A>;
  constexpr int64_t VS = V::size();
  const int k = c.order;
  const int64_t C = s.channels, HW = s.inner, chunks = (HW + kChunk - 1) / kChunk;
  const int64_t width = k + 1 + (Fold ? 2 * C : 0);
  parallel_items(s.outer * chunks, 2 * C * std::min(HW, kChunk), width, out, [&](int64_t item, double *part) {
    const int64_t o = item / chunks, p0 = (item % chunks) * kChunk, len = std::min(kChunk, HW - p0);
    const int64_t nv = (len + VS - 1) / VS;
    const auto n_of = [&](int64_t v) { return std::min(VS, len - v * VS); };
    const int64_t xs = o * C * HW + p0;
    const Y *gs = gy + o * C * HW + p0;
    const auto scale = [&](int64_t ch) { return x.on_load() ? V(x.scale[ch]) : V(A(1)); };
    const auto shift = [&](int64_t ch) { return x.on_load() ? V(x.shift[ch]) : V(A(0)); };
    // d[i * nv + v]: sum over channels of g x^(i+1); d[k * nv + v]: sum of g. (x clamped: g is
    // the gradient of the activation of clamp(x), so the sums need no mask; dx does.)
    std::vector<V> d((k + 1) * nv, V(A(0)));
    for (int64_t ch = 0; ch < C; ch++) {
      const V sc = scale(ch), sh = shift(ch);
      for (int64_t v = 0; v < nv; v++) {
        const int64_t n = n_of(v);
        const V xv = load_x(x, xs + ch * HW + v * VS, n, sc, sh), gv = load(gs + ch * HW + v * VS, n);
        d[k * nv + v] = d[k * nv + v] + gv;
        add_powers(&d[v], nv, gv * xv, xv, k);
      }
    }
    std::vector<V> pc(k * nv), qc(k * nv);
    const V vc(static_cast<A>(C));
    for (int i = 0; i < k; i++) {
      const A *r_in = rs + (o * k + i) * HW + p0;
      const V iw(static_cast<A>((i + 1) * c.weight[i]));
      for (int64_t v = 0; v < nv; v++) {
        const int64_t n = n_of(v);
        const V r = load(r_in + v * VS, n), di = d[i * nv + v];
        part[i] += lane_sum(r * di, n);
        pc[i * nv + v] = iw * r;
        qc[i * nv + v] = iw * r * r * r * di / vc;
      }
    }
    for (int64_t v = 0; v < nv; v++) part[k] += lane_sum(d[k * nv + v], n_of(v));
    X *dxs = dx + o * C * HW + p0;
    for (int64_t ch = 0; ch < C; ch++) {
      const V sc = scale(ch), sh = shift(ch);
      V g_sum(A(0)), gz_sum(A(0));
      const V mu(Fold ? mean[ch] : A(0));
      for (int64_t v = 0; v < nv; v++) {
        const int64_t n = n_of(v);
        V mask, zv;
        const V xv = load_x(x, xs + ch * HW + v * VS, n, sc, sh, &mask, &zv), gv = load(gs + ch * HW + v * VS, n);
        const V x2 = xv * xv;
        V p = pc[(k - 1) * nv + v], q = qc[(k - 1) * nv + v];
        for (int i = k - 2; i >= 0; i--) {
          p = p * xv + pc[i * nv + v];
          q = q * x2 + qc[i * nv + v];
        }
        const V d = masked(x, gv * p - xv * q, mask);
        store(dxs + ch * HW + v * VS, d, n);
        if constexpr (Fold) {
          const V g = bn_grad_of<T>(d, n);
          g_sum = g_sum + g;
          gz_sum = gz_sum + g * (zv - mu);
        }
      }
      if constexpr (Fold) {
        part[k + 1 + ch] += lane_sum(g_sum, VS);
        part[k + 1 + C + ch] += lane_sum(gz_sum, VS);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// PolyNorm, channels contiguous (channels-last, 2-d): a work item is a block of pixels (rows),
// each row's channels loaded as vectors and reduced across lanes.

// Channels ch..ch+n-1's scales and shifts (channels contiguous: one per lane).
template <typename T, typename X>
inline Vectorized<Acc<T>> scale_at(const Src<T, X> &x, int64_t ch, int64_t n) {
  return x.on_load() ? load(x.scale + ch, n) : Vectorized<Acc<T>>(Acc<T>(1));
}
template <typename T, typename X>
inline Vectorized<Acc<T>> shift_at(const Src<T, X> &x, int64_t ch, int64_t n) {
  return x.on_load() ? load(x.shift + ch, n) : Vectorized<Acc<T>>(Acc<T>(0));
}

template <typename T, typename X, typename Y>
void polynorm_forward_rows(const Src<T, X> &x, Y *y, Acc<T> *rs, NormShape s, const Coefs &c, double eps) {
  using A = Acc<T>;
  using V = Vectorized<A>;
  constexpr int64_t VS = V::size();
  const int k = c.order;
  const int64_t C = s.channels, rows = s.outer, items = (rows + kRowsPerItem - 1) / kRowsPerItem;
  parallel_items(items, kRowsPerItem * C, 0, nullptr, [&](int64_t item, double *) {
    const int64_t end = std::min(rows, (item + 1) * kRowsPerItem);
    for (int64_t m = item * kRowsPerItem; m < end; m++) {
      const int64_t row = m * C;
      V sums[kMaxOrder];
      for (int i = 0; i < k; i++) sums[i] = V(A(0));
      for (int64_t ch = 0; ch < C; ch += VS) {
        const int64_t n = std::min(VS, C - ch);
        const V xv = load_x(x, row + ch, n, scale_at(x, ch, n), shift_at(x, ch, n));
        add_powers(sums, 1, xv * xv, xv * xv, k);
      }
      V coef[kMaxOrder];
      for (int i = 0; i < k; i++) {
        const A sum = at::vec::vec_reduce_all<A>([](V a, V b) { return a + b; }, sums[i]);
        const A r = A(1) / std::sqrt(sum / static_cast<A>(C) + static_cast<A>(eps));
        rs[m * k + i] = r;
        coef[i] = V(r * static_cast<A>(c.weight[i]));
      }
      const V b(static_cast<A>(c.bias));
      for (int64_t ch = 0; ch < C; ch += VS) {
        const int64_t n = std::min(VS, C - ch);
        const V xv = load_x(x, row + ch, n, scale_at(x, ch, n), shift_at(x, ch, n));
        store(y + m * C + ch, horner(coef, k, xv) * xv + b, n);
      }
    }
  });
}

template <bool Fold, typename T, typename X, typename Y>
void polynorm_backward_rows(const Src<T, X> &x, const Y *gy, const Acc<T> *rs, X *dx, NormShape s,
                            const Coefs &c, double *out, const Acc<T> *mean) {
  using A = Acc<T>;
  using V = Vectorized<A>;
  constexpr int64_t VS = V::size();
  const int k = c.order;
  const int64_t C = s.channels, rows = s.outer, rpi = rows_per_item(rows, Fold), items = (rows + rpi - 1) / rpi;
  const int64_t width = k + 1 + (Fold ? 2 * C : 0);
  parallel_items(items, 2 * rpi * C, width, out, [&](int64_t item, double *part) {
    std::vector<A> acc(Fold ? 2 * C : 0, A(0));  // the item's batch norm sums, per channel
    const int64_t end = std::min(rows, (item + 1) * rpi);
    for (int64_t m = item * rpi; m < end; m++) {
      const int64_t row = m * C;
      const Y *grow = gy + m * C;
      V d[kMaxOrder], gsum(A(0));
      for (int i = 0; i < k; i++) d[i] = V(A(0));
      for (int64_t ch = 0; ch < C; ch += VS) {
        const int64_t n = std::min(VS, C - ch);
        const V xv = load_x(x, row + ch, n, scale_at(x, ch, n), shift_at(x, ch, n)), gv = load(grow + ch, n);
        gsum = gsum + gv;
        add_powers(d, 1, gv * xv, xv, k);
      }
      V p[kMaxOrder], q[kMaxOrder];
      for (int i = 0; i < k; i++) {
        const A di = at::vec::vec_reduce_all<A>([](V a, V b) { return a + b; }, d[i]);
        const A r = rs[m * k + i], iw = static_cast<A>((i + 1) * c.weight[i]);
        part[i] += static_cast<double>(r) * di;
        p[i] = V(iw * r);
        q[i] = V(iw * r * r * r * di / static_cast<A>(C));
      }
      part[k] += lane_sum(gsum, VS);
      for (int64_t ch = 0; ch < C; ch += VS) {
        const int64_t n = std::min(VS, C - ch);
        V mask, zv;
        const V xv = load_x(x, row + ch, n, scale_at(x, ch, n), shift_at(x, ch, n), &mask, &zv),
                gv = load(grow + ch, n);
        const V d = masked(x, gv * horner(p, k, xv) - xv * horner(q, k, xv * xv), mask);
        store(dx + m * C + ch, d, n);
        if constexpr (Fold) add_bn_sums(acc.data() + ch, C, n, bn_grad_of<T>(d, n), zv, mean + ch);
      }
    }
    if constexpr (Fold)
      for (int64_t j = 0; j < 2 * C; j++) part[k + 1 + j] += acc[j];
  });
}

// ---------------------------------------------------------------------------------------------
// PolyReLU: elementwise. y = b + r P(r) with r = relu(x), P(r) = sum_i w_i r^(i-1);
// dx = [x > 0] g sum_i i w_i r^(i-1); dw_i = sum g r^i; db = sum g.

constexpr int64_t kElemsPerItem = 4096;

// Calls body(off, n, scale, shift, sums, gz) for every vector of the s.outer * s.channels * s.inner
// elements, in parallel items; each item's `width` vector sums start at zero and are added to the
// item's partial sums at its end, into out[0..width). Without batch norm on load one flat run (any
// dense layout); with it, per channel: NCHW a row of H*W elements per (sample, channel),
// channels-last rows of C; NCHW with a small H*W that is not a whole number of vectors (ResNet's
// 7x7, 14x14 at 224 px), where most of a row's vectors would be partial: a flat run over each
// sample's C*H*W elements, with the scale and shift spread out per element (one sample's worth,
// read from cache).
// Fold (batch norm on load): body also sets gz[0] to the vector's dx and gz[1] to its z as loaded,
// and batch norm's sums (CpuBnGrad) go to out[width + c] and out[width + C + c], from the mean's
// values; per channel rows then, not spread (whose vectors straddle channels).
template <bool Fold = false, typename T, typename X, typename F>
void for_each_vector(const Src<T, X> &x, NormShape s, int width, double *out, const F &body,
                     const Acc<T> *mean = nullptr) {
  using A = Acc<T>;
  using V = Vectorized<A>;
  constexpr int64_t VS = V::size();
  const auto flush = [&](const V *sums, double *part) {
    for (int i = 0; i < width; i++) part[i] += lane_sum(sums[i], VS);
  };
  const V one(A(1)), zero(A(0));
  const int64_t C = s.channels, per_sample = C * s.inner;
  const bool spread =
      !Fold && x.on_load() && s.inner > 1 && s.inner % VS != 0 && s.inner < 1024 && per_sample % VS == 0;
  if (!x.on_load() || spread) {
    std::vector<A> scale, shift;  // spread: per element of one sample
    if (spread) {
      scale.resize(per_sample);
      shift.resize(per_sample);
      for (int64_t ch = 0; ch < C; ch++) {
        std::fill_n(scale.begin() + ch * s.inner, s.inner, x.scale[ch]);
        std::fill_n(shift.begin() + ch * s.inner, s.inner, x.shift[ch]);
      }
    }
    // kElemsPerItem and per_sample are whole vectors: no vector crosses a sample.
    const int64_t numel = s.outer * per_sample, items = (numel + kElemsPerItem - 1) / kElemsPerItem;
    parallel_items(items, kElemsPerItem, width, out, [&](int64_t item, double *part) {
      V sums[kMaxOrder + 1], gz[2];
      for (int i = 0; i < width; i++) sums[i] = zero;
      const int64_t begin = item * kElemsPerItem, end = std::min(numel, begin + kElemsPerItem);
      if (spread) {
        for (int64_t j = begin, e = begin % per_sample; j < end; j += VS, e = e + VS == per_sample ? 0 : e + VS)
          body(j, VS, V::loadu(scale.data() + e), V::loadu(shift.data() + e), sums, gz);
      } else {
        for (int64_t j = begin; j < end; j += VS) body(j, std::min(VS, end - j), one, zero, sums, gz);
      }
      if (width > 0) flush(sums, part);
    });
  } else if (s.inner == 1) {
    const int64_t rpi = rows_per_item(s.outer, Fold), items = (s.outer + rpi - 1) / rpi;
    parallel_items(items, rpi * C, width + (Fold ? 2 * C : 0), out, [&](int64_t item, double *part) {
      V sums[kMaxOrder + 1], gz[2];
      for (int i = 0; i < width; i++) sums[i] = zero;
      std::vector<A> acc(Fold ? 2 * C : 0, A(0));  // the item's batch norm sums, per channel
      const int64_t end = std::min(s.outer, (item + 1) * rpi);
      for (int64_t m = item * rpi; m < end; m++)
        for (int64_t ch = 0; ch < C; ch += VS) {
          const int64_t n = std::min(VS, C - ch);
          body(m * C + ch, n, scale_at(x, ch, n), shift_at(x, ch, n), sums, gz);
          if constexpr (Fold) add_bn_sums(acc.data() + ch, C, n, bn_grad_of<T>(gz[0], n), gz[1], mean + ch);
        }
      if (width > 0) flush(sums, part);
      if constexpr (Fold)
        for (int64_t j = 0; j < 2 * C; j++) part[width + j] += acc[j];
    });
  } else {
    // One item per (sample, channel) row: its partials are the `width` sums and, folding, its
    // channel's two; reduced into out in row order.
    const int64_t HW = s.inner, row_width = width + (Fold ? 2 : 0);
    for (int64_t j = 0; j < width + (Fold ? 2 * C : 0); j++) out[j] = 0;
    parallel_items_reduce(
        s.outer * C, HW, row_width,
        [&](int64_t row, double *part) {
          V sums[kMaxOrder + 1], gz[2], g_sum(A(0)), gz_sum(A(0));
          for (int i = 0; i < width; i++) sums[i] = zero;
          const V sc(x.scale[row % C]), sh(x.shift[row % C]), mu(Fold ? mean[row % C] : A(0));
          for (int64_t j = 0; j < HW; j += VS) {
            const int64_t n = std::min(VS, HW - j);
            body(row * HW + j, n, sc, sh, sums, gz);
            if constexpr (Fold) {
              const V g = bn_grad_of<T>(gz[0], n);
              g_sum = g_sum + g;
              gz_sum = gz_sum + g * (gz[1] - mu);
            }
          }
          if (width > 0) flush(sums, part);
          if constexpr (Fold) {
            part[width] += lane_sum(g_sum, VS);
            part[width + 1] += lane_sum(gz_sum, VS);
          }
        },
        [&](int64_t row, const double *part) {
          for (int j = 0; j < width; j++) out[j] += part[j];
          if constexpr (Fold) {
            out[width + row % C] += part[width];
            out[width + C + row % C] += part[width + 1];
          }
        });
  }
}

template <typename T, typename X, typename Y>
void polyrelu_forward_typed(const Src<T, X> &x, Y *y, NormShape s, const Coefs &c) {
  using A = Acc<T>;
  using V = Vectorized<A>;
  const int k = c.order;
  V w[kMaxOrder];
  for (int i = 0; i < k; i++) w[i] = V(static_cast<A>(c.weight[i]));
  const V b(static_cast<A>(c.bias)), zero(A(0));
  for_each_vector(x, s, 0, nullptr, [&](int64_t j, int64_t n, const V &sc, const V &sh, V *, V *) {
    const V r = at::vec::maximum(load_x(x, j, n, sc, sh), zero);  // NaN stays NaN, as torch.relu
    store(y + j, horner(w, k, r) * r + b, n);
  });
}

// Fold: out also gets batch norm's sums (CpuBnGrad) at out[k + 1 ..].
template <bool Fold, typename T, typename X, typename Y>
void polyrelu_backward_typed(const Src<T, X> &x, const Y *gy, X *dx, NormShape s, const Coefs &c, double *out,
                             const Acc<T> *mean) {
  using A = Acc<T>;
  using V = Vectorized<A>;
  const int k = c.order;
  V iw[kMaxOrder];
  for (int i = 0; i < k; i++) iw[i] = V(static_cast<A>((i + 1) * c.weight[i]));
  const V zero(A(0));
  for_each_vector<Fold>(
      x, s, k + 1, out,
      [&](int64_t j, int64_t n, const V &sc, const V &sh, V *sums, V *gz) {
        V mask, zv;
        const V xv = load_x(x, j, n, sc, sh, &mask, &zv), gv = load(gy + j, n);
        const V positive = xv > zero;
        const V r = V::blendv(zero, xv, positive);
        add_powers(sums, 1, gv * r, r, k);
        sums[k] = sums[k] + gv;
        const V d = masked(x, V::blendv(zero, gv * horner(iw, k, r), positive), mask);
        store(dx + j, d, n);
        gz[0] = d;
        gz[1] = zv;
      },
      mean);
}

// Batch norm's input gradient from the folded sums (CpuKernels::bn_backward_elemt).
template <typename T, typename X>
void bn_backward_elemt_typed(const X *dx, const T *z, T *dz, NormShape s, const Acc<T> *coefs) {
  using A = Acc<T>;
  using V = Vectorized<A>;
  constexpr int64_t VS = V::size();
  const int64_t C = s.channels;
  const A *mean = coefs, *mean_g = coefs + C, *kc = coefs + 2 * C, *ac = coefs + 3 * C;
  // dz may be dx: each vector is read before it is written.
  const auto one = [&](int64_t off, int64_t n, const V &mu, const V &gm, const V &k, const V &a) {
    V g = load(dx + off, n);
    if constexpr (!std::is_same_v<X, T>) g = round_to<T>(g);
    store_narrowed(dz + off, (g - gm - (load(z + off, n) - mu) * k) * a, n);
  };
  if (s.inner == 1) {
    at::parallel_for(0, s.outer, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, C)), [&](int64_t b, int64_t e) {
      for (int64_t m = b; m < e; m++)
        for (int64_t ch = 0; ch < C; ch += VS) {
          const int64_t n = std::min(VS, C - ch);
          one(m * C + ch, n, load(mean + ch, n), load(mean_g + ch, n), load(kc + ch, n), load(ac + ch, n));
        }
    });
  } else {
    const int64_t HW = s.inner;
    at::parallel_for(0, s.outer * C, std::max<int64_t>(1, 32768 / HW), [&](int64_t b, int64_t e) {
      for (int64_t row = b; row < e; row++) {
        const int64_t ch = row % C;
        const V mu(mean[ch]), gm(mean_g[ch]), k(kc[ch]), a(ac[ch]);
        for (int64_t j = 0; j < HW; j += VS) one(row * HW + j, std::min(VS, HW - j), mu, gm, k, a);
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Type dispatch.

template <typename F>
void by_type(Dtype dt, const F &f) {
  switch (dt) {
    case Dtype::kFloat: return f(float{});
    case Dtype::kDouble: return f(double{});
    case Dtype::kBFloat16: return f(c10::BFloat16{});
    case Dtype::kHalf: return f(c10::Half{});
  }
}

// f(T{}, X{}, Y{}) for z's (or x's) type T. X, the type of x and dx: T, or with a wide identity
// (a bf16/fp16 z with an fp32 residual) the arithmetic type. Y, the type of y and dy: x's own
// type with lowp_out (bf16/fp16: `act_out_lowp`, y rounded once as it is stored, dy read as
// stored), else the arithmetic type.
template <typename F>
void by_types(Dtype dt, bool lowp_out, const CpuBatchNorm *bn, const F &f) {
  by_type(dt, [&](auto tag) {
    using T = decltype(tag);
    using A = Acc<T>;
    if constexpr (std::is_same_v<T, A>) {
      f(T{}, T{}, T{});  // fp32, fp64: one type throughout
    } else if (bn && bn->wide_identity) {
      f(T{}, A{}, A{});  // x = z's batch norm + an fp32 residual: fp32, as its output
    } else if (lowp_out) {
      f(T{}, T{}, T{});
    } else {
      f(T{}, T{}, A{});
    }
  });
}

void polynorm_forward(Dtype dt, bool lowp_out, const void *x, void *y, void *rs, NormShape s, const Coefs &c,
                      double eps, const CpuBatchNorm *bn) {
  by_types(dt, lowp_out, bn, [&](auto t, auto x_t, auto y_t) {
    using T = decltype(t);
    using X = decltype(x_t);
    using Y = decltype(y_t);
    const Src<T, X> xs(x, bn);
    auto *yt = static_cast<Y *>(y);
    auto *rt = static_cast<Acc<T> *>(rs);
    if (s.inner == 1)
      polynorm_forward_rows<T, X, Y>(xs, yt, rt, s, c, eps);
    else
      polynorm_forward_strided<T, X, Y>(xs, yt, rt, s, c, eps);
  });
}

// run(std::bool_constant<fold>) with the kernels' output buffer: the k + 1 coefficient sums, then
// with fold batch norm's 2C sums; copied out to grad_coefs and fold->sums.
template <typename F>
void with_fold(const Coefs &c, NormShape s, double *grad_coefs, const CpuBnGrad *fold, const F &run) {
  const int64_t k = c.order, width = k + 1 + (fold ? 2 * s.channels : 0);
  std::vector<double> out(width, 0.0);
  if (fold)
    run(std::true_type{}, out.data());
  else
    run(std::false_type{}, out.data());
  std::copy(out.begin(), out.begin() + k + 1, grad_coefs);
  if (fold) std::copy(out.begin() + k + 1, out.end(), fold->sums);
}

void polynorm_backward(Dtype dt, bool lowp_out, const void *x, const void *gy, const void *rs, void *dx,
                       NormShape s, const Coefs &c, double *grad_coefs, const CpuBatchNorm *bn,
                       const CpuBnGrad *fold) {
  if (!bn) fold = nullptr;  // batch norm is folded in only where it is applied on load
  by_types(dt, lowp_out, bn, [&](auto t, auto x_t, auto y_t) {
    using T = decltype(t);
    using X = decltype(x_t);
    using Y = decltype(y_t);
    const Src<T, X> xs(x, bn);
    auto *gt = static_cast<const Y *>(gy);
    auto *rt = static_cast<const Acc<T> *>(rs);
    auto *dxt = static_cast<X *>(dx);
    const auto *mean = fold ? static_cast<const Acc<T> *>(fold->mean) : nullptr;
    with_fold(c, s, grad_coefs, fold, [&](auto fold_tag, double *out) {
      constexpr bool F = decltype(fold_tag)::value;
      if (s.inner == 1)
        polynorm_backward_rows<F, T, X, Y>(xs, gt, rt, dxt, s, c, out, mean);
      else
        polynorm_backward_strided<F, T, X, Y>(xs, gt, rt, dxt, s, c, out, mean);
    });
  });
}

void polyrelu_forward(Dtype dt, bool lowp_out, const void *x, void *y, NormShape s, const Coefs &c,
                      const CpuBatchNorm *bn) {
  by_types(dt, lowp_out, bn, [&](auto t, auto x_t, auto y_t) {
    using T = decltype(t);
    using X = decltype(x_t);
    using Y = decltype(y_t);
    polyrelu_forward_typed<T, X, Y>(Src<T, X>(x, bn), static_cast<Y *>(y), s, c);
  });
}

void polyrelu_backward(Dtype dt, bool lowp_out, const void *x, const void *gy, void *dx, NormShape s,
                       const Coefs &c, double *grad_coefs, const CpuBatchNorm *bn, const CpuBnGrad *fold) {
  if (!bn) fold = nullptr;
  by_types(dt, lowp_out, bn, [&](auto t, auto x_t, auto y_t) {
    using T = decltype(t);
    using X = decltype(x_t);
    using Y = decltype(y_t);
    const auto *mean = fold ? static_cast<const Acc<T> *>(fold->mean) : nullptr;
    with_fold(c, s, grad_coefs, fold, [&](auto fold_tag, double *out) {
      polyrelu_backward_typed<decltype(fold_tag)::value, T, X, Y>(
          Src<T, X>(x, bn), static_cast<const Y *>(gy), static_cast<X *>(dx), s, c, out, mean);
    });
  });
}

void bn_backward_elemt(Dtype dt, bool wide, const void *dx, const void *z, void *dz, NormShape s,
                       const void *coefs) {
  by_type(dt, [&](auto tag) {
    using T = decltype(tag);
    using A = Acc<T>;
    const auto *zt = static_cast<const T *>(z);
    auto *dzt = static_cast<T *>(dz);
    const auto *ct = static_cast<const A *>(coefs);
    if constexpr (!std::is_same_v<T, A>) {
      if (wide) return bn_backward_elemt_typed<T, A>(static_cast<const A *>(dx), zt, dzt, s, ct);
    }
    bn_backward_elemt_typed<T, T>(static_cast<const T *>(dx), zt, dzt, s, ct);
  });
}

}  // namespace

const CpuKernels &RT_CONCAT(cpu_kernels_, RT_ISA)() {
  static const CpuKernels table{polynorm_forward, polynorm_backward, polyrelu_forward, polyrelu_backward,
                                bn_backward_elemt};
  return table;
}

}  // namespace rt_polycom
