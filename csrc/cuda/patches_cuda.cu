// CUDA kernels of gather_patches, blend_patches and scatter_add_patches
// (semantics in csrc/patches.h).
//
// gather: one thread per output element; consecutive threads read consecutive x
// of a patch row and write consecutive output, so both sides coalesce.
//
// blend / scatter_add: one thread per output pixel (b, y, x), looping over a
// group of channels. The thread finds the patches covering its pixel in the
// per-row coverage index (entries sorted by x origin: a binary search, then a
// short scan), computes the weight sum once, and for each channel sums the
// covering patches in index order. Every output is written by exactly one
// thread in a fixed order: deterministic, no atomics.
// Per-operator ATen headers only: including <ATen/ATen.h> (every op, thousands of
// headers) would be a compile error, which keeps this file's build fast.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS

#include "../patches.h"

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

namespace patchscaler {
namespace {

constexpr int kThreads = 256;
// Grid-stride loops cover the rest; enough blocks to fill any current GPU.
constexpr int64_t kMaxBlocks = 1 << 16;
// Channels per thread in blend: reuses the index search and the weight sum
// across channels while keeping enough threads for small images.
constexpr int64_t kChannelsPerThread = 8;

int64_t num_blocks(int64_t n) {
  return std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks);
}

template <typename T>
__global__ void gather_kernel(const T* __restrict__ x, const int64_t* __restrict__ o,
                              T* __restrict__ out, int64_t total, int64_t C, int64_t H,
                              int64_t W, int64_t ph, int64_t pw) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = idx % pw;
    int64_t t = idx / pw;
    const int64_t i = t % ph;
    t /= ph;
    const int64_t c = t % C, p = t / C;
    const int64_t b = o[p * 3], y = o[p * 3 + 1] + i, xx = o[p * 3 + 2] + j;
    out[idx] = x[((b * C + c) * H + y) * W + xx];
  }
}

template <typename scalar_t, bool kWeighted>
__global__ void blend_kernel(const scalar_t* __restrict__ patches, const int64_t* __restrict__ o,
                             const scalar_t* __restrict__ window,
                             const int64_t* __restrict__ row_ptr,
                             const int64_t* __restrict__ row_patch, scalar_t* __restrict__ out,
                             int64_t npix, int64_t C, int64_t H, int64_t W, int64_t ph,
                             int64_t pw) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t c0 = blockIdx.y * kChannelsPerThread;
  const int64_t c1 = c0 + kChannelsPerThread < C ? c0 + kChannelsPerThread : C;
  for (int64_t pix = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; pix < npix;
       pix += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t x = pix % W, r = pix / W;  // r = b*H + y
    const int64_t b = r / H, y = r % H;
    const int64_t k_end = row_ptr[r + 1];
    // First entry whose patch reaches x (x origin > x - pw); entries are sorted by x origin.
    int64_t lo = row_ptr[r], hi = k_end;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (o[row_patch[mid] * 3 + 2] + pw <= x) lo = mid + 1; else hi = mid;
    }
    acc_t inv = acc_t(1);
    if constexpr (kWeighted) {
      acc_t wsum = acc_t(0);
      for (int64_t k = lo; k < k_end; ++k) {
        const int64_t p = row_patch[k], ox = o[p * 3 + 2];
        if (ox > x) break;
        wsum += static_cast<acc_t>(window[(y - o[p * 3 + 1]) * pw + (x - ox)]);
      }
      // Pixels whose weight sum is 0 (covered by no patch) blend to 0.
      inv = wsum != acc_t(0) ? acc_t(1) / wsum : acc_t(0);
    }
    for (int64_t c = c0; c < c1; ++c) {
      acc_t acc = acc_t(0);
      for (int64_t k = lo; k < k_end; ++k) {
        const int64_t p = row_patch[k], ox = o[p * 3 + 2];
        if (ox > x) break;
        const int64_t i = y - o[p * 3 + 1], j = x - ox;
        const acc_t v = static_cast<acc_t>(patches[((p * C + c) * ph + i) * pw + j]);
        if constexpr (kWeighted) {
          acc += static_cast<acc_t>(window[i * pw + j]) * v;
        } else {
          acc += v;
        }
      }
      out[((b * C + c) * H + y) * W + x] = static_cast<scalar_t>(acc * inv);
    }
  }
}

