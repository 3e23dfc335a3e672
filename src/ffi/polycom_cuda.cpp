// CUDA back end of the fused PolyCom operators: compiles polycom.cu with NVRTC at first use and
// launches its kernels through the CUDA driver API on PyTorch's current stream.
//
// No CUDA toolkit, header or library is needed to build this: libnvrtc and libcuda are opened with
// dlopen at first use (PyTorch's CUDA install ships libnvrtc next to its other CUDA libraries),
// and the handful of driver/NVRTC functions used are declared here with their C ABI types.
#include "polycom.h"
#include "polycom_cuda_sim.h"

#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <dirent.h>
#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace rt_polycom::cuda {

namespace {

const char *kSource =
#include "polycom_cu.inc"
    ;

// ---- The C ABI of the few NVRTC and driver functions used (nvrtc.h, cuda.h) ----
using nvrtcProgram = void *;
using CUresult = int;
using CUdevice = int;
using CUcontext = void *;
using CUmodule = void *;
using CUfunction = void *;
using CUstream = void *;
constexpr int kAttrCcMajor = 75, kAttrCcMinor = 76;  // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_{MAJOR,MINOR}
constexpr int kAttrSmCount = 16;                      // CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT

struct Nvrtc {
  int (*create)(nvrtcProgram *, const char *, const char *, int, const char *const *, const char *const *);
  int (*compile)(nvrtcProgram, int, const char *const *);
  int (*log_size)(nvrtcProgram, size_t *);
  int (*log)(nvrtcProgram, char *);
  int (*ptx_size)(nvrtcProgram, size_t *);
  int (*ptx)(nvrtcProgram, char *);
  int (*cubin_size)(nvrtcProgram, size_t *);
  int (*cubin)(nvrtcProgram, char *);
  int (*destroy)(nvrtcProgram *);
  const char *(*error_string)(int);
  int (*version)(int *, int *);
};

struct Driver {
  CUresult (*init)(unsigned);
  CUresult (*device_get)(CUdevice *, int);
  CUresult (*attribute)(int *, int, CUdevice);
  CUresult (*ctx_get_current)(CUcontext *);
  CUresult (*ctx_set_current)(CUcontext);
  CUresult (*primary_ctx_retain)(CUcontext *, CUdevice);
  CUresult (*module_load_data)(CUmodule *, const void *);
  CUresult (*module_get_function)(CUfunction *, CUmodule, const char *);
  CUresult (*launch)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                     void **, void **);
  CUresult (*error_string)(CUresult, const char **);
  CUresult (*device_name)(char *, int, CUdevice);
  CUresult (*total_mem)(size_t *, CUdevice);
  CUresult (*driver_version)(int *);
};

template <typename F>
void bind(void *lib, const char *name, F &fn, const std::string &lib_name) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  if (!fn) throw std::runtime_error(lib_name + " has no " + name);
}

// The folder of the libtorch_cpu.so this process runs (libnvrtc sits at ../../nvidia/cu*/lib in a
// pip install of PyTorch).
std::string torch_lib_dir() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void *>(&at::globalContext), &info) && info.dli_fname) {
    std::string path = info.dli_fname;
    auto slash = path.rfind('/');
    if (slash != std::string::npos) return path.substr(0, slash);
  }
  return "";
}

// libnvrtc opens its builtins library by soname at compile time, which the loader finds only in
// its search paths; a pip install keeps it beside libnvrtc, so it is loaded from there first.
void preload_builtins(const std::string &dir) {
  DIR *d = opendir(dir.c_str());
  if (!d) return;
  while (dirent *e = readdir(d)) {
    const std::string name = e->d_name;
    if (name.rfind("libnvrtc-builtins.so", 0) == 0) dlopen((dir + "/" + name).c_str(), RTLD_NOW | RTLD_GLOBAL);
  }
  closedir(d);
}

void *open_nvrtc(const std::string &explicit_path, std::string &tried) {
  std::vector<std::string> names;
  if (!explicit_path.empty()) names.push_back(explicit_path);
  if (const char *env = std::getenv("RESNET_TRAIN_NVRTC")) names.push_back(env);
  const std::string dir = torch_lib_dir();
  if (!dir.empty()) {
    names.push_back(dir + "/../../nvidia/cu13/lib/libnvrtc.so.13");
    names.push_back(dir + "/../../nvidia/cuda_nvrtc/lib/libnvrtc.so.12");
    names.push_back(dir + "/libnvrtc.so");
  }
  for (const char *n : {"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"}) names.push_back(n);
  for (const auto &n : names) {
    if (n.find('/') != std::string::npos) preload_builtins(n.substr(0, n.rfind('/')));
    if (void *lib = dlopen(n.c_str(), RTLD_NOW | RTLD_GLOBAL)) return lib;
    tried += (tried.empty() ? "" : ", ") + n;
  }
  return nullptr;
}

Nvrtc load_nvrtc(const std::string &explicit_path) {
  std::string tried;
  void *lib = open_nvrtc(explicit_path, tried);
  if (!lib) throw std::runtime_error("libnvrtc not found (tried " + tried + "; set RESNET_TRAIN_NVRTC)");
  Nvrtc n{};
  const std::string name = "libnvrtc";
  bind(lib, "nvrtcCreateProgram", n.create, name);
  bind(lib, "nvrtcCompileProgram", n.compile, name);
  bind(lib, "nvrtcGetProgramLogSize", n.log_size, name);
  bind(lib, "nvrtcGetProgramLog", n.log, name);
  bind(lib, "nvrtcGetPTXSize", n.ptx_size, name);
  bind(lib, "nvrtcGetPTX", n.ptx, name);
  bind(lib, "nvrtcGetCUBINSize", n.cubin_size, name);
  bind(lib, "nvrtcGetCUBIN", n.cubin, name);
  bind(lib, "nvrtcDestroyProgram", n.destroy, name);
  bind(lib, "nvrtcGetErrorString", n.error_string, name);
  bind(lib, "nvrtcVersion", n.version, name);
  return n;
}

