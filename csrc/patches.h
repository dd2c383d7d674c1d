// Shared declarations of the patch ops (gather_patches, blend_patches,
// scatter_add_patches): argument checks used by every backend, and the
// per-output-row coverage index of the CUDA blend.
//
//   gather_patches(x[B,C,H,W], origins[P,3] int64 (b,y,x), ph, pw) -> [P,C,ph,pw]
//       out[p,c,i,j] = x[b_p, c, y_p+i, x_p+j]
//   blend_patches(patches[P,C,ph,pw], origins[P,3], window[ph,pw], B, H, W) -> [B,C,H,W]
//       out[b,c,y,x] = sum_p w[i,j] * patches[p,c,i,j] / sum_p w[i,j]
//       over the patches p of image b that cover (y,x) at (i,j) = (y-y_p, x-x_p);
//       0 where that weight sum is 0 (no patch covers the pixel).
//   scatter_add_patches(patches[P,C,ph,pw], origins[P,3], B, H, W) -> [B,C,H,W]
//       out[b,c,y,x] = sum_p patches[p,c,i,j] (no window, no normalisation):
//       the adjoint of gather_patches, i.e. its backward.
//
// Dtypes: float32, float16, bfloat16 (and float64, for gradcheck); sums are
// accumulated in float32 (float64 for float64), in a fixed order per pixel.
// Inputs need not be contiguous (they are made so); out= tensors must be
// contiguous, of the exact shape and dtype, and must not overlap the inputs.
// Every patch must lie inside its image: 0 <= b < B, 0 <= y <= H-ph,
// 0 <= x <= W-pw (pad small images first, see patchscaler/inference/patch_plan.py).
#pragma once

#include <ATen/core/Tensor.h>

namespace patchscaler {

// Checks the arguments of gather_patches; returns contiguous (x, origins).
std::tuple<at::Tensor, at::Tensor> check_gather_args(
    const at::Tensor& x, const at::Tensor& origins, int64_t ph, int64_t pw);

// Checks the arguments of blend_patches (window != nullptr) or
// scatter_add_patches (window == nullptr); `op` names the op in messages.
// Returns contiguous (patches, origins, window); window is undefined for scatter.
std::tuple<at::Tensor, at::Tensor, at::Tensor> check_blend_args(
    const char* op, const at::Tensor& patches, const at::Tensor& origins,
    const at::Tensor* window, int64_t B, int64_t H, int64_t W);

// Checks an out= tensor: exactly `shape`, dtype and device of `like`, contiguous.
void check_out(const char* op, const at::Tensor& out, at::IntArrayRef shape,
               const at::Tensor& like);

// Coverage index in CSR form over the B*H output rows, used by the CUDA blend:
// the patches covering output row r = b*H + y are
// row_patch[row_ptr[r] .. row_ptr[r+1]), ordered by (x origin, patch id), so a
// thread finds the ones covering its pixel with a binary search and sums them
// in that fixed order: deterministic without atomics. (The CPU kernels use a
// coarser per-band index, built in csrc/cpu/patches_cpu.cpp.)
struct RowIndex {
  at::Tensor row_ptr;    // [B*H + 1] int64
  at::Tensor row_patch;  // [P*ph] int64
};

// Builds the index with device-generic ATen ops (sorts, searchsorted), so it
// runs on whatever device `origins` is on. `origins` must already be checked.
RowIndex build_row_index_aten(const at::Tensor& origins, int64_t ph, int64_t B, int64_t H);

}  // namespace patchscaler
