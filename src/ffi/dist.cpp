// Data-parallel collectives from libtorch's own distributed engine (c10d), the one PyTorch DDP and
// torchrun jobs run on: rendezvous through c10d::TCPStore (rank 0 hosts it), then a Gloo backend
// (CPU tensors, and CUDA tensors through host copies). The NCCL backend lives in dist_nccl.cpp,
// built into its own shared object that is loaded only on CUDA machines.
//
// Compiled with -DUSE_C10D_GLOO against gloo_stub/ (the wheel ships c10d's headers, not gloo's;
// libtorch_cpu.so contains gloo itself).
#include "shim.h"
#include "guarded.h"

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <atomic>
#include <mutex>

#include <chrono>

namespace {

struct ProcessGroup {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 0: return c10d::ReduceOp::SUM;
    case 1: return c10d::ReduceOp::MAX;
    case 2: return c10d::ReduceOp::MIN;
    default: throw std::invalid_argument("unknown reduce op " + std::to_string(op));
  }
}

ProcessGroup &pg_of(rt_process_group pg) {
  if (!pg) throw std::invalid_argument("null process group");
  return *static_cast<ProcessGroup *>(pg);
}

// Waits for every work item, so the tensors hold the result when the call returns; the first
// failure (a peer that died, a timeout) is rethrown with c10d's message.
void wait_all(std::vector<c10::intrusive_ptr<c10d::Work>> &works) {
  for (auto &w : works) w->wait();
}

// A sum over ranks whose backward is the same sum of the incoming gradients (what
// torch.distributed.nn.all_reduce does): SyncBatchNorm's statistics built on it carry every
// rank's share of the gradient back to every rank, as PyTorch's SyncBatchNorm backward does with
// its all-reduced sum_dy / sum_dy_xmu. `host`: reduce through a CPU copy (Gloo with CUDA tensors).
struct AllReduceSum : public torch::autograd::Function<AllReduceSum> {
  static at::Tensor reduce(int64_t pg, bool host, const at::Tensor &x) {
    auto &g = *reinterpret_cast<ProcessGroup *>(pg);
    at::Tensor t = (host ? x.detach().to(at::kCPU) : x.detach()).contiguous().clone();
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    std::vector<at::Tensor> one{t};
    g.backend->allreduce(one, opts)->wait();
    return host ? t.to(x.device()) : t;
  }
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &x, int64_t pg, bool host) {
    ctx->saved_data["pg"] = pg;
    ctx->saved_data["host"] = host;
    return reduce(pg, host, x);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads) {
    auto g = reduce(ctx->saved_data["pg"].toInt(), ctx->saved_data["host"].toBool(), grads[0]);
    return {g, at::Tensor(), at::Tensor()};
  }
};

// DDP's overlap: the gradients in buckets (reverse parameter order, ~bucket_bytes each, as
// DDP's reducer: the last layers' gradients are ready first); a post-accumulate hook on every
// parameter marks it ready once armed, and when the next bucket in order is complete its
// all-reduce (sum) starts asynchronously while backward goes on. Buckets start in index order
// only, so every rank issues the same collectives in the same order. finish() starts whatever
// did not (parameters without a gradient this time: zeros), waits and divides by the world size.
// Gradients as bucket views (DDP's gradient_as_bucket_view): each bucket is one flat tensor;
// when it starts, each gradient is copied into its slice and the parameter's gradient becomes
// that slice, so the averages land in the gradients with no copy back, and the stolen gradient
// is freed (at most one copy of the gradients plus a bucket exists). With `host` (CUDA tensors over Gloo) the flat lives on the CPU and the
// averages are copied back.
struct Reducer {
  ProcessGroup *pg = nullptr;
  bool host = false;
  std::vector<at::Tensor> params;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;  // keeps the hooks alive
  std::vector<std::vector<size_t>> buckets;
  std::vector<size_t> bucket_of;
  std::vector<size_t> missing;  // per bucket: parameters not yet ready
  std::vector<bool> ready;
  std::vector<at::Tensor> flats;  // per bucket, allocated when it starts
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  size_t next = 0;
  size_t launched_in_backward = 0;  // by the hooks, at the last finish()
  size_t grads_as_views = 0;        // parameters whose gradient is a bucket slice, at the last finish()
  bool armed = false;
  std::mutex mu;
  // What the hooks reach the reducer through: cleared when it is freed, so that a hook still
  // attached to a live accumulator does nothing.
  std::shared_ptr<std::atomic<Reducer *>> self = std::make_shared<std::atomic<Reducer *>>(nullptr);

  void arm() {
    std::lock_guard<std::mutex> lock(mu);
    armed = true;
    next = 0;
    flats.assign(buckets.size(), at::Tensor());  // fresh buckets each step (see finish)
    works.assign(buckets.size(), {});
    ready.assign(params.size(), false);
    missing.clear();
    for (auto &b : buckets) missing.push_back(b.size());
  }