Driver load_driver() {
  void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
  if (!lib) throw std::runtime_error("libcuda.so.1 (the NVIDIA driver) not found");
  Driver d{};
  const std::string name = "libcuda.so.1";
  bind(lib, "cuInit", d.init, name);
  bind(lib, "cuDeviceGet", d.device_get, name);
  bind(lib, "cuDeviceGetAttribute", d.attribute, name);
  bind(lib, "cuCtxGetCurrent", d.ctx_get_current, name);
  bind(lib, "cuCtxSetCurrent", d.ctx_set_current, name);
  bind(lib, "cuDevicePrimaryCtxRetain", d.primary_ctx_retain, name);
  bind(lib, "cuModuleLoadData", d.module_load_data, name);
  bind(lib, "cuModuleGetFunction", d.module_get_function, name);
  bind(lib, "cuLaunchKernel", d.launch, name);
  bind(lib, "cuGetErrorString", d.error_string, name);
  bind(lib, "cuDeviceGetName", d.device_name, name);
  bind(lib, "cuDeviceTotalMem_v2", d.total_mem, name);
  bind(lib, "cuDriverGetVersion", d.driver_version, name);
  return d;
}

// ---- Tuning: what a GPU session may vary without a rebuild (RESNET_TRAIN_CUDA_TUNING) ----
// The kernels' register budget and grid size are guesses until measured on a GPU, and GPUs are
// lent for minutes: a comma-separated list such as "min_blocks=4,blocks_per_sm=16" lets one
// device call compare settings (`bench-act`) instead of one setting per build.
//   min_blocks:    __launch_bounds__' minimum resident blocks per SM (0: unspecified, ptxas
//                  chooses the registers); n caps registers at 65536 / (256 n): occupancy vs spills.
//   blocks_per_sm: grid-stride kernels' grid, per SM (default 8).
//   bn_fold:       1 (default): in training, batch norm's backward sums are taken by the
//                  channels-last backward kernels (polycom.cu `_fold`); 0: batch norm's own backward.
struct Tuning {
  int min_blocks = 0;
  int blocks_per_sm = 8;
  int bn_fold = 1;
};

Tuning parse_tuning(const std::string &spec) {
  Tuning t;
  size_t start = 0;
  while (start < spec.size()) {
    size_t end = spec.find(',', start);
    if (end == std::string::npos) end = spec.size();
    const std::string item = spec.substr(start, end - start);
    start = end + 1;
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    const std::string key = item.substr(0, eq);
    int value = -1;
    try {
      size_t used = 0;
      if (eq != std::string::npos) value = std::stoi(item.substr(eq + 1), &used);
      if (eq == std::string::npos || used != item.size() - eq - 1) value = -1;
    } catch (const std::exception &) {
      value = -1;
    }
    if (key == "min_blocks" && value >= 0 && value <= 8) {
      t.min_blocks = value;
    } else if (key == "blocks_per_sm" && value >= 1 && value <= 64) {
      t.blocks_per_sm = value;
    } else if (key == "bn_fold" && (value == 0 || value == 1)) {
      t.bn_fold = value;
    } else {
      throw std::invalid_argument("RESNET_TRAIN_CUDA_TUNING: \"" + item +
                                  "\" is not min_blocks=0..8, blocks_per_sm=1..64 or bn_fold=0|1");
    }
  }
  return t;
}

// NVRTC's options for `arch` under tuning t.
std::vector<std::string> compile_options(const std::string &arch, const Tuning &t) {
  std::vector<std::string> o = {"--gpu-architecture=" + arch, "--std=c++17", "-default-device"};
  if (t.min_blocks > 0) o.push_back("-DRT_MIN_BLOCKS=" + std::to_string(t.min_blocks));
  return o;
}

// Compiles the kernels for `arch` ("sm_90": a cubin, "compute_90": PTX); throws with NVRTC's log.
// With `ptxas_report`, ptxas's per-kernel report (registers, spills) is written there.
std::string compile(const Nvrtc &n, const std::string &arch, const Tuning &tuning,
                    std::string *ptxas_report = nullptr) {
  nvrtcProgram prog = nullptr;
  if (int rc = n.create(&prog, kSource, "polycom.cu", 0, nullptr, nullptr))
    throw std::runtime_error(std::string("nvrtcCreateProgram: ") + n.error_string(rc));
  auto options = compile_options(arch, tuning);
  if (ptxas_report) options.push_back("--ptxas-options=-v");
  std::vector<const char *> opts;
  for (const auto &o : options) opts.push_back(o.c_str());
  const int rc = n.compile(prog, static_cast<int>(opts.size()), opts.data());
  size_t log_size = 0;
  n.log_size(prog, &log_size);
  std::string log(log_size, '\0');
  if (log_size > 1) n.log(prog, log.data());
  if (rc != 0) {
    n.destroy(&prog);
    throw std::runtime_error("NVRTC could not compile polycom.cu for " + arch + ": " + n.error_string(rc) + "\n" +
                             log);
  }
  if (ptxas_report) *ptxas_report = log;
  const bool cubin = arch.rfind("sm_", 0) == 0;
  size_t size = 0;
  (cubin ? n.cubin_size : n.ptx_size)(prog, &size);
  std::string image(size, '\0');
  (cubin ? n.cubin : n.ptx)(prog, image.data());
  n.destroy(&prog);
  return image;
}

