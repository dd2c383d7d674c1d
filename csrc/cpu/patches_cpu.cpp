// CPU kernels of gather_patches, blend_patches and scatter_add_patches
// (semantics in csrc/patches.h).
//
// gather: a strided copy with streaming stores, parallel over (group of patches,
// channel); see gather_kernel.
//
// blend / scatter_add: a *gather* over output pixels, not a scatter of patches.
// The output is cut into bands of kBandRows rows; a small CSR index lists, for
// every (image, band), the patches overlapping it, in patch-id order. Each task
// owns one (b, channel pair, band) tile: it sums the overlapping patch rows into
// kBandRows x W fp32 accumulators in index order, then writes the tile once.
// No two tasks write the same pixel, so there are no atomics, and the order of
// the sum at a pixel never depends on the thread count: results are bitwise
// reproducible. Reading patches band by band touches each patch's channel slice
// as one or two contiguous runs of rows; a software prefetch a few patches ahead
// hides the latency of those scattered runs, which is what bounds this kernel.
// The only temporaries are the index (about P*(ph/kBandRows + 1) + B*H/kBandRows
// int64) and, for blend, the reciprocal weight sum per pixel ([B,H,W] fp32, 1/C
// of the output), both allocated through ATen so memory profilers see them.
// Per-operator ATen headers only: including <ATen/ATen.h> (every op, thousands of
// headers) would be a compile error, which keeps this file's build fast.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS

#include "../patches.h"

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

// Python's build flags add -fwrapv, which makes the compiler honour signed
// wrap-around and blocks induction-variable optimisations in the loops below
// (measured: blend 25% slower). Nothing here relies on signed overflow.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-wrapv")
#endif