  // The slice of bucket k's flat tensor that holds parameter p's gradient (offset in elements),
  // laid out as p (DDP's bucket views do the same): a channels_last parameter's gradient stays
  // channels_last, as autograd would have left it, so the fused optimizer kernels, which walk
  // parameter, gradient and state with one index, read it in the parameter's order.
  at::Tensor slice(size_t k, int64_t offset, const at::Tensor &p) {
    if (p.is_non_overlapping_and_dense())
      return flats[k].as_strided(p.sizes(), p.strides(), flats[k].storage_offset() + offset);
    return flats[k].narrow(0, offset, p.numel()).view(p.sizes());
  }

  void launch(size_t k) {
    if (!flats[k].defined()) {
      int64_t total = 0;
      for (auto i : buckets[k]) total += params[i].numel();
      const auto &first = params[buckets[k].front()];
      flats[k] = at::empty({total}, first.options().device(host ? at::Device(at::kCPU) : first.device()));
    }
    at::NoGradGuard no_grad;
    int64_t offset = 0;
    for (auto i : buckets[k]) {
      auto &p = params[i];
      auto view = slice(k, offset, p);
      offset += p.numel();
      auto g = p.grad();
      if (!g.defined()) {
        view.zero_();
      } else if (!g.is_alias_of(flats[k])) {
        view.copy_(g);
      }
      if (!host) p.mutable_grad() = view;  // the stolen gradient is freed here
    }
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    std::vector<at::Tensor> one{flats[k]};
    works[k] = pg->backend->allreduce(one, opts);
  }

  // Called by the hook of parameter i, after its gradient was accumulated.
  void mark(size_t i) {
    std::lock_guard<std::mutex> lock(mu);
    if (!armed || ready[i]) return;
    ready[i] = true;
    missing[bucket_of[i]] -= 1;
    while (next < buckets.size() && missing[next] == 0) launch(next++);
  }

  void finish(double world) {
    std::lock_guard<std::mutex> lock(mu);
    if (!armed) throw std::logic_error("gradient reducer finished without being armed");
    armed = false;
    launched_in_backward = next;
    grads_as_views = 0;
    while (next < buckets.size()) launch(next++);
    at::NoGradGuard no_grad;
    for (size_t k = 0; k < buckets.size(); k++) {
      works[k]->wait();
      flats[k].div_(world);
      int64_t offset = 0;
      for (auto i : buckets[k]) {
        auto &p = params[i];
        if (host) {
          auto part = slice(k, offset, p).to(p.device());
          if (p.grad().defined()) {
            p.mutable_grad().copy_(part);
          } else {
            p.mutable_grad() = part.clone();
          }
        } else {
          grads_as_views += p.grad().is_alias_of(flats[k]) ? 1 : 0;
        }
        offset += p.numel();
      }
    }
    works.clear();
    // The gradients (slices) keep their buckets alive until the optimizer drops them; holding
    // them here too would carry a copy of the gradients through the next forward.
    flats.assign(buckets.size(), at::Tensor());
  }
};

}  // namespace

using rt::guarded;
using rt::list;

extern "C" {

int rt_dist_store(const char *host, int port, int rank, int world, int is_server, int64_t timeout_ms, rt_store *out,
                  char **err) {
  return guarded(err, [&] {
    if (rank < 0 || world < 1 || rank >= world)
      throw std::invalid_argument("rank " + std::to_string(rank) + " is not in a world of " + std::to_string(world));
    if (port < 1 || port > 65535) throw std::invalid_argument("port " + std::to_string(port) + " is not a TCP port");
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = is_server != 0;
    opts.numWorkers = static_cast<std::size_t>(world);
    opts.waitWorkers = true;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    *out = new c10::intrusive_ptr<c10d::Store>(std::move(store));
  });
}

void rt_dist_store_free(rt_store store) { delete static_cast<c10::intrusive_ptr<c10d::Store> *>(store); }

int rt_dist_store_set(rt_store store, const char *key, const uint8_t *value, int64_t len, char **err) {
  return guarded(err, [&] {
    std::vector<uint8_t> v(value, value + len);
    (*static_cast<c10::intrusive_ptr<c10d::Store> *>(store))->set(key, v);
  });
}

int rt_dist_store_get(rt_store store, const char *key, uint8_t **value, int64_t *len, char **err) {
  return guarded(err, [&] {
    auto v = (*static_cast<c10::intrusive_ptr<c10d::Store> *>(store))->get(key);
    *value = static_cast<uint8_t *>(std::malloc(v.size() ? v.size() : 1));
    if (!*value) throw std::bad_alloc();
    if (!v.empty()) std::memcpy(*value, v.data(), v.size());
    *len = static_cast<int64_t>(v.size());
  });
}

int rt_dist_gloo(rt_store store, const char *prefix, int rank, int world, int64_t timeout_ms,
                 rt_process_group *out, char **err) {
  return guarded(err, [&] {
    auto base = *static_cast<c10::intrusive_ptr<c10d::Store> *>(store);
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), base);
    // create_default: the device of GLOO_SOCKET_IFNAME when set, else the host name's address
    // (loopback when it does not resolve), as torch.distributed does.
    auto opts = c10d::ProcessGroupGloo::Options::create_default(std::chrono::milliseconds(timeout_ms));
    auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, rank, world, opts);
    *out = new ProcessGroup{prefixed, backend};
  });
}