// ---- The compiled kernels, cached on disk ----
// Compiling all the kernels takes NVRTC several seconds, in every process (every rank, every
// bench run): the image is kept in the cache folder (~/.cache/resnet-train/kernels), as PyTorch
// keeps its JIT kernels, under a name that hashes everything it depends on (the source, the
// architecture, the options, NVRTC's version), so a changed source never loads a stale image.
// The file holds a checksum of the image: a truncated or damaged file is compiled again.

std::mutex g_cache_mutex;
std::string g_cache_dir;  // empty: no cache

uint64_t fnv1a(const void *data, size_t n, uint64_t h = 1469598103934665603ull) {
  const auto *p = static_cast<const unsigned char *>(data);
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

constexpr char kMagic[8] = {'R', 'T', 'C', 'U', 'B', 'I', 'N', '1'};

std::string cache_path(const Nvrtc &n, const std::string &dir, const std::string &arch, const Tuning &tuning) {
  int major = 0, minor = 0;
  n.version(&major, &minor);
  std::string key = std::string(kSource) + '\0' + std::to_string(major) + '.' + std::to_string(minor);
  for (const auto &o : compile_options(arch, tuning)) key += '\0' + o;
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(fnv1a(key.data(), key.size())));
  return dir + "/polycom-" + arch + "-" + hex + ".bin";
}

// The image stored at `path`, or empty when it is absent, truncated or damaged.
std::string read_cached(const std::string &path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return "";
  char magic[8];
  uint64_t size = 0, sum = 0;
  if (!f.read(magic, 8) || std::memcmp(magic, kMagic, 8) != 0) return "";
  if (!f.read(reinterpret_cast<char *>(&size), 8) || !f.read(reinterpret_cast<char *>(&sum), 8)) return "";
  if (size == 0 || size > (uint64_t(1) << 30)) return "";
  std::string image(size, '\0');
  if (!f.read(image.data(), static_cast<std::streamsize>(size)) || f.peek() != EOF) return "";
  return fnv1a(image.data(), image.size()) == sum ? image : "";
}

// Keeps the kCachedImages most recently written images in `dir` (every source change and tuning
// writes one, ~1 MB): older ones are removed.
constexpr size_t kCachedImages = 8;

void prune_cached(const std::filesystem::path &dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::vector<std::pair<fs::file_time_type, fs::path>> images;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind("polycom-", 0) != 0 || it->path().extension() != ".bin") continue;
    std::error_code time_ec;
    const auto written = fs::last_write_time(it->path(), time_ec);
    if (!time_ec) images.emplace_back(written, it->path());
  }
  if (images.size() <= kCachedImages) return;
  std::sort(images.begin(), images.end(), [](const auto &a, const auto &b) { return a.first > b.first; });
  for (size_t i = kCachedImages; i < images.size(); i++) fs::remove(images[i].second, ec);
}

// Stores the image beside its final name, then renames it into place: processes that start
// together (the ranks of a job) each write their own file and one rename wins. A folder that
// cannot be written only costs the next process a compile.
void write_cached(const std::string &path, const std::string &image) {
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  const std::string tmp = path + ".tmp" + std::to_string(::getpid());
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    const uint64_t size = image.size(), sum = fnv1a(image.data(), image.size());
    f.write(kMagic, 8);
    f.write(reinterpret_cast<const char *>(&size), 8);
    f.write(reinterpret_cast<const char *>(&sum), 8);
    f.write(image.data(), static_cast<std::streamsize>(image.size()));
    if (!f) {
      f.close();
      std::filesystem::remove(tmp, ec);
      return;
    }
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) std::filesystem::remove(tmp, ec);
  prune_cached(std::filesystem::path(path).parent_path());
}

// The kernels for `arch` from the cache folder `dir` (when set), else compiled and stored there.
std::string cached_compile(const Nvrtc &n, const std::string &arch, const Tuning &tuning, const std::string &dir,
                           bool *from_cache) {
  *from_cache = false;
  if (dir.empty()) return compile(n, arch, tuning);
  const std::string path = cache_path(n, dir, arch, tuning);
  std::string image = read_cached(path);
  if (!image.empty()) {
    *from_cache = true;
    return image;
  }
  image = compile(n, arch, tuning);
  write_cached(path, image);
  return image;
}

std::string cache_dir() {
  std::lock_guard<std::mutex> lock(g_cache_mutex);
  return g_cache_dir;
}

void check(const Driver &d, CUresult rc, const char *what) {
  if (rc == 0) return;
  const char *msg = nullptr;
  d.error_string(rc, &msg);
  throw std::runtime_error(std::string(what) + ": " + (msg ? msg : "CUDA error " + std::to_string(rc)));
}

// A device's loaded image and the kernels looked up in it so far. Kernels are looked up by name on
// first launch (launch() forms the name from the tensors' types), so no list of names here can
// fall behind the ones polycom.cu defines: a list of six type tags once missed the `_wide`
// kernels, which only a GPU would have found. unavailable_reason looks up every kernel the SIMT
// emulator's build of polycom.cu registers (sim::kernel_names) before a run uses the device, and
// tests/fused_activation.rs checks that the compiled image's entry points are those names.
struct Module {
  CUmodule image = nullptr;
  std::map<std::string, CUfunction> functions;
  int sm_count = 1;
};

// Process-wide state: the libraries, and one module per device (loaded into its primary context).
struct Runtime {
  std::mutex mutex;
  bool loaded = false;
  std::string load_error;
  Nvrtc nvrtc{};
  Driver driver{};
  std::map<int, Module> modules;
  std::map<int, std::string> module_errors;
  Tuning tuning;

