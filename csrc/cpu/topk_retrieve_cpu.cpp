// CPU kernel of topk_retrieve (schema in csrc/topk_retrieve.cpp): blocked matmul +
// running top-k, never more than one score tile per thread alive.
//
// Work is split into tasks of (block of kBlockM queries) x (a contiguous range of
// key tiles, a "split"). A task scores one tile of kBlockN keys at a time with a
// BLAS matmul into a thread-local [kBlockM, kBlockN] float32 buffer (512 KiB, so
// it is still in L2 when it is scanned) and feeds each row into that query's
// running top-k, a sorted array of k entries. Once a list is full almost every
// score loses to its k-th entry, so the scan tests blocks of 16 scores against
// that threshold with a vectorisable compare and touches the list only for the
// rare winners. When there are too few query blocks to keep every thread busy
// (small M) the keys are split too, and the per-split lists are merged at the
// end, as faiss does on GPU. Extra memory: per thread one score tile plus (for
// float16/bfloat16 or strided keys) one float32 key tile; per split one [M, k]
// list when splits are used.
// Per-operator ATen headers only: including <ATen/ATen.h> (every op, thousands of
// headers) would be a compile error, which keeps this file's build fast.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS

#include "dtype_name.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace patchscaler {
namespace {

constexpr int64_t kBlockM = 128;   // queries per task
constexpr int64_t kBlockN = 1024;  // keys per score tile
constexpr int64_t kLanes = 16;     // scores tested against the threshold at once

// Whether score a ranks above score b: larger first, NaN above everything (as torch.topk).
inline bool ranks_above(float a, float b) {
  return a > b || (std::isnan(a) && !std::isnan(b));
}

// Inserts (v, id) into vals[0..n) (sorted best first, at most k entries). Only called
// when v ranks above vals[k-1] or the list is not yet full. Ties go after the
// entries already there, so the earlier (smaller) key index stays first.
inline void insert(float* vals, int64_t* ids, int64_t k, int64_t& n, float v, int64_t id) {
  int64_t pos = n < k ? n++ : k - 1;
  while (pos > 0 && ranks_above(v, vals[pos - 1])) {
    vals[pos] = vals[pos - 1];
    ids[pos] = ids[pos - 1];
    --pos;
  }
  vals[pos] = v;
  ids[pos] = id;
}

// Feeds scores row[0..n) of keys base..base+n-1 into one query's running top-k.
void scan_row(const float* row, int64_t n, int64_t base, float* vals, int64_t* ids, int64_t k,
              int64_t& filled) {
  int64_t j = 0;
  for (; j < n && filled < k; ++j) insert(vals, ids, k, filled, row[j], base + j);
  if (filled < k) return;
  float thr = vals[k - 1];
  // `!(v <= thr)` is "v ranks above thr" for any v when thr is not NaN; when thr is
  // NaN the list holds k NaNs and nothing can enter any more.
  if (std::isnan(thr)) return;
  for (; j + kLanes <= n; j += kLanes) {
    int any = 0;
    for (int64_t u = 0; u < kLanes; ++u) any |= !(row[j + u] <= thr);
    if (!any) continue;
    for (int64_t u = 0; u < kLanes; ++u) {
      if (!(row[j + u] <= thr)) {
        insert(vals, ids, k, filled, row[j + u], base + j + u);
        thr = vals[k - 1];
        if (std::isnan(thr)) return;
      }
    }
  }
  for (; j < n; ++j) {
    if (!(row[j] <= thr)) {
      insert(vals, ids, k, filled, row[j], base + j);
      thr = vals[k - 1];
      if (std::isnan(thr)) return;
    }
  }
}

// A [rows, D] float32 matrix whose rows are unit-stride, usable by BLAS in place.
bool blas_ready(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat && (t.stride(1) == 1 || t.size(1) == 1);
}

std::tuple<at::Tensor, at::Tensor> topk_retrieve_cpu(const at::Tensor& q, const at::Tensor& keys,
                                                     int64_t k) {
  constexpr const char* op = "topk_retrieve";
  TORCH_CHECK_VALUE(q.dim() == 2, op, ": q must be a 2-D tensor [M, D], got shape ", q.sizes());
  TORCH_CHECK_VALUE(keys.dim() == 2, op, ": keys must be a 2-D tensor [N, D], got shape ", keys.sizes());
  TORCH_CHECK_VALUE(q.size(1) == keys.size(1), op, ": q and keys must have the same embedding size D, got q ",
              q.sizes(), " and keys ", keys.sizes());
  const auto dt = q.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op,
              ": q must be float32, float16 or bfloat16, got ", dtype_name(dt));
  TORCH_CHECK_VALUE(keys.scalar_type() == dt, op, ": keys dtype ", dtype_name(keys.scalar_type()),
              " does not match q dtype ", dtype_name(dt));
  TORCH_CHECK_VALUE(keys.device() == q.device(), op, ": keys is on ", keys.device(), " but q is on ",
              q.device(), "; all tensors must be on the same device");
  const int64_t M = q.size(0), N = keys.size(0), D = q.size(1);
  TORCH_CHECK_VALUE(k >= 1, op, ": k must be >= 1, got ", k);
  TORCH_CHECK_VALUE(k <= N, op, ": k = ", k, " is larger than the number of keys N = ", N);