namespace patchscaler {
namespace {

// Aim for parallel chunks of at least this many elements, so small calls stay
// on one thread instead of paying the fork/join.
constexpr int64_t kMinChunkElems = 1 << 15;
// Chunks per thread that parallel_chunks aims for: small enough to rebalance
// when a thread is slow, large enough that claiming one is noise.
constexpr int64_t kChunksPerThread = 16;

// Runs fn(begin, end) over [0, n) in chunks, on the calling thread plus up to
// at::get_num_threads() - 1 helpers from ATen's inter-op pool; fn must be safe
// on disjoint ranges concurrently. Chunks are claimed one at a time, and the
// caller waits only for chunks some thread has claimed, never for a helper
// that has not started. A fork/join region (at::parallel_for) waits for every
// thread: on a machine shared with other jobs that is one descheduled thread
// holding up the op for a scheduler tick or more while the others spin.
// Which thread computes a chunk never changes its result, so the kernels stay
// deterministic.
template <typename F>
void parallel_chunks(int64_t n, int64_t min_chunk, const F& fn) {
  if (n <= 0) return;
  const int64_t threads = at::get_num_threads();
  const int64_t chunk = std::max<int64_t>(
      {1, min_chunk, (n + threads * kChunksPerThread - 1) / (threads * kChunksPerThread)});
  const int64_t nchunks = (n + chunk - 1) / chunk;
  const int64_t helpers = std::min(threads, nchunks) - 1;
  if (helpers <= 0 || at::in_parallel_region()) {
    fn(0, n);
    return;
  }
  // Shared with helpers that may start after this call returned: they find no
  // chunk left and exit without touching fn.
  struct State {
    std::atomic<int64_t> next{0};
    std::mutex mutex;
    std::condition_variable all_done;
    int64_t done = 0;           // chunks finished (guarded by mutex)
    std::exception_ptr error;   // first exception thrown by fn (guarded by mutex)
  };
  auto state = std::make_shared<State>();
  auto work = [state, n, chunk, nchunks, &fn] {
    int64_t finished = 0;
    std::exception_ptr error;
    for (int64_t k = state->next.fetch_add(1); k < nchunks; k = state->next.fetch_add(1)) {
      // A failing chunk still counts as done, so the caller never waits forever
      // and rethrows the error once no thread is using fn any more.
      try {
        if (!error) fn(k * chunk, std::min(n, (k + 1) * chunk));
      } catch (...) {
        error = std::current_exception();
      }
      ++finished;
    }
    if (finished > 0) {
      std::lock_guard<std::mutex> lock(state->mutex);
      if (error && !state->error) state->error = error;
      state->done += finished;
      if (state->done == nchunks) state->all_done.notify_all();
    }
  };
  for (int64_t h = 0; h < helpers; ++h) at::launch(work);
  work();
  std::unique_lock<std::mutex> lock(state->mutex);
  state->all_done.wait(lock, [&] { return state->done == nchunks; });
  if (state->error) std::rethrow_exception(state->error);
}

// Rows per output band: a band's fp32 accumulator (kBandRows * W floats) stays
// in L1/L2, and a 16-row patch is split over only two or three bands.
constexpr int64_t kBandRows = 8;
// How many index entries ahead blend prefetches patch rows. Measured on the
// 48x512x512 benchmark: 5-8 are equally good; from 9 on the time doubled.
constexpr int64_t kPrefetchAhead = 6;
// Channels per blend tile: two neighbouring channel slices of a patch are read
// together (measured ~25% faster than one at a time; four thrash L1).
constexpr int64_t kBlendChannels = 2;

// CSR over (image, band): the patches overlapping band t = b*nbands + band are
// ids[ptr[t] .. ptr[t+1]), in patch-id order (for a planner's row-major origins,
// that walks each grid row of patches left to right, which measured ~20% faster
// than x-origin order). Built with a counting sort: O(P * bands per patch + B * nbands).
struct BandIndex {
  at::Tensor ptr;  // [B*nbands + 1] int64
  at::Tensor ids;  // int64
  int64_t nbands;
};

BandIndex build_band_index(const at::Tensor& origins, int64_t ph, int64_t B, int64_t H) {
  const int64_t P = origins.size(0);
  const int64_t* o = origins.const_data_ptr<int64_t>();
  BandIndex index;
  index.nbands = (H + kBandRows - 1) / kBandRows;
  const int64_t nb = index.nbands;
  auto first_band = [&](int64_t p) { return o[p * 3] * nb + o[p * 3 + 1] / kBandRows; };
  auto num_bands = [&](int64_t p) {
    return (o[p * 3 + 1] + ph - 1) / kBandRows - o[p * 3 + 1] / kBandRows + 1;
  };
  index.ptr = at::zeros({B * nb + 1}, origins.options());
  int64_t* ptr = index.ptr.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t p = 0; p < P; ++p) {
    const int64_t t0 = first_band(p), n = num_bands(p);
    for (int64_t t = t0; t < t0 + n; ++t) ++ptr[t + 1];
    total += n;
  }
  for (int64_t t = 0; t < B * nb; ++t) ptr[t + 1] += ptr[t];
  index.ids = at::empty({total}, origins.options());
  int64_t* ids = index.ids.data_ptr<int64_t>();
  std::vector<int64_t> fill(ptr, ptr + B * nb);
  for (int64_t p = 0; p < P; ++p) {
    const int64_t t0 = first_band(p), n = num_bands(p);
    for (int64_t t = t0; t < t0 + n; ++t) ids[fill[t]++] = p;
  }
  return index;
}

// Both kernels write outputs far larger than the caches that nobody reads back
// soon, so they use non-temporal (cache-bypassing) stores where the destination
// is 16-byte aligned: that skips the read-for-ownership of every destination
// line, a third of the memory traffic of a plain store.
#if defined(__SSE2__)
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// n16 16-byte chunks, dst 16-byte aligned.
inline void stream_store16(void* dst, const void* src, size_t n16) {
  auto* d = static_cast<__m128i*>(dst);
  auto* s = static_cast<const __m128i*>(src);
  for (size_t k = 0; k < n16; ++k) _mm_stream_si128(d + k, _mm_loadu_si128(s + k));
}
#endif

// Writes n bytes to dst, streaming the 16-byte-aligned middle part.
inline void stream_store(void* dst, const void* src, size_t n) {
#if defined(__SSE2__)
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
  size_t head = std::min<size_t>((16 - (reinterpret_cast<uintptr_t>(d) & 15)) & 15, n);
  if (head) std::memcpy(d, s, head);
  stream_store16(d + head, s + head, (n - head) / 16);
  const size_t done = head + (n - head) / 16 * 16;
  if (done < n) std::memcpy(d + done, s + done, n - done);
#else
  std::memcpy(dst, src, n);
#endif
}

// Streaming stores are weakly ordered: fence at the end of each parallel chunk,
// so the completion handshake of parallel_chunks publishes them to the caller.
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// Patches per gather task group; see gather_kernel.
constexpr int64_t kGatherGroup = 32;
// How many patches ahead gather prefetches source rows.
constexpr int64_t kGatherAhead = 4;

// Copies by element size only: gather moves bits, it never converts.
// Tasks are (group of kGatherGroup patch ids, channel), channel-major within a
// group: consecutive patches of a planner's grid row sit side by side in x, so
// the source rows are read almost sequentially, and each task streams out
// kGatherGroup whole ph*pw blocks. Measured ~25% faster than patch-major order.
template <typename T>
void gather_kernel(const T* __restrict__ x, const int64_t* __restrict__ o, T* __restrict__ out,
                   int64_t P, int64_t C, int64_t H, int64_t W, int64_t ph, int64_t pw) {
  const int64_t ngroups = (P + kGatherGroup - 1) / kGatherGroup;
  const int64_t grain = std::max<int64_t>(1, kMinChunkElems / (kGatherGroup * ph * pw));
  const size_t row_bytes = pw * sizeof(T);
  auto source = [&](int64_t p, int64_t c) {
    return x + ((o[p * 3] * C + c) * H + o[p * 3 + 1]) * W + o[p * 3 + 2];
  };
  parallel_chunks(ngroups * C, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t c = t % C, p0 = (t / C) * kGatherGroup;
      const int64_t p1 = std::min(P, p0 + kGatherGroup);
      for (int64_t p = p0; p < p1; ++p) {
        const T* src = source(p, c);
        // Source rows are W apart, a pattern no hardware prefetcher follows:
        // request those of the patch kGatherAhead ahead while copying this one.
        const T* next = p + kGatherAhead < p1 ? source(p + kGatherAhead, c) : nullptr;
        T* dst = out + (p * C + c) * ph * pw;
#if defined(__SSE2__)
        if (row_bytes % 16 == 0 && aligned16(dst)) {
          for (int64_t i = 0; i < ph; ++i, src += W, dst += pw) {
            if (next != nullptr) {
              __builtin_prefetch(next + i * W);
              __builtin_prefetch(next + i * W + pw - 1);
            }
            stream_store16(dst, src, row_bytes / 16);
          }
          continue;
        }
#endif
        for (int64_t i = 0; i < ph; ++i, src += W, dst += pw) stream_store(dst, src, row_bytes);
      }
    }
    stream_fence();
  });
}

