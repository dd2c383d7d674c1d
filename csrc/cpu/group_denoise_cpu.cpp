// CPU kernels of group_denoise_step and shortcut_noise (schemas and the math in
// csrc/group_denoise.cpp): one fused pass over memory each.
//
// Every DDIM (eta = 0) update is linear in (x, m) per patch, up to the optional
// clamp of x0:
//     x0 = cx·x + cm·m,   e = ex·x + em·m,   x' = sn·clamp(x0) + sn1·e
// so the per-patch coefficients are computed once (in double, from the ᾱ table) and
// the element loop is a handful of float FMAs that the compiler vectorises. A patch
// row is read and written where it lies in x_all: no gathered copy of the active set.
// Per-operator ATen headers only: including <ATen/ATen.h> (every op, thousands of
// headers) would be a compile error, which keeps this file's build fast.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS

#include "dtype_name.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace patchscaler {
namespace {

// Elements per parallel task (about 128 KiB of float32): big enough to amortise the
// per-task setup, small enough to split a single huge patch across threads.
constexpr int64_t kChunk = 32768;

bool is_state_dtype(at::ScalarType s) {
  return s == at::kFloat || s == at::kHalf || s == at::kBFloat16;
}

// True when each row t[i] (all dims but the first) is one dense block, so row i
// starts at data + i * stride(0) whatever that stride is (a slice x[::2] qualifies).
bool rows_dense(const at::Tensor& t) {
  int64_t expected = 1;
  for (int64_t d = t.dim() - 1; d >= 1; --d) {
    if (t.size(d) != 1 && t.stride(d) != expected) return false;
    expected *= t.size(d);
  }
  return true;
}

void check_state(const char* op, const char* name, const at::Tensor& v) {
  TORCH_CHECK_VALUE(v.dim() >= 1, op, ": ", name, " must have a leading patch dimension, got a 0-d tensor");
  TORCH_CHECK_VALUE(is_state_dtype(v.scalar_type()), op, ": ", name,
              " must be float32, float16 or bfloat16, got ", dtype_name(v.scalar_type()));
}

void check_same_device(const char* op, const char* name, const at::Tensor& v,
                       const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_VALUE(v.device() == ref.device(), op, ": ", name, " is on ", v.device(), " but ",
              ref_name, " is on ", ref.device(), "; all tensors must be on the same device");
}

// A per-patch integer vector (idx, t, t_next) as contiguous int64.
at::Tensor per_patch_ints(const char* op, const char* name, const at::Tensor& v, int64_t n,
                          const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_VALUE(v.dim() == 1 && v.size(0) == n, op, ": ", name,
              " must be a 1-D tensor with one entry per patch (", n, "), got shape ", v.sizes());
  TORCH_CHECK_VALUE(v.scalar_type() == at::kLong || v.scalar_type() == at::kInt, op, ": ", name,
              " must be int64 or int32, got ", dtype_name(v.scalar_type()));
  check_same_device(op, name, v, ref, ref_name);
  return v.to(at::kLong).contiguous();
}

// The ᾱ table as contiguous float64 (a few thousand entries at most).
at::Tensor alpha_table(const char* op, const at::Tensor& ac, const at::Tensor& ref,
                       const char* ref_name) {
  TORCH_CHECK_VALUE(ac.dim() == 1 && ac.size(0) >= 1, op,
              ": alphas_cumprod must be a non-empty 1-D tensor [T], got shape ", ac.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(ac.scalar_type()), op,
              ": alphas_cumprod must be a floating tensor, got ", dtype_name(ac.scalar_type()));
  check_same_device(op, "alphas_cumprod", ac, ref, ref_name);
  return ac.to(at::kDouble).contiguous();
}

void check_timesteps(const char* op, const char* name, const int64_t* t, int64_t n, int64_t T,
                     bool allow_negative) {
  for (int64_t p = 0; p < n; ++p) {
    const bool ok = t[p] < T && (allow_negative || t[p] >= 0);
    TORCH_CHECK_VALUE(ok, op, ": ", name, "[", p, "] = ", t[p], " is out of range for alphas_cumprod of length ",
                T, allow_negative ? " (need t_next < T; a negative t_next means the last step)"
                                  : " (need 0 <= t < T)");
  }
}

struct Coeffs {
  float cx, cm, ex, em, sn, sn1;
};

Coeffs ddim_coeffs(double a, double a_next, bool v_pred) {
  const double s = std::sqrt(a), s1 = std::sqrt(1.0 - a);
  const double sn = std::sqrt(a_next), sn1 = std::sqrt(1.0 - a_next);
  if (v_pred) {  // x0 = s·x − s1·v,  e = s1·x + s·v
    return {float(s), float(-s1), float(s1), float(s), float(sn), float(sn1)};
  }
  // x0 = (x − s1·e) / s,  e = m
  return {float(1.0 / s), float(-s1 / s), 0.0f, 1.0f, float(sn), float(sn1)};
}

template <typename x_t, typename m_t, bool kClip, bool kX0>
void ddim_rows(x_t* x, int64_t x_stride, const m_t* m, int64_t m_stride, x_t* x0, int64_t E,
               const int64_t* rows, const Coeffs* coeffs, int64_t P, float clip) {
  const int64_t chunk = std::min(E, kChunk);
  const int64_t n_chunks = (E + chunk - 1) / chunk;
  const int64_t grain = std::max<int64_t>(1, kChunk / chunk);
  at::parallel_for(0, P * n_chunks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t p = task / n_chunks;
      const int64_t j0 = (task % n_chunks) * chunk, j1 = std::min(E, j0 + chunk);
      x_t* __restrict__ xr = x + rows[p] * x_stride;
      const m_t* __restrict__ mr = m + p * m_stride;
      x_t* __restrict__ x0r = kX0 ? x0 + p * E : nullptr;
      const Coeffs c = coeffs[p];
      for (int64_t j = j0; j < j1; ++j) {
        const float xv = static_cast<float>(xr[j]);
        const float mv = static_cast<float>(mr[j]);
        float x0v = c.cx * xv + c.cm * mv;
        if constexpr (kClip) x0v = std::min(std::max(x0v, -clip), clip);
        const float ev = c.ex * xv + c.em * mv;
        xr[j] = static_cast<x_t>(c.sn * x0v + c.sn1 * ev);
        if constexpr (kX0) x0r[j] = static_cast<x_t>(x0v);
      }
    }
  });
}