  void load() {
    if (loaded || !load_error.empty()) return;
    try {
      const char *spec = std::getenv("RESNET_TRAIN_CUDA_TUNING");
      tuning = parse_tuning(spec ? spec : "");
      nvrtc = load_nvrtc("");
      driver = load_driver();
      check(driver, driver.init(0), "cuInit");
      loaded = true;
    } catch (const std::exception &e) {
      load_error = e.what();
    }
  }

  // The current context, or the device's primary one (the context PyTorch's runtime API uses).
  void bind_context(int device) {
    CUcontext ctx = nullptr;
    check(driver, driver.ctx_get_current(&ctx), "cuCtxGetCurrent");
    if (ctx) return;
    CUdevice dev = 0;
    check(driver, driver.device_get(&dev, device), "cuDeviceGet");
    check(driver, driver.primary_ctx_retain(&ctx, dev), "cuDevicePrimaryCtxRetain");
    check(driver, driver.ctx_set_current(ctx), "cuCtxSetCurrent");
  }

  Module &module(int device) {
    load();
    if (!loaded) throw std::runtime_error("fused PolyCom on CUDA: " + load_error);
    auto it = modules.find(device);
    if (it != modules.end()) return it->second;
    auto err = module_errors.find(device);
    if (err != module_errors.end()) throw std::runtime_error(err->second);
    try {
      bind_context(device);
      CUdevice dev = 0;
      check(driver, driver.device_get(&dev, device), "cuDeviceGet");
      int major = 0, minor = 0;
      check(driver, driver.attribute(&major, kAttrCcMajor, dev), "cuDeviceGetAttribute");
      check(driver, driver.attribute(&minor, kAttrCcMinor, dev), "cuDeviceGetAttribute");
      bool from_cache = false;
      const std::string arch = "sm_" + std::to_string(major) + std::to_string(minor);
      const std::string image = cached_compile(nvrtc, arch, tuning, cache_dir(), &from_cache);
      Module m;
      CUresult rc = driver.module_load_data(&m.image, image.data());
      if (rc != 0 && from_cache) {
        // An image compiled elsewhere (`check-act --compile-for`, carried to this machine) that
        // this driver does not take: compile here instead of losing the fused path.
        const std::string fresh = compile(nvrtc, arch, tuning);
        write_cached(cache_path(nvrtc, cache_dir(), arch, tuning), fresh);
        rc = driver.module_load_data(&m.image, fresh.data());
      }
      check(driver, rc, "cuModuleLoadData");
      check(driver, driver.attribute(&m.sm_count, kAttrSmCount, dev), "cuDeviceGetAttribute");
      return modules.emplace(device, std::move(m)).first->second;
    } catch (const std::exception &e) {
      module_errors[device] = std::string("fused PolyCom on cuda:") + std::to_string(device) + ": " + e.what();
      throw std::runtime_error(module_errors[device]);
    }
  }

  // Kernel `name` of a device's image (looked up once, then remembered). The caller holds mutex.
  CUfunction function(Module &m, const std::string &name) {
    auto it = m.functions.find(name);
    if (it != m.functions.end()) return it->second;
    CUfunction f = nullptr;
    check(driver, driver.module_get_function(&f, m.image, name.c_str()), ("cuModuleGetFunction " + name).c_str());
    return m.functions.emplace(name, f).first->second;
  }
};

std::atomic<bool> g_simulated{false};

Runtime &runtime() {
  static Runtime *r = new Runtime();  // never destroyed: kernels may run during static teardown
  return *r;
}

constexpr unsigned kBlock = 256, kWarps = kBlock / 32;
// Grid-stride kernels' grid (Tuning::blocks_per_sm per SM, default 8): enough blocks to fill every
// SM several times over, few enough that each block's dw/db reduction is amortised over many
// elements. Simulated: a few blocks, so that every thread runs several iterations of its loop.
constexpr int64_t kSimulatedBlocks = 3;