// kWeighted: blend_patches (window weights, normalised by their sum);
// otherwise scatter_add_patches (plain sum). kPw > 0: the patch width as a
// compile-time constant (the common 8/16/32), so the row update compiles to a few
// straight vector instructions instead of a loop with a runtime trip count.
template <typename scalar_t, bool kWeighted, int64_t kPw>
void blend_kernel(const scalar_t* __restrict__ patches, const int64_t* __restrict__ o,
                  const scalar_t* window, const BandIndex& index, scalar_t* __restrict__ out,
                  int64_t C, int64_t ph, int64_t pw_, int64_t B, int64_t H, int64_t W) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t pw = kPw > 0 ? kPw : pw_;
  const int64_t nb = index.nbands;
  const int64_t* __restrict__ band_ptr = index.ptr.const_data_ptr<int64_t>();
  const int64_t* __restrict__ band_ids = index.ids.const_data_ptr<int64_t>();
  const int64_t tile_grain = std::max<int64_t>(1, kMinChunkElems / (kBandRows * W));

  std::vector<acc_t> wf;
  at::Tensor inv_wsum;
  acc_t* inv = nullptr;
  if constexpr (kWeighted) {
    wf.assign(window, window + ph * pw);
    // Pass 1: 1 / (sum of window weights) per pixel, shared by all C channels.
    // Pixels whose weight sum is 0 (covered by no patch) get 0, so they blend to 0.
    inv_wsum = at::empty({B, H, W}, at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
    inv = inv_wsum.data_ptr<acc_t>();
    parallel_chunks(B * nb, tile_grain, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / nb, y0 = (t % nb) * kBandRows;
        const int64_t y1 = std::min(H, y0 + kBandRows);
        acc_t* __restrict__ d = inv + (b * H + y0) * W;
        std::fill(d, d + (y1 - y0) * W, acc_t(0));
        for (int64_t k = band_ptr[t]; k < band_ptr[t + 1]; ++k) {
          const int64_t p = band_ids[k], oy = o[p * 3 + 1];
          const int64_t ya = std::max(y0, oy), yb = std::min(y1, oy + ph);
          for (int64_t y = ya; y < yb; ++y) {
            const acc_t* __restrict__ wr = wf.data() + (y - oy) * pw;
            acc_t* __restrict__ a = d + (y - y0) * W + o[p * 3 + 2];
            for (int64_t j = 0; j < pw; ++j) a[j] += wr[j];
          }
        }
        for (int64_t i = 0; i < (y1 - y0) * W; ++i)
          d[i] = d[i] != acc_t(0) ? acc_t(1) / d[i] : acc_t(0);
      }
    });
  }

  // Pass 2: one task per (b, channel group, band) tile,
  // t = (b*ngroups + g)*nb + band, channels [g*kBlendChannels, +cg).
  const int64_t ngroups = (C + kBlendChannels - 1) / kBlendChannels;
  parallel_chunks(B * ngroups * nb, tile_grain, [&, C, H, W, ph](int64_t begin, int64_t end) {
    // Sizes are captured by value: the streaming stores below may alias anything
    // (__m128 is a may_alias type), which would force reloads through references.
    const int64_t tile = kBandRows * W;
    std::vector<acc_t> acc_tiles(kBlendChannels * tile);
    std::vector<scalar_t> out_row(W);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t band = t % nb, bg = t / nb;
      const int64_t b = bg / ngroups, c0 = (bg % ngroups) * kBlendChannels;
      const int64_t cg = std::min(kBlendChannels, C - c0);
      const int64_t y0 = band * kBandRows, y1 = std::min(H, y0 + kBandRows);
      const int64_t bt = b * nb + band, k0 = band_ptr[bt], k1 = band_ptr[bt + 1];
      for (int64_t cc = 0; cc < cg; ++cc)
        std::fill_n(acc_tiles.data() + cc * tile, (y1 - y0) * W, acc_t(0));
      // Rows [ya, yb) of patch p that fall in this band: one contiguous run per channel.
      auto rows_of = [&](int64_t p, int64_t& ya, int64_t& yb) {
        const int64_t oy = o[p * 3 + 1];
        ya = std::max(y0, oy);
        yb = std::min(y1, oy + ph);
        return patches + ((p * C + c0) * ph + (ya - oy)) * pw;
      };
      for (int64_t k = k0; k < k1; ++k) {
        if (k + kPrefetchAhead < k1) {
          int64_t qa, qb;
          const char* q = reinterpret_cast<const char*>(rows_of(band_ids[k + kPrefetchAhead], qa, qb));
          const int64_t bytes = (qb - qa) * pw * static_cast<int64_t>(sizeof(scalar_t));
          const int64_t channel_bytes = ph * pw * static_cast<int64_t>(sizeof(scalar_t));
          // Into L2 (locality 2): measured ~15% faster than into L1 at this distance.
          for (int64_t cc = 0; cc < cg; ++cc, q += channel_bytes)
            for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(q + off, 0, 2);
        }
        const int64_t p = band_ids[k], oy = o[p * 3 + 1], ox = o[p * 3 + 2];
        int64_t ya, yb;
        const scalar_t* base = rows_of(p, ya, yb);
        for (int64_t cc = 0; cc < cg; ++cc) {
          const scalar_t* __restrict__ src = base + cc * ph * pw;
          acc_t* __restrict__ a = acc_tiles.data() + cc * tile + (ya - y0) * W + ox;
          for (int64_t y = ya; y < yb; ++y, src += pw, a += W) {
            if constexpr (kWeighted) {
              const acc_t* __restrict__ wr = wf.data() + (y - oy) * pw;
              for (int64_t j = 0; j < pw; ++j) a[j] += wr[j] * static_cast<acc_t>(src[j]);
            } else {
              for (int64_t j = 0; j < pw; ++j) a[j] += static_cast<acc_t>(src[j]);
            }
          }
        }
      }
      for (int64_t cc = 0; cc < cg; ++cc) {
        for (int64_t y = y0; y < y1; ++y) {
          const acc_t* __restrict__ ar = acc_tiles.data() + cc * tile + (y - y0) * W;
          scalar_t* __restrict__ row = out + ((b * C + c0 + cc) * H + y) * W;
#if defined(__SSE2__)
          if constexpr (kWeighted && std::is_same_v<scalar_t, float>) {
            // fp32: scale and stream straight from the accumulator, no staging row.
            if (W % 4 == 0 && aligned16(row)) {
              const float* __restrict__ iv = inv + (b * H + y) * W;
              for (int64_t x = 0; x < W; x += 4)
                _mm_stream_ps(row + x, _mm_mul_ps(_mm_loadu_ps(ar + x), _mm_loadu_ps(iv + x)));
              continue;
            }
          }
#endif
          scalar_t* __restrict__ dst = out_row.data();
          if constexpr (kWeighted) {
            const acc_t* __restrict__ iv = inv + (b * H + y) * W;
            for (int64_t x = 0; x < W; ++x) dst[x] = static_cast<scalar_t>(ar[x] * iv[x]);
          } else {
            for (int64_t x = 0; x < W; ++x) dst[x] = static_cast<scalar_t>(ar[x]);
          }
          stream_store(row, dst, W * sizeof(scalar_t));
        }
      }
    }
    stream_fence();
  });
}

