// Stub of gloo's public types, just enough to compile c10d's ProcessGroupGloo.hpp: the PyPI torch
// wheel ships c10d's headers but not gloo's, while libtorch_cpu.so contains gloo itself. c10d holds
// these types only by pointer; the shim never creates, copies or calls into them (all gloo work
// runs inside libtorch), so only their names and the virtual signatures c10d overrides matter.
#pragma once
#include <chrono>

namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);  // declared for c10d's inline setTimeout only
};
}  // namespace gloo