  at::Tensor scores = at::empty({M, k}, q.options().dtype(at::kFloat));
  at::Tensor indices = at::empty({M, k}, q.options().dtype(at::kLong));
  if (M == 0) return {scores, indices};

  const int64_t bm = std::min(M, kBlockM);
  const int64_t n_qblocks = (M + bm - 1) / bm;
  const int64_t n_tiles = (N + kBlockN - 1) / kBlockN;
  // Enough tasks for every thread (and some slack for load balance) when M is small.
  const int64_t want_tasks = at::get_num_threads() > 1 ? 4 * at::get_num_threads() : 1;
  int64_t splits = std::clamp<int64_t>((want_tasks + n_qblocks - 1) / n_qblocks, 1, n_tiles);
  const int64_t tiles_per_split = (n_tiles + splits - 1) / splits;
  splits = (n_tiles + tiles_per_split - 1) / tiles_per_split;

  // With one split the running lists are the outputs themselves.
  at::Tensor part_vals = splits == 1 ? scores : at::empty({splits, M, k}, scores.options());
  at::Tensor part_ids = splits == 1 ? indices : at::empty({splits, M, k}, indices.options());
  std::vector<int64_t> filled(splits * M, 0);
  float* pv = part_vals.mutable_data_ptr<float>();
  int64_t* pi = part_ids.mutable_data_ptr<int64_t>();

  // The op has no derivative: score detached views, so the matmuls below never see
  // autograd state (worker threads do not inherit the caller's dispatch exclusions).
  const at::Tensor qd = q.detach(), kd = keys.detach();
  const bool q_direct = blas_ready(q), keys_direct = blas_ready(keys);
  const auto f32 = q.options().dtype(at::kFloat);

  at::parallel_for(0, n_qblocks * splits, 1, [&](int64_t begin, int64_t end) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor score_buf = at::empty({bm * kBlockN}, f32);
    at::Tensor q_buf = q_direct ? at::Tensor() : at::empty({bm, D}, f32);
    at::Tensor key_buf = keys_direct ? at::Tensor() : at::empty({kBlockN, D}, f32);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t qb = task / splits, s = task % splits;
      const int64_t m0 = qb * bm, mr = std::min(bm, M - m0);
      at::Tensor qt = qd.narrow(0, m0, mr);
      if (!q_direct) qt = q_buf.narrow(0, 0, mr).copy_(qt);
      float* vals = pv + (s * M + m0) * k;
      int64_t* ids = pi + (s * M + m0) * k;
      int64_t* fill = filled.data() + s * M + m0;
      const int64_t tile_end = std::min(n_tiles, (s + 1) * tiles_per_split);
      for (int64_t tile = s * tiles_per_split; tile < tile_end; ++tile) {
        const int64_t n0 = tile * kBlockN, nn = std::min(kBlockN, N - n0);
        at::Tensor kt = kd.narrow(0, n0, nn);
        if (!keys_direct) kt = key_buf.narrow(0, 0, nn).copy_(kt);
        at::Tensor st = score_buf.narrow(0, 0, mr * nn).view({mr, nn});
        at::mm_out(st, qt, kt.t());
        const float* sp = st.const_data_ptr<float>();
        for (int64_t r = 0; r < mr; ++r) {
          scan_row(sp + r * nn, nn, n0, vals + r * k, ids + r * k, k, fill[r]);
        }
      }
    }
  });

  if (splits > 1) {
    // Merge the per-split lists; splits cover increasing key ranges and are merged in
    // that order, so ties still keep the smaller key index first.
    float* out_v = scores.mutable_data_ptr<float>();
    int64_t* out_i = indices.mutable_data_ptr<int64_t>();
    at::parallel_for(0, M, 64, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        float* vals = out_v + i * k;
        int64_t* ids = out_i + i * k;
        int64_t n = 0;
        for (int64_t s = 0; s < splits; ++s) {
          const float* sv = pv + (s * M + i) * k;
          const int64_t* si = pi + (s * M + i) * k;
          for (int64_t j = 0; j < filled[s * M + i]; ++j) {
            if (n < k || ranks_above(sv[j], vals[k - 1])) insert(vals, ids, k, n, sv[j], si[j]);
            else break;  // the split's list is sorted: the rest rank lower still
          }
        }
      }
    });
  }
  return {scores, indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(patchscaler, CPU, m) {
  m.impl("topk_retrieve", &topk_retrieve_cpu);
}

}  // namespace patchscaler