void gather_into(const at::Tensor& x, const at::Tensor& origins, int64_t ph, int64_t pw,
                 at::Tensor& out) {
  const int64_t P = origins.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t* o = origins.const_data_ptr<int64_t>();
  switch (x.element_size()) {
    case 2:
      gather_kernel(static_cast<const uint16_t*>(x.const_data_ptr()), o,
                    static_cast<uint16_t*>(out.data_ptr()), P, C, H, W, ph, pw);
      break;
    case 4:
      gather_kernel(static_cast<const uint32_t*>(x.const_data_ptr()), o,
                    static_cast<uint32_t*>(out.data_ptr()), P, C, H, W, ph, pw);
      break;
    case 8:
      gather_kernel(static_cast<const uint64_t*>(x.const_data_ptr()), o,
                    static_cast<uint64_t*>(out.data_ptr()), P, C, H, W, ph, pw);
      break;
    default:
      TORCH_CHECK(false, "gather_patches: unsupported element size ", x.element_size());
  }
}

at::Tensor gather_patches_cpu(const at::Tensor& x_, const at::Tensor& origins_, int64_t ph,
                              int64_t pw) {
  auto [x, origins] = check_gather_args(x_, origins_, ph, pw);
  auto out = at::empty({origins.size(0), x.size(1), ph, pw}, x.options());
  gather_into(x, origins, ph, pw, out);
  return out;
}

