// The SIMT emulator's scheduler (see simt_host.h): CUDA threads as fibers on one OS thread.
#include "simt_host.h"

#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace rt_simt {

thread_local Dim3 thread_idx, block_idx, block_dim, grid_dim;

namespace {

constexpr size_t kStackBytes = 64 * 1024;
constexpr unsigned kWarp = 32;

#if defined(__x86_64__)
// A fiber switch saves the System V callee-saved registers on the current stack, stores the stack
// pointer in *from and continues on `to`'s stack (~10 ns; swapcontext makes a system call per
// switch, which made a block of 256 threads take tens of milliseconds).
extern "C" void rt_simt_switch(void **from, void *to);
asm(R"(
  .text
  .globl rt_simt_switch
  .type rt_simt_switch, @function
rt_simt_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size rt_simt_switch, .-rt_simt_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");

struct Context {
  void *sp = nullptr;
};

// A fresh stack whose first switch "returns" into entry() with the ABI's alignment.
void make_context(Context &c, char *stack, size_t size, void (*entry)()) {
  auto top = reinterpret_cast<uintptr_t>(stack + size) & ~uintptr_t(15);
  auto *slots = reinterpret_cast<void **>(top);
  slots[-1] = nullptr;                               // padding: entry() starts at rsp = 8 mod 16
  slots[-2] = reinterpret_cast<void *>(entry);       // popped by `ret`
  for (int i = 3; i <= 8; i++) slots[-i] = nullptr;  // rbp, rbx, r12-r15
  c.sp = &slots[-8];
}

void switch_context(Context &from, Context &to) { rt_simt_switch(&from.sp, to.sp); }
#else
struct Context {
  ucontext_t uc;
};

void make_context(Context &c, char *stack, size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}

void switch_context(Context &from, Context &to) { swapcontext(&from.uc, &to.uc); }
#endif

enum class State { Ready, AtBlockBarrier, AtShuffle, Done };

struct Fiber {
  Context ctx;
  State state = State::Ready;
  uint64_t shfl_in = 0, shfl_out = 0;
  int shfl_mask = 0;
  const void *barrier_site = nullptr;  // the __syncthreads call this thread waits at
};

struct Scheduler {
  const std::function<void()> *kernel = nullptr;
  std::unique_ptr<char[]> stacks;
  std::vector<Fiber> fibers;
  Context main;
  unsigned current = 0;
  std::string error;
  bool failed = false;

  Fiber &me() { return fibers[current]; }

  // Back to the scheduler until this fiber is released.
  void block(State s) {
    me().state = s;
    switch_context(me().ctx, main);
  }

  // Releases every warp whose 32 lanes wait at a shuffle, and the block's barrier when every live
  // thread waits at it; reports a mismatch (a lane gone or elsewhere) as an error.
  bool release() {
    bool any = false;
    const unsigned n = static_cast<unsigned>(fibers.size());
    for (unsigned w0 = 0; w0 < n; w0 += kWarp) {
      unsigned at_shfl = 0, done = 0, elsewhere = 0;
      for (unsigned l = w0; l < w0 + kWarp && l < n; l++) {
        const State s = fibers[l].state;
        at_shfl += s == State::AtShuffle;
        done += s == State::Done;
        elsewhere += s == State::AtBlockBarrier;
      }
      if (at_shfl == 0) continue;
      if (at_shfl != kWarp) {
        error = "block " + std::to_string(block_idx.x) + ", warp " + std::to_string(w0 / kWarp) + ": " +
                std::to_string(at_shfl) + " lanes at a full-warp shuffle while " + std::to_string(done) +
                " have exited and " + std::to_string(elsewhere) + " wait at __syncthreads";
        return false;
      }
      for (unsigned l = w0; l < w0 + kWarp; l++) {
        auto &f = fibers[l];
        const unsigned src = w0 + ((l - w0) ^ static_cast<unsigned>(f.shfl_mask));
        f.shfl_out = src < n ? fibers[src].shfl_in : f.shfl_in;
      }
      for (unsigned l = w0; l < w0 + kWarp; l++) fibers[l].state = State::Ready;
      any = true;
    }
    if (any) return true;
    unsigned waiting = 0, live = 0;
    for (auto &f : fibers) {
      live += f.state != State::Done;
      waiting += f.state == State::AtBlockBarrier;
    }
    if (live > 0 && waiting == live) {
      // One barrier for all: threads waiting at different __syncthreads calls is undefined in
      // CUDA (and silently pairs them up on current GPUs).
      const void *site = nullptr;
      unsigned here = 0;
      for (auto &f : fibers) {
        if (f.state != State::AtBlockBarrier) continue;
        if (!site) site = f.barrier_site;
        here += f.barrier_site == site;
      }
      if (here != waiting) {
        error = "block " + std::to_string(block_idx.x) + ": divergent __syncthreads (" + std::to_string(here) +
                " threads wait at one call, " + std::to_string(waiting - here) + " at another)";
        return false;
      }
      for (auto &f : fibers)
        if (f.state == State::AtBlockBarrier) f.state = State::Ready;
      return true;
    }
    if (live > 0) {
      error = "block " + std::to_string(block_idx.x) + ": deadlock (" + std::to_string(waiting) + " of " +
              std::to_string(live) + " live threads at __syncthreads)";
      return false;
    }
    return true;
  }

  void run_block(unsigned threads) {
    fibers.assign(threads, Fiber{});
    for (unsigned t = 0; t < threads; t++)
      make_context(fibers[t].ctx, stacks.get() + size_t(t) * kStackBytes, kStackBytes, &Scheduler::entry);
    for (;;) {
      for (unsigned t = 0; t < threads; t++) {
        if (fibers[t].state != State::Ready) continue;
        current = t;
        thread_idx = Dim3{t, 0, 0};
        switch_context(main, fibers[t].ctx);
        if (failed) throw std::runtime_error("simt emulator: block " + std::to_string(block_idx.x) + ", thread " +
                                             std::to_string(t) + ": " + error);
      }
      bool all_done = true;
      for (auto &f : fibers) all_done = all_done && f.state == State::Done;
      if (all_done) return;
      if (!release()) throw std::runtime_error("simt emulator: " + error);
    }
  }

  static void entry();
};

thread_local Scheduler *g_sched = nullptr;

void Scheduler::entry() {
  Scheduler *s = g_sched;
  try {
    (*s->kernel)();
  } catch (const std::exception &e) {  // unwinding stops here: it cannot cross into the scheduler's stack
    s->error = e.what();
    s->failed = true;
  }
  s->me().state = State::Done;
  switch_context(s->me().ctx, s->main);
  std::abort();  // a finished fiber is never resumed
}

}  // namespace

__attribute__((noinline)) void syncthreads() {
  g_sched->me().barrier_site = __builtin_return_address(0);
  g_sched->block(State::AtBlockBarrier);
}

uint64_t shfl_xor(uint64_t bits, int lane_mask) {
  auto &f = g_sched->me();
  f.shfl_in = bits;
  f.shfl_mask = lane_mask;
  g_sched->block(State::AtShuffle);
  return g_sched->fibers[g_sched->current].shfl_out;
}

void launch(unsigned grid, unsigned block, const std::function<void()> &kernel) {
  if (g_sched) throw std::logic_error("simt emulator: nested launch");
  if (block == 0 || block > 1024) throw std::invalid_argument("simt emulator: block size must be 1..1024");
  Scheduler s;
  s.kernel = &kernel;
  s.stacks.reset(new char[size_t(block) * kStackBytes]);
  g_sched = &s;
  block_dim = Dim3{block, 1, 1};
  grid_dim = Dim3{grid, 1, 1};
  try {
    for (unsigned b = 0; b < grid; b++) {
      block_idx = Dim3{b, 0, 0};
      s.run_block(block);
    }
  } catch (...) {
    g_sched = nullptr;
    throw;
  }
  g_sched = nullptr;
}

float half_bits_to_float(unsigned short h) {
  const unsigned sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu;
  unsigned bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal: man * 2^-24
    const float v = std::ldexp(static_cast<float>(man), -24);
    return sign ? -v : v;
  }
  return uint_as_float(bits);
}

unsigned short float_to_half_bits(float f) {
  const unsigned u = float_as_uint(f), sign = (u >> 16) & 0x8000u;
  const unsigned abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<unsigned short>(sign | 0x7e00u);  // NaN
  if (abs >= 0x477ff000u) return static_cast<unsigned short>(sign | 0x7c00u);  // rounds past 65504: inf
  if (abs < 0x38800000u) {                                                     // below 2^-14: subnormal
    // man * 2^-24, rounded to nearest even (exact in float: nearbyint uses the current, default mode).
    const float v = std::nearbyint(uint_as_float(abs) * 16777216.0f);
    return static_cast<unsigned short>(sign | static_cast<unsigned>(v));
  }
  // Normal: drop 13 mantissa bits with round to nearest even, rebias the exponent (127 -> 15).
  const unsigned rounded = abs + 0xfffu + ((abs >> 13) & 1u);
  return static_cast<unsigned short>(sign | ((rounded - (112u << 23)) >> 13));
}

}  // namespace rt_simt
