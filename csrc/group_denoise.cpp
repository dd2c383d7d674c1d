// Schemas of the per-patch diffusion update ops (SPEC §3).
// Kernels: csrc/cpu/group_denoise_cpu.cpp (CPU, fused C++), kernels/group_denoise.py
// (CUDA, Triton, registered from Python). Fake kernels, references and the typed
// wrappers: patchscaler/ops/group_denoise.py.
//
//   group_denoise_step(x_all[P_all,*S] (mutated), model_out[P_act,*S], idx[P_act],
//                      t[P_act], t_next[P_act], alphas_cumprod[T], prediction,
//                      clip_x0, return_x0) -> x0[P_act,*S] (or an empty tensor)
//       For each active patch p (row r = idx[p] of x_all), with a = ᾱ[t[p]] and
//       a' = ᾱ[t_next[p]] (a' = 1 when t_next[p] < 0, i.e. the last step):
//         "eps": x0 = (x - sqrt(1-a)·m) / sqrt(a),     e = m
//         "v":   x0 = sqrt(a)·x - sqrt(1-a)·m,         e = sqrt(1-a)·x + sqrt(a)·m
//         x0 = clamp(x0, -clip_x0, clip_x0) if clip_x0 is given (e is not recomputed)
//         x_all[r] = sqrt(a')·x0 + sqrt(1-a')·e          (DDIM, eta = 0)
//       where x = x_all[r], m = model_out[p]. Math in float32; returns x0 in
//       x_all's dtype when return_x0, else an empty tensor.
//   shortcut_noise(y0[P,*S], noise[P,*S], t[P], alphas_cumprod[T]) -> [P,*S]
//       sqrt(ᾱ[t[p]])·y0[p] + sqrt(1-ᾱ[t[p]])·noise[p]   (PGS start point), y0's dtype.
//
// States and model outputs: float32, float16 or bfloat16 (they may differ);
// idx/t/t_next: int32 or int64; alphas_cumprod: any floating dtype.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(patchscaler, m) {
  m.def(
      "group_denoise_step(Tensor(a!) x_all, Tensor model_out, Tensor idx, Tensor t, "
      "Tensor t_next, Tensor alphas_cumprod, str prediction=\"eps\", float? clip_x0=None, "
      "bool return_x0=False) -> Tensor");
  m.def("shortcut_noise(Tensor y0, Tensor noise, Tensor t, Tensor alphas_cumprod) -> Tensor");
}
