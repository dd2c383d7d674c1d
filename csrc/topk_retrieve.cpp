// Schema of topk_retrieve, the texture-memory lookup (SPEC §2, §3).
// Kernels: csrc/cpu/topk_retrieve_cpu.cpp (CPU, blocked matmul + running top-k),
// kernels/topk_retrieve.py (CUDA, Triton, registered from Python). Fake kernel,
// reference and the typed wrapper: patchscaler/ops/topk_retrieve.py.
//
//   topk_retrieve(q[M,D], keys[N,D], k) -> (scores[M,k] float32, indices[M,k] int64)
//       scores[i] = the k largest inner products <q[i], keys[j]> over j, sorted
//       descending; indices[i] the matching rows of keys. Equal scores keep the
//       smaller key index first. Products are accumulated in float32 whatever
//       the input dtype (float32, float16, bfloat16; q and keys the same).
//       1 <= k <= N. The M x N score matrix is never materialised: keys are
//       scored tile by tile and merged into a running top-k per query.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(patchscaler, m) {
  m.def("topk_retrieve(Tensor q, Tensor keys, int k) -> (Tensor scores, Tensor indices)");
}
