// Matrix-vector products for decode steps on x86-64 CPUs: y[M, N] = x[M, K] · w[N, K]ᵀ (+ bias), M small.
//
// A decode step multiplies a few rows of activations by every weight of the model once, so it is bound by
// how fast the weights stream from memory. torch's CPU kernels are built for matrix-matrix products and read
// them at about a third of the memory's speed here (docs/measurements.md, "Serving"); these read each weight
// row once for all M rows of x, with one fp32 accumulator per (x row, weight row). Each output element is
// one row of x against one row of w, whatever M is: a row's result does not depend on which rows share its
// batch. The instruction set is picked at run time: AVX512-BF16 (vdpbf16ps), AVX512F, or AVX2 with FMA.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace {

enum Isa : int64_t { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };
constexpr int kRows = 8;          // rows of x per pass over a weight row (accumulators held in registers)
constexpr int64_t kGrain = 16;    // weight rows per parallel task at least, and per pass over x's rows

Isa best_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
    return __builtin_cpu_supports("avx512bf16") ? kAvx512Bf16 : kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAvx2;
  return kScalar;
}

// One output element: the fp32 sum plus the bias, rounded to the output's type as torch rounds.
template <typename T>
inline void store(T* y, int64_t i, float sum, const T* bias, int64_t n) {
  if (bias != nullptr) sum += static_cast<float>(bias[n]);
  y[i] = static_cast<T>(sum);
}

// ---- AVX512-BF16: 32 bf16 products an instruction into 16 fp32 lanes. R (rows of x at once) is a template
// argument so that the R accumulators live in registers.
template <int R>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void rows_bf16_dp(
    const c10::BFloat16* x, const c10::BFloat16* w, const c10::BFloat16* bias, int64_t K, int64_t N,
    c10::BFloat16* y, int64_t n0, int64_t n1) {
  const int64_t full = K / 32 * 32;
  const __mmask32 tail = static_cast<__mmask32>((1ull << (K - full)) - 1);
  for (int64_t n = n0; n < n1; ++n) {
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    const c10::BFloat16* wr = w + n * K;
    int64_t k = 0;
    for (; k < full; k += 32) {
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(wr + k);
      for (int r = 0; r < R; ++r) {
        acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_loadu_si512(x + r * K + k), wv);
      }
    }
    if (tail) {
      const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(tail, wr + k);
      for (int r = 0; r < R; ++r) {
        acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_maskz_loadu_epi16(tail, x + r * K + k), wv);
      }
    }
    for (int r = 0; r < R; ++r) store(y, r * N + n, _mm512_reduce_add_ps(acc[r]), bias, n);
  }
}

// ---- AVX512F: fp32 weights, or bf16 weights widened to fp32 (x is fp32 here, widened once by the caller).
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 load16(const float* p, __mmask16 mask) {
  return _mm512_maskz_loadu_ps(mask, p);
}
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 load16(const c10::BFloat16* p, __mmask16 mask) {
  const __m256i half = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}

template <int R, typename W>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void rows_avx512(
    const float* x, const W* w, const W* bias, int64_t K, int64_t N, W* y, int64_t n0, int64_t n1) {
  const int64_t full = K / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (K - full)) - 1);
  for (int64_t n = n0; n < n1; ++n) {
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    const W* wr = w + n * K;
    int64_t k = 0;
    for (; k < full; k += 16) {
      const __m512 wv = load16(wr + k, 0xFFFF);
      for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(x + r * K + k), wv, acc[r]);
    }
    if (tail) {
      const __m512 wv = load16(wr + k, tail);
      for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, x + r * K + k), wv, acc[r]);
    }
    for (int r = 0; r < R; ++r) store(y, r * N + n, _mm512_reduce_add_ps(acc[r]), bias, n);
  }
}

// ---- AVX2 + FMA: 8 lanes; the last K % 8 products one at a time.
__attribute__((target("avx2,fma"))) inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
__attribute__((target("avx2,fma"))) inline __m256 load8(const c10::BFloat16* p) {
  const __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
}
__attribute__((target("avx2,fma"))) inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int R, typename W>
__attribute__((target("avx2,fma"))) void rows_avx2(
    const float* x, const W* w, const W* bias, int64_t K, int64_t N, W* y, int64_t n0, int64_t n1) {
  const int64_t full = K / 8 * 8;
  for (int64_t n = n0; n < n1; ++n) {
    __m256 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
    const W* wr = w + n * K;
    for (int64_t k = 0; k < full; k += 8) {
      const __m256 wv = load8(wr + k);
      for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * K + k), wv, acc[r]);
    }
    for (int r = 0; r < R; ++r) {
      float sum = hsum8(acc[r]);
      for (int64_t k = full; k < K; ++k) sum += x[r * K + k] * static_cast<float>(wr[k]);
      store(y, r * N + n, sum, bias, n);
    }
  }
}

template <int R, typename W>
void rows_scalar(const float* x, const W* w, const W* bias, int64_t K, int64_t N, W* y, int64_t n0, int64_t n1) {
  for (int r = 0; r < R; ++r) {
    for (int64_t n = n0; n < n1; ++n) {
      float sum = 0.f;
      for (int64_t k = 0; k < K; ++k) sum += x[r * K + k] * static_cast<float>(w[n * K + k]);
      store(y, r * N + n, sum, bias, n);
    }
  }
}