void rt_dist_free(rt_process_group pg) { delete static_cast<ProcessGroup *>(pg); }

int rt_dist_prefixed(rt_store store, const char *prefix, rt_store *out, char **err) {
  return guarded(err, [&] {
    auto base = *static_cast<c10::intrusive_ptr<c10d::Store> *>(store);
    c10::intrusive_ptr<c10d::Store> prefixed = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), base);
    *out = new c10::intrusive_ptr<c10d::Store>(std::move(prefixed));
  });
}

int rt_dist_wrap_backend(rt_store store, void *backend, rt_process_group *out, char **err) {
  return guarded(err, [&] {
    auto holder = static_cast<c10::intrusive_ptr<c10d::Backend> *>(backend);
    *out = new ProcessGroup{*static_cast<c10::intrusive_ptr<c10d::Store> *>(store), *holder};
    delete holder;
  });
}

int rt_dist_allreduce(rt_process_group pg, rt_tensor *tensors, int n, int op, char **err) {
  return guarded(err, [&] {
    auto &g = pg_of(pg);
    c10d::AllreduceOptions opts;
    opts.reduceOp = reduce_op(op);
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (auto &t : list(tensors, n)) {
      std::vector<at::Tensor> one{t};
      works.push_back(g.backend->allreduce(one, opts));
    }
    wait_all(works);
  });
}

int rt_dist_broadcast(rt_process_group pg, rt_tensor *tensors, int n, int root, char **err) {
  return guarded(err, [&] {
    auto &g = pg_of(pg);
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (auto &t : list(tensors, n)) {
      std::vector<at::Tensor> one{t};
      works.push_back(g.backend->broadcast(one, opts));
    }
    wait_all(works);
  });
}

int rt_dist_allreduce_sum_autograd(rt_process_group pg, rt_tensor x, int host, rt_tensor *out, char **err) {
  return guarded(err, [&] {
    pg_of(pg);
    auto *t = static_cast<at::Tensor *>(x);
    *out = new at::Tensor(AllReduceSum::apply(*t, reinterpret_cast<int64_t>(pg), host != 0));
  });
}

int rt_dist_reducer_new(rt_process_group pg, rt_tensor *params, int n, int64_t bucket_bytes, int host,
                        void **out, char **err) {
  return guarded(err, [&] {
    auto r = std::make_unique<Reducer>();
    r->pg = &pg_of(pg);
    r->host = host != 0;
    r->params = list(params, n);
    r->bucket_of.assign(r->params.size(), 0);
    int64_t bytes = 0;
    for (size_t j = r->params.size(); j-- > 0;) {  // reverse order, as DDP
      auto &p = r->params[j];
      int64_t b = p.numel() * static_cast<int64_t>(p.element_size());
      bool fits = !r->buckets.empty() && bytes + b <= bucket_bytes &&
                  r->params[r->buckets.back().front()].scalar_type() == p.scalar_type();
      if (!fits) {
        r->buckets.emplace_back();
        bytes = 0;
      }
      r->buckets.back().push_back(j);
      r->bucket_of[j] = r->buckets.size() - 1;
      bytes += b;
    }
    r->self->store(r.get());
    auto cell = r->self;
    for (size_t i = 0; i < r->params.size(); i++) {
      if (!r->params[i].requires_grad()) throw std::invalid_argument("a parameter does not require grad");
      auto acc = torch::autograd::impl::grad_accumulator(r->params[i]);
      acc->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
          [cell, i](const torch::autograd::variable_list &outputs, const torch::autograd::variable_list &) {
            if (auto *reducer = cell->load()) reducer->mark(i);
            return outputs;
          }));
      r->accumulators.push_back(acc);
    }
    *out = r.release();
  });
}

int rt_dist_reducer_arm(void *reducer, char **err) {
  return guarded(err, [&] { static_cast<Reducer *>(reducer)->arm(); });
}

int rt_dist_reducer_finish(void *reducer, double world, char **err) {
  return guarded(err, [&] { static_cast<Reducer *>(reducer)->finish(world); });
}

int rt_dist_reducer_buckets(void *reducer) { return static_cast<int>(static_cast<Reducer *>(reducer)->buckets.size()); }

int rt_dist_reducer_launched_in_backward(void *reducer) {
  return static_cast<int>(static_cast<Reducer *>(reducer)->launched_in_backward);
}

int rt_dist_reducer_grads_as_views(void *reducer) {
  return static_cast<int>(static_cast<Reducer *>(reducer)->grads_as_views);
}

// Hooks left on accumulators that outlive the reducer find its cell empty.
void rt_dist_reducer_free(void *reducer) {
  auto *r = static_cast<Reducer *>(reducer);
  r->self->store(nullptr);
  delete r;
}

int rt_dist_barrier(rt_process_group pg, char **err) {
  return guarded(err, [&] {
    auto work = pg_of(pg).backend->barrier(c10d::BarrierOptions());
    work->wait();
  });
}

}  // extern "C"
