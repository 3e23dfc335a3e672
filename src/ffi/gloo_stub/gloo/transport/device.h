// Stub: see ../context.h. Held by c10d through shared_ptr / unique_ptr only.
#pragma once

namespace gloo {
namespace transport {
class Device {
 public:
  virtual ~Device() = default;
};
class UnboundBuffer {
 public:
  virtual ~UnboundBuffer() = default;
};
}  // namespace transport
}  // namespace gloo
