// Schemas of the patch ops and the argument checks every backend shares.
// Kernels: csrc/cpu/patches_cpu.cpp (CPU), csrc/cuda/patches_cuda.cu (CUDA).
// Fake kernels, references and autograd: patchscaler/ops/patches.py.
// Per-operator ATen headers only: including <ATen/ATen.h> (every op, thousands of
// headers) would be a compile error, which keeps this file's build fast.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS

#include "patches.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sort.h>
#include <torch/library.h>

#include <sstream>

namespace patchscaler {
namespace {

std::string shape_str(const at::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

void check_origins_tensor(const char* op, const at::Tensor& origins, const at::Device& device,
                          const char* other) {
  TORCH_CHECK(origins.dim() == 2 && origins.size(1) == 3, op,
              ": origins must be a 2-D tensor [P, 3] of (b, y, x) rows, got shape ",
              shape_str(origins));
  TORCH_CHECK(origins.scalar_type() == at::kLong, op, ": origins must be int64, got ",
              origins.scalar_type());
  TORCH_CHECK(origins.device() == device, op, ": origins is on ", origins.device(), " but ",
              other, " is on ", device, "; all tensors must be on the same device");
}

// Every patch must lie inside its image (`origins` must be contiguous here). On
// CUDA this reads one bool back to the host (a sync), which is the price of a
// clear error instead of an illegal memory access inside the kernel.
void check_origins_range(const char* op, const at::Tensor& origins, int64_t B, int64_t H,
                         int64_t W, int64_t ph, int64_t pw, const char* image) {
  const int64_t P = origins.size(0);
  if (P == 0) return;
  const int64_t lo[3] = {0, 0, 0};
  const int64_t hi[3] = {B - 1, H - ph, W - pw};
  int64_t bad = -1;
  at::Tensor host;
  if (origins.is_cpu()) {
    host = origins;
    const int64_t* o = origins.const_data_ptr<int64_t>();
    for (int64_t p = 0; p < P && bad < 0; ++p)
      for (int k = 0; k < 3; ++k)
        if (o[p * 3 + k] < lo[k] || o[p * 3 + k] > hi[k]) bad = p;
  } else {
    // Tensor methods, not operators: `<`/`|` on tensors live in ATen/TensorOperators.h,
    // which pulls in every op's header (see the top of this file).
    auto mask = origins.lt(0).any(/*dim=*/1);
    for (int k = 0; k < 3; ++k) mask = mask.bitwise_or(origins.select(1, k).gt(hi[k]));
    if (mask.any().item<bool>()) {
      bad = mask.nonzero().min().item<int64_t>();
      host = origins.cpu();
    }
  }
  if (bad >= 0) {
    const int64_t* o = host.const_data_ptr<int64_t>() + bad * 3;
    TORCH_CHECK(false, op, ": origins[", bad, "] = (", o[0], ", ", o[1], ", ", o[2],
                ") is out of range for ", image, " [B=", B, ", H=", H, ", W=", W,
                "] and patch ", ph, "x", pw, ": need 0 <= b < ", B, ", 0 <= y <= ", H - ph,
                ", 0 <= x <= ", W - pw,
                " (pad images smaller than a patch, see patchscaler.inference.patch_plan)");
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> check_gather_args(
    const at::Tensor& x, const at::Tensor& origins, int64_t ph, int64_t pw) {
  constexpr const char* op = "gather_patches";
  TORCH_CHECK(x.dim() == 4, op, ": x must be a 4-D tensor [B, C, H, W], got shape ",
              shape_str(x));
  TORCH_CHECK(is_supported_float(x.scalar_type()), op,
              ": x must be float32, float16, bfloat16 or float64, got ", x.scalar_type());
  check_origins_tensor(op, origins, x.device(), "x");
  TORCH_CHECK(ph > 0 && pw > 0, op, ": ph and pw must be > 0, got ph=", ph, ", pw=", pw);
  TORCH_CHECK(ph <= x.size(2) && pw <= x.size(3), op, ": patch ", ph, "x", pw,
              " is larger than x of shape ", shape_str(x),
              " (pad the image to at least one patch, see patchscaler.inference.patch_plan.pad_to_patch)");
  auto o = origins.contiguous();
  check_origins_range(op, o, x.size(0), x.size(2), x.size(3), ph, pw, "x");
  return {x.contiguous(), o};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> check_blend_args(
    const char* op, const at::Tensor& patches, const at::Tensor& origins,
    const at::Tensor* window, int64_t B, int64_t H, int64_t W) {
  TORCH_CHECK(patches.dim() == 4, op,
              ": patches must be a 4-D tensor [P, C, ph, pw], got shape ", shape_str(patches));
  TORCH_CHECK(is_supported_float(patches.scalar_type()), op,
              ": patches must be float32, float16, bfloat16 or float64, got ",
              patches.scalar_type());
  check_origins_tensor(op, origins, patches.device(), "patches");
  TORCH_CHECK(origins.size(0) == patches.size(0), op, ": origins has ", origins.size(0),
              " rows but patches has ", patches.size(0), " patches");
  TORCH_CHECK(B > 0 && H > 0 && W > 0, op, ": B, H and W must be > 0, got B=", B, ", H=", H,
              ", W=", W);
  const int64_t ph = patches.size(2), pw = patches.size(3);
  TORCH_CHECK(ph > 0 && pw > 0, op, ": patches must have ph, pw > 0, got shape ",
              shape_str(patches));
  TORCH_CHECK(ph <= H && pw <= W, op, ": patch ", ph, "x", pw, " is larger than the output ",
              H, "x", W, " (pad the image to at least one patch, see patchscaler.inference.patch_plan)");
  at::Tensor win;
  if (window != nullptr) {
    TORCH_CHECK(window->dim() == 2 && window->size(0) == ph && window->size(1) == pw, op,
                ": window must have shape [ph, pw] = [", ph, ", ", pw, "], got ",
                shape_str(*window));
    TORCH_CHECK(window->scalar_type() == patches.scalar_type(), op,
                ": window dtype ", window->scalar_type(), " does not match patches dtype ",
                patches.scalar_type());
    TORCH_CHECK(window->device() == patches.device(), op, ": window is on ", window->device(),
                " but patches is on ", patches.device(),
                "; all tensors must be on the same device");
    win = window->contiguous();
  }
  auto o = origins.contiguous();
  check_origins_range(op, o, B, H, W, ph, pw, "the output");
  return {patches.contiguous(), o, win};
}

void check_out(const char* op, const at::Tensor& out, at::IntArrayRef shape,
               const at::Tensor& like) {
  TORCH_CHECK(out.sizes() == shape, op, ": out must have shape ", shape, ", got ",
              shape_str(out));
  TORCH_CHECK(out.scalar_type() == like.scalar_type(), op, ": out dtype ", out.scalar_type(),
              " does not match the input dtype ", like.scalar_type());
  TORCH_CHECK(out.device() == like.device(), op, ": out is on ", out.device(),
              " but the inputs are on ", like.device());
  TORCH_CHECK(out.is_contiguous(), op, ": out must be contiguous");
}

RowIndex build_row_index_aten(const at::Tensor& origins, int64_t ph, int64_t B, int64_t H) {
  const int64_t P = origins.size(0);
  auto opts = origins.options();
  // Patch ids in (x origin, id) order: a stable sort by x keeps ids ascending on ties.
  // Spell out the optional<bool>: `at::sort(t, true, 0)` binds to the
  // sort(self, dim, descending) overload (bool -> int64 beats bool -> optional),
  // i.e. dim=1 of a 1-D tensor.
  const std::optional<bool> stable = true;
  auto order = std::get<1>(at::sort(origins.select(1, 2), stable, /*dim=*/0, /*descending=*/false));
  auto first_row = origins.select(1, 0).mul(H).add(origins.select(1, 1)).index_select(0, order);
  // One entry per (patch, covered row); a stable sort by row keeps the (x, id) order
  // within each row.
  auto rows = first_row.unsqueeze(1).add(at::arange(ph, opts).unsqueeze(0)).reshape({P * ph});
  auto ids = order.unsqueeze(1).expand({P, ph}).reshape({P * ph});
  auto sorted = at::sort(rows, stable, /*dim=*/0, /*descending=*/false);
  RowIndex index;
  index.row_patch = ids.index_select(0, std::get<1>(sorted));
  index.row_ptr = at::searchsorted(std::get<0>(sorted), at::arange(B * H + 1, opts));
  return index;
}

TORCH_LIBRARY_FRAGMENT(patchscaler, m) {
  m.def(
      "gather_patches(Tensor x, Tensor origins, int ph, int pw) -> Tensor");
  m.def(
      "blend_patches(Tensor patches, Tensor origins, Tensor window, int B, int H, int W) "
      "-> Tensor");
  m.def(
      "scatter_add_patches(Tensor patches, Tensor origins, int B, int H, int W) -> Tensor");
  // out= variants write into a preallocated output: a caller that reuses its
  // buffers (or a benchmark comparing with copy_) pays no allocation or page faults.
  m.def(
      "gather_patches.out(Tensor x, Tensor origins, int ph, int pw, *, Tensor(a!) out) "
      "-> Tensor(a!)");
  m.def(
      "blend_patches.out(Tensor patches, Tensor origins, Tensor window, int B, int H, int W, "
      "*, Tensor(a!) out) -> Tensor(a!)");
  // The CUDA blend's coverage index, exposed so it is tested on every device
  // (it is built with device-generic ATen ops).
  m.def("_blend_row_index(Tensor origins, int ph, int B, int H) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(patchscaler, CompositeExplicitAutograd, m) {
  m.impl("_blend_row_index", [](const at::Tensor& origins, int64_t ph, int64_t B, int64_t H) {
    RowIndex index = build_row_index_aten(origins.contiguous(), ph, B, H);
    return std::make_tuple(index.row_ptr, index.row_patch);
  });
}

}  // namespace patchscaler
