// dtype_name: a dtype's name as Python prints it ("torch.float32"), so error
// messages of the C++ argument checks match the Python-side ones.
#pragma once

#include <c10/core/ScalarType.h>

namespace patchscaler {

inline const char* dtype_name(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return "torch.float32";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kDouble: return "torch.float64";
    case at::kLong: return "torch.int64";
    case at::kInt: return "torch.int32";
    default: return c10::toString(s);
  }
}

}  // namespace patchscaler