at::Tensor& gather_patches_out_cpu(const at::Tensor& x_, const at::Tensor& origins_, int64_t ph,
                                   int64_t pw, at::Tensor& out) {
  auto [x, origins] = check_gather_args(x_, origins_, ph, pw);
  check_out("gather_patches", out, {origins.size(0), x.size(1), ph, pw}, x);
  gather_into(x, origins, ph, pw, out);
  return out;
}

template <bool kWeighted>
void blend_into(const at::Tensor& patches, const at::Tensor& origins, const at::Tensor& window,
                int64_t B, int64_t H, int64_t W, at::Tensor& out) {
  const int64_t C = patches.size(1), ph = patches.size(2), pw = patches.size(3);
  const BandIndex index = build_band_index(origins, ph, B, H);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, patches.scalar_type(), "blend_patches_cpu", [&] {
        auto run = [&](auto pw_constant) {
          blend_kernel<scalar_t, kWeighted, decltype(pw_constant)::value>(
              patches.const_data_ptr<scalar_t>(), origins.const_data_ptr<int64_t>(),
              kWeighted ? window.const_data_ptr<scalar_t>() : nullptr, index,
              out.data_ptr<scalar_t>(), C, ph, pw, B, H, W);
        };
        switch (pw) {
          case 8: run(std::integral_constant<int64_t, 8>{}); break;
          case 16: run(std::integral_constant<int64_t, 16>{}); break;
          case 32: run(std::integral_constant<int64_t, 32>{}); break;
          default: run(std::integral_constant<int64_t, 0>{});
        }
      });
}

at::Tensor blend_patches_cpu(const at::Tensor& patches_, const at::Tensor& origins_,
                             const at::Tensor& window_, int64_t B, int64_t H, int64_t W) {
  auto [patches, origins, window] =
      check_blend_args("blend_patches", patches_, origins_, &window_, B, H, W);
  auto out = at::empty({B, patches.size(1), H, W}, patches.options());
  blend_into<true>(patches, origins, window, B, H, W, out);
  return out;
}

at::Tensor& blend_patches_out_cpu(const at::Tensor& patches_, const at::Tensor& origins_,
                                  const at::Tensor& window_, int64_t B, int64_t H, int64_t W,
                                  at::Tensor& out) {
  auto [patches, origins, window] =
      check_blend_args("blend_patches", patches_, origins_, &window_, B, H, W);
  check_out("blend_patches", out, {B, patches.size(1), H, W}, patches);
  blend_into<true>(patches, origins, window, B, H, W, out);
  return out;
}

at::Tensor scatter_add_patches_cpu(const at::Tensor& patches_, const at::Tensor& origins_,
                                   int64_t B, int64_t H, int64_t W) {
  auto [patches, origins, unused] =
      check_blend_args("scatter_add_patches", patches_, origins_, nullptr, B, H, W);
  auto out = at::empty({B, patches.size(1), H, W}, patches.options());
  blend_into<false>(patches, origins, unused, B, H, W, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(patchscaler, CPU, m) {
  m.impl("gather_patches", &gather_patches_cpu);
  m.impl("blend_patches", &blend_patches_cpu);
  m.impl("scatter_add_patches", &scatter_add_patches_cpu);
  m.impl("gather_patches.out", &gather_patches_out_cpu);
  m.impl("blend_patches.out", &blend_patches_out_cpu);
}

}  // namespace patchscaler