const char *tag_of(const at::Tensor &x) {
  switch (x.scalar_type()) {
    case at::kFloat: return "f32";
    case at::kDouble: return "f64";
    case at::kBFloat16: return "bf16";
    case at::kHalf: return "f16";
    default: throw std::invalid_argument(std::string("fused PolyCom: unsupported input dtype ") +
                                         c10::toString(x.scalar_type()));
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The most blocks worth launching for a grid-stride kernel on x's device.
int64_t max_blocks(const at::Tensor &x) {
  if (g_simulated.load()) return kSimulatedBlocks;
  c10::DeviceGuard guard(x.device());
  auto &rt = runtime();
  std::lock_guard<std::mutex> lock(rt.mutex);
  return int64_t(rt.tuning.blocks_per_sm) * rt.module(x.device().index()).sm_count;
}

// The elements of x's type in 16 bytes, when every tensor starts on a 16-byte boundary (and `row`,
// the elements per row, is a multiple of them): the `_vec` kernels' vector width. Else 1.
int64_t vector_width(const at::Tensor &x, std::initializer_list<const at::Tensor *> tensors, int64_t row = 0) {
  const int64_t v = 16 / static_cast<int64_t>(x.element_size());
  for (const at::Tensor *t : tensors)
    if (reinterpret_cast<uintptr_t>(t->const_data_ptr()) % 16 != 0) return 1;
  return row % v == 0 ? v : 1;
}

// Lanes per row for the rows kernels: a power of two <= 32 that gives every lane whole vectors.
int group_size(int64_t channels, int64_t vec) {
  int g = 1;
  while (g < 32 && int64_t(g) * 2 * vec <= channels) g *= 2;
  return g;
}

// Whether bn's identity is fp32 while z (x) is bf16/fp16: polycom.cu's `_wide` kernels.
bool wide_identity(const at::Tensor &x, const BatchNormOnLoad *bn) {
  return bn && bn->identity.defined() && bn->identity.scalar_type() == at::kFloat &&
         (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf);
}

// Launches kernel `name` on x's device and current stream, `blocks` blocks of 256 threads.
// Simulated: the same kernel, compiled for the host, runs on CPU tensors under the SIMT emulator.
void launch_named(const at::Tensor &x, const std::string &name, int64_t blocks, std::vector<void *> args) {
  if (blocks <= 0) return;
  if (blocks > 0x7fffffff) throw std::invalid_argument("fused PolyCom: tensor too large for one launch");
  if (g_simulated.load()) {
    if (!x.is_cpu()) throw std::invalid_argument("simulated CUDA kernels run on CPU tensors only");
    sim::launch(name, blocks, kBlock, args.data());
    return;
  }
  c10::DeviceGuard guard(x.device());
  auto &rt = runtime();
  std::lock_guard<std::mutex> lock(rt.mutex);
  auto &mod = rt.module(x.device().index());
  rt.bind_context(x.device().index());
  const c10::Stream stream = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(x.device());
  CUfunction f = rt.function(mod, name);
  check(rt.driver,
        rt.driver.launch(f, static_cast<unsigned>(blocks), 1, 1, kBlock, 1, 1, 0, stream.native_handle(), args.data(),
                         nullptr),
        ("cuLaunchKernel " + name).c_str());
}

// Launches `kernel`_<x's type>; `kernel`_<x's type>_lp where the output `y` (or its gradient) has
// x's low-precision type, `kernel`_<x's type>_wide with an fp32 identity on load (`wide`).
void launch(const at::Tensor &x, const at::Tensor &y, bool wide, const std::string &kernel, int64_t blocks,
            std::vector<void *> args) {
  const bool lowp_out = y.scalar_type() == x.scalar_type() &&
                        (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf);
  launch_named(x, kernel + "_" + tag_of(x) + (wide ? "_wide" : lowp_out ? "_lp" : ""), blocks, std::move(args));
}

// The arithmetic type: fp64 for fp64 inputs, else fp32.
at::ScalarType acc_of(const at::Tensor &x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// The coefficients in the arithmetic type, on the device (no host round trip).
at::Tensor acc_coefs(const at::Tensor &t, const at::Tensor &x) { return t.detach().to(acc_of(x)).contiguous(); }

// polycom.cu's Source<T, A>, field for field (A: float, or double for fp64 inputs).
template <typename A>
struct HostSource {
  const void *x, *identity, *scale, *shift;
  A clamp;
  long long inner;
  int C;
};

// The backward kernels' view of x: x itself, or z with batch norm's affine map (and the
// identity and the clamp) applied on load. Both types built; `get` points at x's.
struct SourceArg {
  HostSource<float> f;
  HostSource<double> d;
  at::Tensor scale, shift;  // kept alive for the launch
  void *get(const at::Tensor &x) { return acc_of(x) == at::kDouble ? static_cast<void *>(&d) : &f; }
};

SourceArg source_arg(const at::Tensor &x, const BatchNormOnLoad *bn, int64_t inner, int64_t channels) {
  SourceArg a{};
  a.f = {x.const_data_ptr(), nullptr, nullptr, nullptr, 0.f, inner, static_cast<int>(channels)};
  if (bn) {
    if (bn->identity.defined() &&
        ((bn->identity.scalar_type() != x.scalar_type() && !wide_identity(x, bn)) ||
         bn->identity.strides() != x.strides() || bn->identity.sizes() != x.sizes()))
      throw std::invalid_argument("fused BatchNorm + activation: the residual must have z's layout, and z's type "
                                  "or (bf16/fp16 z) fp32");
    a.scale = bn->scale.to(acc_of(x)).contiguous();
    a.shift = bn->shift.to(acc_of(x)).contiguous();
    if (a.scale.numel() != channels || a.shift.numel() != channels)
      throw std::invalid_argument("fused BatchNorm + activation: one scale and shift per channel expected");
    a.f.identity = bn->identity.defined() ? bn->identity.const_data_ptr() : nullptr;
    a.f.scale = a.scale.const_data_ptr();
    a.f.shift = a.shift.const_data_ptr();
    a.f.clamp = static_cast<float>(bn->clamp);
  }
  a.d = {a.f.x, a.f.identity, a.f.scale, a.f.shift, bn ? bn->clamp : 0.0, a.f.inner, a.f.C};
  return a;
}

// Grid and kernel variant of a rows kernel (channels-last PolyNorm) or an elementwise one.
struct RowsLaunch {
  std::string suffix;  // "" or "_vec"
  int group;
  int64_t blocks;
};

RowsLaunch rows_launch(const at::Tensor &x, std::initializer_list<const at::Tensor *> tensors, NormShape s) {
  const int64_t vec = vector_width(x, tensors, s.channels);
  const int g = group_size(s.channels, vec);
  const int64_t rows_per_block = kWarps * (32 / g);
  return {vec > 1 ? "_vec" : "", g, std::min(ceil_div(s.outer, rows_per_block), max_blocks(x))};
}

RowsLaunch elementwise_launch(const at::Tensor &x, std::initializer_list<const at::Tensor *> tensors) {
  const int64_t vec = vector_width(x, tensors);
  return {vec > 1 ? "_vec" : "", 1, std::min(ceil_div(x.numel(), kBlock * vec), max_blocks(x))};
}

}  // namespace

void polynorm_forward(const at::Tensor &x, const at::Tensor &w, const at::Tensor &b, double eps, NormShape s,
                      at::Tensor &y, at::Tensor &rs, const BatchNormOnLoad *bn) {
  auto wa = acc_coefs(w, x), ba = acc_coefs(b, x);
  auto src = source_arg(x, bn, s.inner, s.channels);
  const at::Tensor &identity = bn && bn->identity.defined() ? bn->identity : x;
  void *yp = y.data_ptr(), *rp = rs.data_ptr(), *wp = wa.data_ptr(), *bp = ba.data_ptr();
  long long outer = s.outer, inner = s.inner;
  int channels = static_cast<int>(s.channels), k = static_cast<int>(w.numel());
  float eps_f = static_cast<float>(eps);
  double eps_d = eps;
  void *eps_p = acc_of(x) == at::kDouble ? static_cast<void *>(&eps_d) : static_cast<void *>(&eps_f);
  if (s.inner == 1) {
    auto l = rows_launch(x, {&x, &identity, &y}, s);
    int group = l.group;
    launch(x, y, wide_identity(x, bn), "polynorm_fwd_rows" + l.suffix, l.blocks,
           {src.get(x), &yp, &rp, &wp, &bp, &outer, &channels, &k, eps_p, &group});
  } else {
    launch(x, y, wide_identity(x, bn), "polynorm_fwd_cols", ceil_div(s.outer * s.inner, kBlock),
           {src.get(x), &yp, &rp, &wp, &bp, &outer, &channels, &inner, &k, eps_p});
  }
}

namespace {

// Whether RESNET_TRAIN_CUDA_TUNING leaves the folded batch norm backward on (read once; the
// CLI checks the variable at start-up, so a wrong value never gets here).
bool bn_fold_enabled() {
  static const bool enabled = [] {
    const char *spec = std::getenv("RESNET_TRAIN_CUDA_TUNING");
    try {
      return parse_tuning(spec ? spec : "").bn_fold != 0;
    } catch (const std::exception &) {
      return true;
    }
  }();
  return enabled;
}

// polycom.cu's FOLD_CAP: the channels per lane whose sums a `_fold` kernel's block holds in its
// FOLD_BYTES of shared memory (two sums per channel).
constexpr int64_t kFoldBytes = 40960;
int64_t fold_capacity(const at::Tensor &x) { return kFoldBytes / (acc_of(x) == at::kDouble ? 8 : 4) / kBlock / 2; }

std::atomic<int64_t> g_bn_folds{0};

// Whether a rows kernel launched as `l` over x ([outer, C] rows) takes batch norm's sums: where
// each lane's channels (whole vectors) fit the kernel's shared memory, every channel count of
// ResNet-50 up to 512 in bf16/fp16 and fp32.
bool folds(const at::Tensor &x, NormShape s, const RowsLaunch &l) {
  const int64_t vec = l.suffix.empty() ? 1 : 16 / static_cast<int64_t>(x.element_size());
  return s.inner == 1 && x.numel() > 0 && bn_fold_enabled() &&
         ceil_div(s.channels, l.group * vec) * vec <= fold_capacity(x);
}

}  // namespace

std::pair<at::Tensor, at::Tensor> polynorm_backward(const at::Tensor &x, const at::Tensor &gy, const at::Tensor &rs,
                                                    const at::Tensor &w, const at::Tensor &b, NormShape s,
                                                    at::Tensor &dx, const BatchNormOnLoad *bn, BnFold *fold) {
  const int64_t k64 = w.numel();
  const bool rows = s.inner == 1;
  const at::Tensor &identity = bn && bn->identity.defined() ? bn->identity : x;
  const auto l = rows && x.numel() > 0 ? rows_launch(x, {&x, &identity, &gy, &dx}, s) : RowsLaunch{"", 1, 0};
  const int64_t blocks = rows ? l.blocks : ceil_div(s.outer * s.inner, kBlock);
  auto partials = at::zeros({std::max<int64_t>(blocks, 1), k64 + 1}, x.options().dtype(acc_of(x)));
  const bool folding = fold && bn && rows && folds(x, s, l);
  if (folding) fold->partials = at::empty({blocks, 2 * s.channels}, x.options().dtype(acc_of(x)));
  if (x.numel() > 0) {
    auto wa = acc_coefs(w, x);
    auto src = source_arg(x, bn, s.inner, s.channels);
    const void *gp = gy.const_data_ptr(), *rp = rs.const_data_ptr();
    void *dxp = dx.data_ptr(), *wp = wa.data_ptr(), *pp = partials.data_ptr();
    long long outer = s.outer, inner = s.inner;
    int channels = static_cast<int>(s.channels), k = static_cast<int>(k64), group = l.group;
    if (folding) {
      const void *mp = fold->mean.const_data_ptr();
      void *fp = fold->partials.data_ptr();
      launch(x, gy, wide_identity(x, bn), "polynorm_bwd_rows_fold" + l.suffix, blocks,
             {src.get(x), &gp, &rp, &dxp, &wp, &pp, &outer, &channels, &k, &group, &mp, &fp});
      g_bn_folds++;
    } else if (rows) {
      launch(x, gy, wide_identity(x, bn), "polynorm_bwd_rows" + l.suffix, blocks,
             {src.get(x), &gp, &rp, &dxp, &wp, &pp, &outer, &channels, &k, &group});
    } else {
      launch(x, gy, wide_identity(x, bn), "polynorm_bwd_cols", blocks,
             {src.get(x), &gp, &rp, &dxp, &wp, &pp, &outer, &channels, &inner, &k});
    }
  }
  return coef_grads(partials.sum(0), w, b);
}

// PolyReLU's elements as [N, C, inner] (inner = 1 for channels-last and 2-d tensors): what the
// kernels need to find an element's channel when batch norm is folded in.
std::pair<int64_t, int64_t> elementwise_channels(const at::Tensor &x, const BatchNormOnLoad *bn) {
  int64_t inner = 1, channels = x.dim() >= 2 ? x.size(1) : 1;
  if (!bn) return {inner, channels};
  if (x.dim() < 2) throw std::invalid_argument("fused BatchNorm + activation: input needs a channel axis");
  const bool channels_last = x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  if (!channels_last && !x.is_contiguous())
    throw std::invalid_argument("fused BatchNorm + activation: input must be contiguous or channels-last");
  if (!channels_last && channels > 0 && x.size(0) > 0) inner = x.numel() / (x.size(0) * channels);
  return {inner, channels};
}

// The elementwise kernels' launch over x and `tensors`; with batch norm folded in, a vector must
// stay in one channel plane (or run over consecutive channels, inner == 1).
RowsLaunch polyrelu_launch(const at::Tensor &x, std::initializer_list<const at::Tensor *> tensors,
                           const BatchNormOnLoad *bn, int64_t inner) {
  auto l = elementwise_launch(x, tensors);
  if (bn && !l.suffix.empty() && inner != 1 && inner % (16 / static_cast<int64_t>(x.element_size())) != 0)
    l = RowsLaunch{"", 1, std::min(ceil_div(x.numel(), kBlock), max_blocks(x))};
  return l;
}

void polyrelu_forward(const at::Tensor &x, const at::Tensor &w, const at::Tensor &b, at::Tensor &y,
                      const BatchNormOnLoad *bn) {
  if (x.numel() == 0) return;
  auto wa = acc_coefs(w, x), ba = acc_coefs(b, x);
  const auto [inner, channels] = elementwise_channels(x, bn);
  auto src = source_arg(x, bn, inner, channels);
  const at::Tensor &identity = bn && bn->identity.defined() ? bn->identity : x;
  void *yp = y.data_ptr(), *wp = wa.data_ptr(), *bp = ba.data_ptr();
  long long n = x.numel();
  int k = static_cast<int>(w.numel());
  auto l = polyrelu_launch(x, {&x, &identity, &y}, bn, inner);
  launch(x, y, wide_identity(x, bn), "polyrelu_fwd" + l.suffix, l.blocks, {src.get(x), &yp, &wp, &bp, &n, &k});
}

std::pair<at::Tensor, at::Tensor> polyrelu_backward(const at::Tensor &x, const at::Tensor &gy, const at::Tensor &w,
                                                    const at::Tensor &b, at::Tensor &dx, const BatchNormOnLoad *bn,
                                                    BnFold *fold) {
  const int64_t k64 = w.numel();
  const auto [inner, channels] = elementwise_channels(x, bn);
  const at::Tensor &identity = bn && bn->identity.defined() ? bn->identity : x;
  if (fold && bn && inner == 1 && channels > 0) {
    // Batch norm's sums folded in: the rows walk of PolyNorm's kernels, whose lanes keep their
    // channels from row to row.
    const NormShape s{x.numel() / channels, channels, 1};
    const auto l = x.numel() > 0 ? rows_launch(x, {&x, &identity, &gy, &dx}, s) : RowsLaunch{"", 1, 0};
    if (folds(x, s, l)) {
      auto partials = at::zeros({l.blocks, k64 + 1}, x.options().dtype(acc_of(x)));
      fold->partials = at::empty({l.blocks, 2 * channels}, x.options().dtype(acc_of(x)));
      auto wa = acc_coefs(w, x);
      auto src = source_arg(x, bn, inner, channels);
      const void *gp = gy.const_data_ptr(), *mp = fold->mean.const_data_ptr();
      void *dxp = dx.data_ptr(), *wp = wa.data_ptr(), *pp = partials.data_ptr(), *fp = fold->partials.data_ptr();
      long long rows = s.outer;
      int c32 = static_cast<int>(channels), k = static_cast<int>(k64), group = l.group;
      launch(x, gy, wide_identity(x, bn), "polyrelu_bwd_rows_fold" + l.suffix, l.blocks,
             {src.get(x), &gp, &dxp, &wp, &pp, &rows, &c32, &k, &group, &mp, &fp});
      g_bn_folds++;
      return coef_grads(partials.sum(0), w, b);
    }
  }
  const auto l = x.numel() > 0 ? polyrelu_launch(x, {&x, &identity, &gy, &dx}, bn, inner) : RowsLaunch{"", 1, 0};
  auto partials = at::zeros({std::max<int64_t>(l.blocks, 1), k64 + 1}, x.options().dtype(acc_of(x)));
  if (x.numel() > 0) {
    auto wa = acc_coefs(w, x);
    auto src = source_arg(x, bn, inner, channels);
    const void *gp = gy.const_data_ptr();
    void *dxp = dx.data_ptr(), *wp = wa.data_ptr(), *pp = partials.data_ptr();
    long long n = x.numel();
    int k = static_cast<int>(k64);
    launch(x, gy, wide_identity(x, bn), "polyrelu_bwd" + l.suffix, l.blocks,
           {src.get(x), &gp, &dxp, &wp, &pp, &n, &k});
  }
  return coef_grads(partials.sum(0), w, b);
}

std::pair<at::Tensor, at::Tensor> bn_fold_backward(const at::Tensor &z, const at::Tensor &dx, const BnFold &fold,
                                                   const at::Tensor &invstd, const at::Tensor &gamma, NormShape s,
                                                   at::Tensor &dz) {
  const int64_t C = s.channels, blocks = fold.partials.size(0);
  const auto acc = acc_of(z);
  auto options = z.options().dtype(acc);
  auto coefs = at::empty({4 * C}, options), dgamma = at::empty({C}, options), dbeta = at::empty({C}, options);
  const auto invstd_a = invstd.to(acc).contiguous();
  const auto gamma_a = gamma.defined() ? gamma.detach().to(acc).contiguous() : at::Tensor();
  const int64_t count = C > 0 ? z.numel() / C : 0;
  {
    const void *pp = fold.partials.const_data_ptr(), *mp = fold.mean.const_data_ptr(),
               *ip = invstd_a.const_data_ptr(), *gp = gamma_a.defined() ? gamma_a.const_data_ptr() : nullptr;
    void *cp = coefs.data_ptr(), *dgp = dgamma.data_ptr(), *dbp = dbeta.data_ptr();
    long long nblocks = blocks;
    int c32 = static_cast<int>(C);
    float count_f = static_cast<float>(count);
    double count_d = static_cast<double>(count);
    void *count_p = acc == at::kDouble ? static_cast<void *>(&count_d) : static_cast<void *>(&count_f);
    launch_named(z, std::string("bn_fold_finalize_") + (acc == at::kDouble ? "f64" : "f32"), ceil_div(C, kBlock),
                 {&pp, &nblocks, &c32, count_p, &mp, &ip, &gp, &cp, &dgp, &dbp});
  }
  if (dz.defined() && z.numel() > 0) {
    const bool wide = dx.scalar_type() != z.scalar_type();
    // A vector stays in one channel plane (NCHW: H*W a multiple of it) or runs over consecutive
    // channels (channels-last), as the elementwise kernels need.
    int64_t vec = vector_width(z, {&z, &dx, &dz});
    if (s.inner != 1 && s.inner % vec != 0) vec = 1;
    const std::string name =
        std::string("bn_bwd_elemt") + (vec > 1 ? "_vec_" : "_") + tag_of(z) + (wide ? "_wide" : "");
    const void *dxp = dx.const_data_ptr(), *zp = z.const_data_ptr(), *cp = coefs.const_data_ptr();
    void *dzp = dz.data_ptr();
    long long n = z.numel(), inner = s.inner;
    int c32 = static_cast<int>(C);
    launch_named(z, name, std::min(ceil_div(n, kBlock * vec), max_blocks(z)), {&dxp, &zp, &dzp, &cp, &n, &c32, &inner});
  }
  return {dgamma, dbeta};
}

int64_t bn_fold_count() { return g_bn_folds.load(); }

void set_simulated(bool on) { g_simulated.store(on); }
bool simulated() { return g_simulated.load(); }

namespace {

// Empty when f runs, else its exception's message: the form the checks below return.
template <typename F>
std::string error_of(F f) {
  try {
    f();
    return "";
  } catch (const std::exception &e) {
    return e.what();
  }
}

}  // namespace

std::string unavailable_reason(int device) {
  return error_of([&] {
    c10::DeviceGuard guard(c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device)));
    auto &rt = runtime();
    std::lock_guard<std::mutex> lock(rt.mutex);
    auto &m = rt.module(device);
    // Every kernel polycom.cu defines is in the image, so a run does not find a missing one only
    // when it first launches it.
    for (const auto &name : sim::kernel_names()) rt.function(m, name);
  });
}