void gather_into(const at::Tensor& x, const at::Tensor& origins, int64_t ph, int64_t pw,
                 at::Tensor& out) {
  const int64_t total = out.numel();
  if (total == 0) return;
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gather_patches_cuda", [&] {
    gather_kernel<scalar_t><<<num_blocks(total), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), origins.const_data_ptr<int64_t>(),
        out.data_ptr<scalar_t>(), total, C, H, W, ph, pw);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor gather_patches_cuda(const at::Tensor& x_, const at::Tensor& origins_, int64_t ph,
                               int64_t pw) {
  auto [x, origins] = check_gather_args(x_, origins_, ph, pw);
  c10::cuda::CUDAGuard guard(x.device());
  auto out = at::empty({origins.size(0), x.size(1), ph, pw}, x.options());
  gather_into(x, origins, ph, pw, out);
  return out;
}

at::Tensor& gather_patches_out_cuda(const at::Tensor& x_, const at::Tensor& origins_, int64_t ph,
                                    int64_t pw, at::Tensor& out) {
  auto [x, origins] = check_gather_args(x_, origins_, ph, pw);
  check_out("gather_patches", out, {origins.size(0), x.size(1), ph, pw}, x);
  c10::cuda::CUDAGuard guard(x.device());
  gather_into(x, origins, ph, pw, out);
  return out;
}

template <bool kWeighted>
void blend_into(const at::Tensor& patches, const at::Tensor& origins, const at::Tensor& window,
                int64_t B, int64_t H, int64_t W, at::Tensor& out) {
  const int64_t C = patches.size(1), ph = patches.size(2), pw = patches.size(3);
  const int64_t npix = B * H * W;
  if (npix == 0 || C == 0) return;
  const RowIndex index = build_row_index_aten(origins, ph, B, H);
  const dim3 grid(static_cast<unsigned>(num_blocks(npix)),
                  static_cast<unsigned>((C + kChannelsPerThread - 1) / kChannelsPerThread));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, patches.scalar_type(), "blend_patches_cuda", [&] {
    blend_kernel<scalar_t, kWeighted><<<grid, kThreads, 0, stream>>>(
        patches.const_data_ptr<scalar_t>(), origins.const_data_ptr<int64_t>(),
        kWeighted ? window.const_data_ptr<scalar_t>() : nullptr,
        index.row_ptr.const_data_ptr<int64_t>(), index.row_patch.const_data_ptr<int64_t>(),
        out.data_ptr<scalar_t>(), npix, C, H, W, ph, pw);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor blend_patches_cuda(const at::Tensor& patches_, const at::Tensor& origins_,
                              const at::Tensor& window_, int64_t B, int64_t H, int64_t W) {
  auto [patches, origins, window] =
      check_blend_args("blend_patches", patches_, origins_, &window_, B, H, W);
  c10::cuda::CUDAGuard guard(patches.device());
  auto out = at::empty({B, patches.size(1), H, W}, patches.options());
  blend_into<true>(patches, origins, window, B, H, W, out);
  return out;
}

at::Tensor& blend_patches_out_cuda(const at::Tensor& patches_, const at::Tensor& origins_,
                                   const at::Tensor& window_, int64_t B, int64_t H, int64_t W,
                                   at::Tensor& out) {
  auto [patches, origins, window] =
      check_blend_args("blend_patches", patches_, origins_, &window_, B, H, W);
  check_out("blend_patches", out, {B, patches.size(1), H, W}, patches);
  c10::cuda::CUDAGuard guard(patches.device());
  blend_into<true>(patches, origins, window, B, H, W, out);
  return out;
}

at::Tensor scatter_add_patches_cuda(const at::Tensor& patches_, const at::Tensor& origins_,
                                    int64_t B, int64_t H, int64_t W) {
  auto [patches, origins, unused] =
      check_blend_args("scatter_add_patches", patches_, origins_, nullptr, B, H, W);
  c10::cuda::CUDAGuard guard(patches.device());
  auto out = at::empty({B, patches.size(1), H, W}, patches.options());
  blend_into<false>(patches, origins, unused, B, H, W, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(patchscaler, CUDA, m) {
  m.impl("gather_patches", &gather_patches_cuda);
  m.impl("blend_patches", &blend_patches_cuda);
  m.impl("scatter_add_patches", &scatter_add_patches_cuda);
  m.impl("gather_patches.out", &gather_patches_out_cuda);
  m.impl("blend_patches.out", &blend_patches_out_cuda);
}

}  // namespace patchscaler