// The three state dtypes (nested below for the state and the model output).
#define PATCHSCALER_STATE_TYPES(TYPE, NAME, ...)                \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                 \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)    \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)     \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

at::Tensor group_denoise_step_cpu(at::Tensor& x_all, const at::Tensor& model_out,
                                  const at::Tensor& idx, const at::Tensor& t,
                                  const at::Tensor& t_next, const at::Tensor& alphas_cumprod,
                                  c10::string_view prediction, std::optional<double> clip_x0,
                                  bool return_x0) {
  constexpr const char* op = "group_denoise_step";
  check_state(op, "x_all", x_all);
  check_state(op, "model_out", model_out);
  check_same_device(op, "model_out", model_out, x_all, "x_all");
  TORCH_CHECK_VALUE(model_out.dim() == x_all.dim() && model_out.sizes().slice(1) == x_all.sizes().slice(1),
              op, ": model_out must be [P_act, *S] where x_all is [P_all, *S]; got model_out ",
              model_out.sizes(), " and x_all ", x_all.sizes());
  TORCH_CHECK_VALUE(prediction == "eps" || prediction == "v", op,
              ": prediction must be \"eps\" or \"v\", got \"", std::string(prediction), "\"");
  TORCH_CHECK_VALUE(!clip_x0.has_value() || *clip_x0 >= 0.0, op,
              ": clip_x0 must be >= 0 (x0 is clamped to [-clip_x0, clip_x0]), got ", *clip_x0);
  const int64_t P_all = x_all.size(0), P = model_out.size(0);
  const at::Tensor rows = per_patch_ints(op, "idx", idx, P, x_all, "x_all");
  const at::Tensor ts = per_patch_ints(op, "t", t, P, x_all, "x_all");
  const at::Tensor tns = per_patch_ints(op, "t_next", t_next, P, x_all, "x_all");
  const at::Tensor ac = alpha_table(op, alphas_cumprod, x_all, "x_all");
  const int64_t T = ac.size(0);

  // Value checks: a few passes over P_act integers, negligible beside the patch data.
  const int64_t* r = rows.const_data_ptr<int64_t>();
  std::vector<int64_t> first_seen(P_all, -1);
  for (int64_t p = 0; p < P; ++p) {
    TORCH_CHECK_VALUE(r[p] >= 0 && r[p] < P_all, op, ": idx[", p, "] = ", r[p],
                " is out of range for x_all with ", P_all, " patches");
    TORCH_CHECK_VALUE(first_seen[r[p]] < 0, op, ": idx has duplicate entry ", r[p], " (at positions ",
                first_seen[r[p]], " and ", p, "); each patch can take one step per call");
    first_seen[r[p]] = p;
  }
  const int64_t* tp = ts.const_data_ptr<int64_t>();
  const int64_t* tnp = tns.const_data_ptr<int64_t>();
  check_timesteps(op, "t", tp, P, T, /*allow_negative=*/false);
  check_timesteps(op, "t_next", tnp, P, T, /*allow_negative=*/true);

  at::Tensor x0 = return_x0 ? at::empty(model_out.sizes(), x_all.options())
                            : at::empty({0}, x_all.options());
  if (P == 0 || model_out.numel() == 0) return x0;

  const bool v_pred = prediction == "v";
  const double* a = ac.const_data_ptr<double>();
  std::vector<Coeffs> coeffs(P);
  for (int64_t p = 0; p < P; ++p) {
    coeffs[p] = ddim_coeffs(a[tp[p]], tnp[p] < 0 ? 1.0 : a[tnp[p]], v_pred);
  }

  // Rows are addressed in place; only layouts that are not row-dense go through a copy.
  const bool in_place = rows_dense(x_all);
  at::Tensor xw = in_place ? x_all : x_all.contiguous();
  const at::Tensor mw = rows_dense(model_out) ? model_out : model_out.contiguous();
  const int64_t E = model_out.numel() / P;
  const float clip = clip_x0.has_value() ? static_cast<float>(*clip_x0) : 0.0f;

  PATCHSCALER_STATE_TYPES(xw.scalar_type(), "group_denoise_step_cpu", [&] {
    using x_t = scalar_t;
    PATCHSCALER_STATE_TYPES(mw.scalar_type(), "group_denoise_step_cpu", [&] {
      using m_t = scalar_t;
      x_t* xp = xw.mutable_data_ptr<x_t>();
      const m_t* mp = mw.const_data_ptr<m_t>();
      x_t* x0p = return_x0 ? x0.mutable_data_ptr<x_t>() : nullptr;
      const int64_t xs = xw.stride(0), ms = mw.stride(0);
      const bool clip_on = clip_x0.has_value();
      if (clip_on && return_x0) {
        ddim_rows<x_t, m_t, true, true>(xp, xs, mp, ms, x0p, E, r, coeffs.data(), P, clip);
      } else if (clip_on) {
        ddim_rows<x_t, m_t, true, false>(xp, xs, mp, ms, x0p, E, r, coeffs.data(), P, clip);
      } else if (return_x0) {
        ddim_rows<x_t, m_t, false, true>(xp, xs, mp, ms, x0p, E, r, coeffs.data(), P, clip);
      } else {
        ddim_rows<x_t, m_t, false, false>(xp, xs, mp, ms, x0p, E, r, coeffs.data(), P, clip);
      }
    });
  });
  if (!in_place) x_all.copy_(xw);
  return x0;
}