std::string describe_device(int device) {
  // The driver's own view, so that every record names the card without a CUDA toolkit or
  // nvidia-smi: what a benchmark row or a session log needs to be read months later.
  const Driver d = load_driver();
  check(d, d.init(0), "cuInit");
  CUdevice dev = 0;
  check(d, d.device_get(&dev, device), "cuDeviceGet");
  char name[256] = {};
  check(d, d.device_name(name, sizeof(name) - 1, dev), "cuDeviceGetName");
  int major = 0, minor = 0, sms = 0, version = 0;
  check(d, d.attribute(&major, kAttrCcMajor, dev), "cuDeviceGetAttribute");
  check(d, d.attribute(&minor, kAttrCcMinor, dev), "cuDeviceGetAttribute");
  check(d, d.attribute(&sms, kAttrSmCount, dev), "cuDeviceGetAttribute");
  size_t bytes = 0;
  check(d, d.total_mem(&bytes, dev), "cuDeviceTotalMem");
  check(d, d.driver_version(&version), "cuDriverGetVersion");
  char out[512];
  std::snprintf(out, sizeof(out), "%s (sm_%d%d, %d SMs, %.1f GiB, CUDA driver %d.%d)", name, major, minor, sms,
                static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0), version / 1000, (version % 1000) / 10);
  return out;
}

void check_tuning(const std::string &spec) { parse_tuning(spec); }

void set_cache_dir(const std::string &dir) {
  std::lock_guard<std::mutex> lock(g_cache_mutex);
  g_cache_dir = dir;
}

std::string cached_compile_check(const std::string &arch, const std::string &nvrtc_path, const std::string &dir,
                                 const std::string &tuning, bool *from_cache, size_t *size) {
  return error_of([&] {
    *size = cached_compile(load_nvrtc(nvrtc_path), arch, parse_tuning(tuning), dir, from_cache).size();
  });
}

std::string compile_check(const std::string &arch, const std::string &nvrtc_path, std::string *image,
                          const std::string &tuning, std::string *ptxas_report) {
  return error_of([&] {
    auto compiled = compile(load_nvrtc(nvrtc_path), arch, parse_tuning(tuning), ptxas_report);
    if (image) *image = std::move(compiled);
  });
}

}  // namespace rt_polycom::cuda