// Weight rows [n0, n1) against R rows of x (x and y already offset to the first of them), on `isa`.
template <int R, typename W>
void block(const W* x, const float* xf, const W* w, const W* bias, int64_t K, int64_t N, W* y, int64_t n0,
           int64_t n1, Isa isa) {
  if constexpr (std::is_same_v<W, c10::BFloat16>) {
    if (isa == kAvx512Bf16) return rows_bf16_dp<R>(x, w, bias, K, N, y, n0, n1);
  }
  switch (isa) {
    case kAvx512Bf16:
    case kAvx512: return rows_avx512<R>(xf, w, bias, K, N, y, n0, n1);
    case kAvx2: return rows_avx2<R>(xf, w, bias, K, N, y, n0, n1);
    default: return rows_scalar<R>(xf, w, bias, K, N, y, n0, n1);
  }
}

template <typename W>
void run(const torch::Tensor& x, const torch::Tensor& w, const W* bias, torch::Tensor& y, Isa isa) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  const W* xp = x.data_ptr<W>();
  const W* wp = w.data_ptr<W>();
  W* yp = y.data_ptr<W>();
  torch::Tensor widened;  // every path but vdpbf16ps multiplies in fp32: x widened once for all weight rows
  if (!(std::is_same_v<W, c10::BFloat16> && isa == kAvx512Bf16)) widened = x.to(torch::kFloat32).contiguous();
  const float* xf = widened.defined() ? widened.data_ptr<float>() : nullptr;
  at::parallel_for(0, N, kGrain, [&](int64_t begin, int64_t end) {
    // kGrain weight rows at a time, for every block of x's rows while they are still in cache
    for (int64_t n0 = begin; n0 < end; n0 += kGrain) {
      const int64_t n1 = std::min(end, n0 + kGrain);
      for (int64_t m = 0; m < M; m += kRows) {
        const W* xm = xp + m * K;
        const float* xfm = xf != nullptr ? xf + m * K : nullptr;
        W* ym = yp + m * N;
        switch (std::min<int64_t>(kRows, M - m)) {
          case 1: block<1>(xm, xfm, wp, bias, K, N, ym, n0, n1, isa); break;
          case 2: block<2>(xm, xfm, wp, bias, K, N, ym, n0, n1, isa); break;
          case 3: block<3>(xm, xfm, wp, bias, K, N, ym, n0, n1, isa); break;
          case 4: block<4>(xm, xfm, wp, bias, K, N, ym, n0, n1, isa); break;
          case 5: block<5>(xm, xfm, wp, bias, K, N, ym, n0, n1, isa); break;
          case 6: block<6>(xm, xfm, wp, bias, K, N, ym, n0, n1, isa); break;
          case 7: block<7>(xm, xfm, wp, bias, K, N, ym, n0, n1, isa); break;
          default: block<8>(xm, xfm, wp, bias, K, N, ym, n0, n1, isa);
        }
      }
    }
  });
}

}  // namespace

int64_t isa() { return best_isa(); }

// `use_isa` below the machine's best forces a slower path (tests check every path on one machine).
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& bias,
                     int64_t use_isa) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "x [M, K] and w [N, K]");
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "x and w of one dtype");
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "CPU tensors");
  TORCH_CHECK(w.is_contiguous(), "a contiguous weight");
  const Isa chosen = static_cast<Isa>(std::min<int64_t>(use_isa, best_isa()));
  const torch::Tensor xc = x.contiguous();
  torch::Tensor y = torch::empty({x.size(0), w.size(0)}, x.options());
  torch::Tensor b;
  if (bias.has_value()) b = bias->contiguous();
  switch (x.scalar_type()) {
    case torch::kFloat32:
      run<float>(xc, w, b.defined() ? b.data_ptr<float>() : nullptr, y, chosen);
      break;
    case torch::kBFloat16:
      run<c10::BFloat16>(xc, w, b.defined() ? b.data_ptr<c10::BFloat16>() : nullptr, y, chosen);
      break;
    default:
      TORCH_CHECK(false, "float32 or bfloat16, not ", x.scalar_type());
  }
  return y;
}

// RMSNorm of a few rows, as transformers' LlamaRMSNorm computes it: the mean of squares in fp32, x times its
// reciprocal square root rounded to x's dtype, then times the weight (rounded again): one call instead of
// eight small torch operations, 61 times a token in SmolLM2.
template <typename T>
void rms_rows(const T* x, const T* w, T* y, int64_t rows, int64_t H, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * H;
    float squares = 0.f;
    for (int64_t i = 0; i < H; ++i) {
      const float v = static_cast<float>(xr[i]);
      squares += v * v;
    }
    const float scale = 1.f / std::sqrt(squares / static_cast<float>(H) + eps);
    for (int64_t i = 0; i < H; ++i) {
      const T normed = static_cast<T>(static_cast<float>(xr[i]) * scale);
      y[r * H + i] = static_cast<T>(static_cast<float>(w[i]) * static_cast<float>(normed));
    }
  }
}

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 1 && x.size(1) == w.size(0), "x [M, H] and w [H]");
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "x and w of one dtype");
  const torch::Tensor xc = x.contiguous(), wc = w.contiguous();
  torch::Tensor y = torch::empty_like(xc);
  switch (x.scalar_type()) {
    case torch::kFloat32:
      rms_rows(xc.data_ptr<float>(), wc.data_ptr<float>(), y.data_ptr<float>(), x.size(0), x.size(1), eps);
      break;
    case torch::kBFloat16:
      rms_rows(xc.data_ptr<c10::BFloat16>(), wc.data_ptr<c10::BFloat16>(), y.data_ptr<c10::BFloat16>(),
               x.size(0), x.size(1), eps);
      break;
    default:
      TORCH_CHECK(false, "float32 or bfloat16, not ", x.scalar_type());
  }
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rms_norm", &rms_norm, "LlamaRMSNorm of a few rows");
  m.def("isa", &isa, "The best instruction set this CPU runs: 0 scalar, 1 AVX2, 2 AVX512F, 3 AVX512-BF16");
  m.def("linear", &linear, "y = x · wᵀ (+ bias) for a few rows of x");
}