template <typename y_t, typename n_t>
void noise_rows(const y_t* y0, int64_t y_stride, const n_t* noise, int64_t n_stride, y_t* out,
                int64_t E, const float* sa, const float* sb, int64_t P) {
  const int64_t chunk = std::min(E, kChunk);
  const int64_t n_chunks = (E + chunk - 1) / chunk;
  const int64_t grain = std::max<int64_t>(1, kChunk / chunk);
  at::parallel_for(0, P * n_chunks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t p = task / n_chunks;
      const int64_t j0 = (task % n_chunks) * chunk, j1 = std::min(E, j0 + chunk);
      const y_t* __restrict__ yr = y0 + p * y_stride;
      const n_t* __restrict__ nr = noise + p * n_stride;
      y_t* __restrict__ o = out + p * E;
      const float a = sa[p], b = sb[p];
      for (int64_t j = j0; j < j1; ++j) {
        o[j] = static_cast<y_t>(a * static_cast<float>(yr[j]) + b * static_cast<float>(nr[j]));
      }
    }
  });
}

at::Tensor shortcut_noise_cpu(const at::Tensor& y0, const at::Tensor& noise, const at::Tensor& t,
                              const at::Tensor& alphas_cumprod) {
  constexpr const char* op = "shortcut_noise";
  check_state(op, "y0", y0);
  check_state(op, "noise", noise);
  check_same_device(op, "noise", noise, y0, "y0");
  TORCH_CHECK_VALUE(noise.sizes() == y0.sizes(), op, ": noise must have the shape of y0 ", y0.sizes(),
              ", got ", noise.sizes());
  const int64_t P = y0.size(0);
  const at::Tensor ts = per_patch_ints(op, "t", t, P, y0, "y0");
  const at::Tensor ac = alpha_table(op, alphas_cumprod, y0, "y0");
  const int64_t* tp = ts.const_data_ptr<int64_t>();
  check_timesteps(op, "t", tp, P, ac.size(0), /*allow_negative=*/false);

  at::Tensor out = at::empty(y0.sizes(), y0.options());
  if (out.numel() == 0) return out;
  const double* a = ac.const_data_ptr<double>();
  std::vector<float> sa(P), sb(P);
  for (int64_t p = 0; p < P; ++p) {
    sa[p] = static_cast<float>(std::sqrt(a[tp[p]]));
    sb[p] = static_cast<float>(std::sqrt(1.0 - a[tp[p]]));
  }
  const at::Tensor yw = rows_dense(y0) ? y0 : y0.contiguous();
  const at::Tensor nw = rows_dense(noise) ? noise : noise.contiguous();
  const int64_t E = y0.numel() / P;
  PATCHSCALER_STATE_TYPES(yw.scalar_type(), "shortcut_noise_cpu", [&] {
    using y_t = scalar_t;
    PATCHSCALER_STATE_TYPES(nw.scalar_type(), "shortcut_noise_cpu", [&] {
      noise_rows<y_t, scalar_t>(yw.const_data_ptr<y_t>(), yw.stride(0),
                                nw.const_data_ptr<scalar_t>(), nw.stride(0),
                                out.mutable_data_ptr<y_t>(), E, sa.data(), sb.data(), P);
    });
  });
  return out;
}

#undef PATCHSCALER_STATE_TYPES

}  // namespace

TORCH_LIBRARY_IMPL(patchscaler, CPU, m) {
  m.impl("group_denoise_step", &group_denoise_step_cpu);
  m.impl("shortcut_noise", &shortcut_noise_cpu);
}

}  // namespace patchscaler
