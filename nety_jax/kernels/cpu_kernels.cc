// Our CPU kernels for decoding, called from XLA through jax.ffi (nety_jax/kernels):
//
// nety_int8_matmul: y = (x @ w) * scale with an int8 weight matrix, the matrix-vector
// products of int8 decoding (issue #12). XLA's CPU backend has no kernel that reads int8
// weights: it widens them to float32 first (or hoists the widening out of the decode
// loop), so the loop streams four bytes per weight either way. This one streams the int8
// rows once, widens 16 weights per instruction in registers and accumulates in float32;
// it is meant for a few rows (a decode step's batch), where the bytes of the weights bound
// the product. x (M, K) float32, w (K, N) int8 row-major, scale (N,) float32, y (M, N).
//
// nety_top_k: the k largest values of each row and their indices, sorted descending (ties:
// the lower index first), as lax.top_k. XLA's CPU TopK costs about 28 us a row at 8,000
// columns (a decode step at batch 64: 1.8 ms); here a bar from block maxima first, then
// only the few values above it are collected and sorted.
//
// nety_decode_attention: one query a (row, head) over the first n filled positions of its
// KV cache. XLA's masked product reads all L positions of every cache every step.
//
// nety_matmul: y = x @ w in float32 for a decode step's batch (tens of rows), with w
// (K, N) row-major as the model stores it, read unpacked. The weights of a decode step
// (92 MB for NETY) stream from memory every step; XLA's GEMM stalls on them (296 GFLOP/s
// against 403 with the same weights in cache). Here the work is chunks of kChunkPanels
// panels of 48 columns, each chunk all rows (blocks of 8), claimed one at a time by
// whichever thread is free: a panel is read from memory by one core only, into its L2,
// and from L2 for the row blocks after the first; while a panel is computed the next one
// is prefetched, an eighth per row block. (Until 2026-12-05 each thread took a fixed half
// of the rows across every panel: both cores read every weight, and a call waited for
// the slower half: docs/PERFORMANCE.md.) AVX-512 only (nety_matmul_fast() says whether
// this build has it).
//
// Work splits into blocks shared by the calling thread and XLA's intra-op threads (the
// handler's ThreadPool context). Our own helper threads did this until 2026-11-30: they
// competed for the two cores with XLA's workers, which spin for a while after each of
// XLA's products, so the attention read its caches at about 24 GB/s in a decode step
// against 39 GB/s alone; handed to those spinning workers it reads at ~40 GB/s
// (docs/PERFORMANCE.md). A task that starts after all blocks are claimed does nothing, and
// the caller only waits for blocks already claimed, so a late task never blocks it.
#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <thread>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kRows = 4;  // weight rows folded into one pass over the accumulators

#if defined(__AVX512F__)
inline __m512 Widen(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
#endif

// Adds x[m, k:k+r] @ w[k:k+r, n0:n1] to y[m, n0:n1] for every row m < m_rows (at most
// kMaxRows) and r <= kRows weight rows: each 16 weights are widened once for all rows.
constexpr int64_t kMaxRows = 4;

template <int64_t m_rows>
void AccumulateRows(const float* x, const int8_t* w, float* y, int64_t k_dim, int64_t k, int64_t r,
                    int64_t n, int64_t n0, int64_t n1) {
  float a[m_rows][kRows] = {};
  const int8_t* row[kRows];
  for (int64_t i = 0; i < kRows; ++i) {
    row[i] = w + (k + std::min(i, r - 1)) * n;
    for (int64_t m = 0; m < m_rows; ++m) a[m][i] = i < r ? x[m * k_dim + k + i] : 0.f;
  }
  int64_t j = n0;
#if defined(__AVX512F__)
  __m512 av[m_rows][kRows];
  for (int64_t m = 0; m < m_rows; ++m)
    for (int64_t i = 0; i < kRows; ++i) av[m][i] = _mm512_set1_ps(a[m][i]);
  for (; j + 16 <= n1; j += 16) {
    const __m512 w0 = Widen(row[0] + j), w1 = Widen(row[1] + j);
    const __m512 w2 = Widen(row[2] + j), w3 = Widen(row[3] + j);
    for (int64_t m = 0; m < m_rows; ++m) {
      float* ym = y + m * n + j;
      __m512 acc = _mm512_loadu_ps(ym);
      acc = _mm512_fmadd_ps(w0, av[m][0], acc);
      acc = _mm512_fmadd_ps(w1, av[m][1], acc);
      acc = _mm512_fmadd_ps(w2, av[m][2], acc);
      acc = _mm512_fmadd_ps(w3, av[m][3], acc);
      _mm512_storeu_ps(ym, acc);
    }
  }
#endif
  for (; j < n1; ++j) {
    for (int64_t m = 0; m < m_rows; ++m) {
      y[m * n + j] += a[m][0] * row[0][j] + a[m][1] * row[1][j] + a[m][2] * row[2][j] + a[m][3] * row[3][j];
    }
  }
}

void Block(const float* x, const int8_t* w, const float* scale, float* y, int64_t m_rows,
           int64_t k_dim, int64_t n, int64_t n0, int64_t n1) {
  for (int64_t m = 0; m < m_rows; ++m) std::fill(y + m * n + n0, y + m * n + n1, 0.f);
  for (int64_t m0 = 0; m0 < m_rows; m0 += kMaxRows) {  // groups of rows share the widening
    const int64_t mr = std::min(kMaxRows, m_rows - m0);
    for (int64_t k = 0; k < k_dim; k += kRows) {
      const float* xm = x + m0 * k_dim;
      float* ym = y + m0 * n;
      const int64_t r = std::min(kRows, k_dim - k);
      switch (mr) {  // the row count as a constant: the accumulators' broadcasts stay in registers
        case 1: AccumulateRows<1>(xm, w, ym, k_dim, k, r, n, n0, n1); break;
        case 2: AccumulateRows<2>(xm, w, ym, k_dim, k, r, n, n0, n1); break;
        case 3: AccumulateRows<3>(xm, w, ym, k_dim, k, r, n, n0, n1); break;
        default: AccumulateRows<4>(xm, w, ym, k_dim, k, r, n, n0, n1); break;
      }
    }
  }
  for (int64_t m = 0; m < m_rows; ++m) {
    float* ym = y + m * n;
    for (int64_t j = n0; j < n1; ++j) ym[j] *= scale[j];
  }
}

struct Job {
  std::function<void(int64_t)> run;
  int64_t blocks = 0;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  // Claims and runs blocks until none is left.
  void Work() {
    for (int64_t b = next.fetch_add(1); b < blocks; b = next.fetch_add(1)) {
      run(b);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

// Runs fn(0) .. fn(blocks - 1) on the calling thread and XLA's intra-op threads. A task that
// starts after every block is claimed does nothing (the job outlives the call through the
// task's reference), and the caller waits only for blocks already claimed.
void ParallelFor(ffi::ThreadPool& pool, int64_t blocks, std::function<void(int64_t)> fn) {
  auto job = std::make_shared<Job>();
  job->run = std::move(fn);
  job->blocks = blocks;
  const int64_t tasks = std::min<int64_t>(pool.num_threads(), blocks - 1);
  for (int64_t i = 0; i < tasks; ++i) pool.Schedule([job] { job->Work(); });
  job->Work();
  while (job->done.load(std::memory_order_acquire) < blocks) std::this_thread::yield();
}

int64_t Threads(ffi::ThreadPool& pool) { return std::max<int64_t>(1, pool.num_threads()); }

ffi::Error Int8MatmulImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> w, ffi::Buffer<ffi::F32> scale,
                          ffi::ResultBuffer<ffi::F32> y, ffi::ThreadPool pool) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || xd[1] != wd[0] || scale.element_count() != wd[1]) {
    return ffi::Error::InvalidArgument("nety_int8_matmul: expects x (M, K), w (K, N), scale (N,)");
  }
  const float* xp = x.typed_data();
  const int8_t* wp = w.typed_data();
  const float* sp = scale.typed_data();
  float* yp = y->typed_data();
  const int64_t m = xd[0], k = xd[1], n = wd[1], threads = Threads(pool);
  // blocks of whole cache lines, about two per thread (eight per thread measured slower)
  const int64_t per = (n + 2 * threads - 1) / (2 * threads);
  const int64_t block = std::max<int64_t>(64, (per + 63) / 64 * 64);
  ParallelFor(pool, (n + block - 1) / block, [=](int64_t b) {
    Block(xp, wp, sp, yp, m, k, n, b * block, std::min(n, (b + 1) * block));
  });
  return ffi::Error::Success();
}

// -- top-k --------------------------------------------------------------------------------

// Values compare in IEEE total order, as XLA's TopK does: the float's bits as a signed
// integer, with the magnitude bits flipped for negative numbers (-NaN < -inf < ... < -0 <
// +0 < ... < +inf < +NaN). A key and its index then make a strict order: higher key first,
// and among equal keys the lower index.
inline int32_t Key(float v) {
  int32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return bits < 0 ? bits ^ 0x7FFFFFFF : bits;
}

struct Entry {
  int32_t key;
  int32_t index;
};

inline bool Better(const Entry& a, const Entry& b) {
  return a.key > b.key || (a.key == b.key && a.index < b.index);
}

// The k best of one row, in two passes. First a bar that no top-k value can be below: the
// row cut into 2k blocks, the k-th largest of their maxima (k distinct values reach it, so
// the k-th largest of the row does too). Then only values >= the bar are collected (a few
// percent of a row of logits) and sorted. Keys compare as integers, 16 per instruction.
void TopKRow(const float* row, int64_t n, int64_t k, float* values, int32_t* indices) {
  std::vector<Entry> buf;
  int32_t bar = INT32_MIN;
  const int64_t blocks = 2 * k, width = n / blocks;
  if (width >= 16) {
    std::vector<int32_t> maxima(blocks);
    for (int64_t b = 0; b < blocks; ++b) {
      const float* p = row + b * width;
      int32_t best = INT32_MIN;
      for (int64_t i = 0; i < width; ++i) best = std::max(best, Key(p[i]));
      maxima[b] = best;
    }
    std::nth_element(maxima.begin(), maxima.begin() + (k - 1), maxima.end(), std::greater<int32_t>());
    bar = maxima[k - 1];
  }
  buf.reserve(4 * k);
  int64_t j = 0;
#if defined(__AVX512F__)
  const __m512i flip = _mm512_set1_epi32(0x7FFFFFFF), bars = _mm512_set1_epi32(bar);
  for (; j + 16 <= n; j += 16) {
    const __m512i bits = _mm512_loadu_si512(reinterpret_cast<const void*>(row + j));
    const __m512i keys = _mm512_xor_si512(bits, _mm512_and_si512(_mm512_srai_epi32(bits, 31), flip));
    __mmask16 hit = _mm512_cmpge_epi32_mask(keys, bars);
    while (hit) {
      const int64_t i = j + __builtin_ctz(hit);
      buf.push_back({Key(row[i]), static_cast<int32_t>(i)});
      hit &= hit - 1;
    }
  }
#endif
  for (; j < n; ++j) {
    if (Key(row[j]) >= bar) buf.push_back({Key(row[j]), static_cast<int32_t>(j)});
  }
  std::partial_sort(buf.begin(), buf.begin() + k, buf.end(), Better);
  for (int64_t i = 0; i < k; ++i) {
    const int32_t bits = buf[i].key < 0 ? buf[i].key ^ 0x7FFFFFFF : buf[i].key;
    std::memcpy(values + i, &bits, sizeof bits);
    indices[i] = buf[i].index;
  }
}

ffi::Error TopKImpl(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> values,
                    ffi::ResultBuffer<ffi::S32> indices, ffi::ThreadPool pool) {
  const auto xd = x.dimensions(), vd = values->dimensions();
  if (xd.size() != 2 || vd.size() != 2 || vd[0] != xd[0] || vd[1] > xd[1] || vd[1] < 1) {
    return ffi::Error::InvalidArgument("nety_top_k: expects x (B, N) and outputs (B, k), 1 <= k <= N");
  }
  const float* xp = x.typed_data();
  float* vp = values->typed_data();
  int32_t* ip = indices->typed_data();
  const int64_t rows = xd[0], n = xd[1], k = vd[1];
  const int64_t blocks = rows * n < (1 << 16) ? 1 : std::min(rows, 4 * Threads(pool));
  ParallelFor(pool, blocks, [=](int64_t b) {
    for (int64_t r = b * rows / blocks; r < (b + 1) * rows / blocks; ++r) {
      TopKRow(xp + r * n, n, k, vp + r * k, ip + r * k);
    }
  });
  return ffi::Error::Success();
}

// -- one-query attention over a KV cache ---------------------------------------------------

inline float Dot(const float* a, const float* b, int64_t d) {
  int64_t i = 0;
  float s = 0.f;
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  for (; i + 16 <= d; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
  s = _mm512_reduce_add_ps(acc);
#endif
  for (; i < d; ++i) s += a[i] * b[i];
  return s;
}

#if defined(__AVX512F__)
// exp of 16 values <= 0 (scores minus their maximum): Cephes' expf, x = n ln2 + r with a
// degree-6 polynomial for e^r, then p * 2^n by vscalefps (within 2 ulp of std::exp).
inline __m512 Exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(y, n);
}
#endif

// out = softmax(q . k[j] / sqrt(d), j < n) @ v[:n] for one (row, head): only the n filled
// positions of the cache are read (XLA's masked product reads all L of them every step).
void AttendOne(const float* q, const float* k, const float* v, int64_t n, int64_t d, float* out,
               std::vector<float>& scores) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  scores.resize(n);
  float best = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    scores[j] = Dot(q, k + j * d, d) * scale;
    best = std::max(best, scores[j]);
  }
  float total = 0.f;
  int64_t j = 0;
#if defined(__AVX512F__)
  __m512 sum = _mm512_setzero_ps();
  for (; j + 16 <= n; j += 16) {
    const __m512 e = Exp16(_mm512_sub_ps(_mm512_loadu_ps(scores.data() + j), _mm512_set1_ps(best)));
    _mm512_storeu_ps(scores.data() + j, e);
    sum = _mm512_add_ps(sum, e);
  }
  total = _mm512_reduce_add_ps(sum);
#endif
  for (; j < n; ++j) {
    scores[j] = std::exp(scores[j] - best);
    total += scores[j];
  }
  const float inv = 1.0f / total;
#if defined(__AVX512F__)
  if (d == 64) {  // the usual head size: the output row stays in four registers
    __m512 o0 = _mm512_setzero_ps(), o1 = o0, o2 = o0, o3 = o0;
    for (int64_t j = 0; j < n; ++j) {
      const __m512 w = _mm512_set1_ps(scores[j]);
      const float* vj = v + j * 64;
      o0 = _mm512_fmadd_ps(w, _mm512_loadu_ps(vj), o0);
      o1 = _mm512_fmadd_ps(w, _mm512_loadu_ps(vj + 16), o1);
      o2 = _mm512_fmadd_ps(w, _mm512_loadu_ps(vj + 32), o2);
      o3 = _mm512_fmadd_ps(w, _mm512_loadu_ps(vj + 48), o3);
    }
    const __m512 s = _mm512_set1_ps(inv);
    _mm512_storeu_ps(out, _mm512_mul_ps(o0, s));
    _mm512_storeu_ps(out + 16, _mm512_mul_ps(o1, s));
    _mm512_storeu_ps(out + 32, _mm512_mul_ps(o2, s));
    _mm512_storeu_ps(out + 48, _mm512_mul_ps(o3, s));
    return;
  }
#endif
  std::fill(out, out + d, 0.f);
  for (int64_t j = 0; j < n; ++j) {
    const float* vj = v + j * d;
    for (int64_t i = 0; i < d; ++i) out[i] += scores[j] * vj[i];
  }
  for (int64_t i = 0; i < d; ++i) out[i] *= inv;
}

ffi::Error DecodeAttentionImpl(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                               ffi::Buffer<ffi::S32> lengths, ffi::ResultBuffer<ffi::F32> out,
                               ffi::ThreadPool pool) {
  const auto qd = q.dimensions(), kd = k.dimensions();
  if (qd.size() != 3 || kd.size() != 4 || kd[0] != qd[0] || kd[1] != qd[1] || kd[3] != qd[2] ||
      v.element_count() != k.element_count() || lengths.element_count() != qd[0]) {
    return ffi::Error::InvalidArgument(
        "nety_decode_attention: expects q (B, H, D), k and v (B, H, L, D), lengths (B,)");
  }
  const float* qp = q.typed_data();
  const float* kp = k.typed_data();
  const float* vp = v.typed_data();
  const int32_t* lp = lengths.typed_data();
  float* op = out->typed_data();
  const int64_t heads = qd[0] * qd[1], h = qd[1], len = kd[2], d = kd[3];
  // small steps (a batch of a few rows) stay on the calling thread: handing blocks to other threads costs more
  const int64_t blocks = heads * len * d < (1 << 18) ? 1 : std::min(heads, 8 * Threads(pool));
  ParallelFor(pool, blocks, [=](int64_t b) {
    std::vector<float> scores;
    const int64_t end = (b + 1) * heads / blocks;
    for (int64_t r = b * heads / blocks; r < end; ++r) {
      const int64_t n = std::min<int64_t>(len, std::max<int32_t>(lp[r / h], 1));
      if (r + 1 < end) {  // the next head's keys and values: keep memory busy while this one computes
        const int64_t next = std::min<int64_t>(len, std::max<int32_t>(lp[(r + 1) / h], 1));
        for (int64_t off = 0; off < next * d; off += 16) {
          __builtin_prefetch(kp + (r + 1) * len * d + off);
          __builtin_prefetch(vp + (r + 1) * len * d + off);
        }
      }
      AttendOne(qp + r * d, kp + r * len * d, vp + r * len * d, n, d, op + r * d, scores);
    }
  });
  return ffi::Error::Success();
}

// -- float32 product for a decode step ------------------------------------------------------

#if defined(__AVX512F__)
constexpr int64_t kPanel = 48;  // columns of w per panel: three 16-float vectors
constexpr int64_t kBlockRows = 8;
constexpr int64_t kDepth = 512;  // rows of w per pass: a panel's slice and x's columns stay in L2
constexpr int64_t kChunkPanels = 4;  // panels a thread claims at a time (192 columns)

// y[0:8, 0:48] (+)= x[0:8, 0:k_dim] @ w[0:k_dim, 0:48] with 24 accumulators in registers; x's
// rows are ldx apart, w's ldw (n as the model stores it, 48 packed), y's ldy. ``next``: the
// next panel at the same depth (rows ldw apart), whose rows [block * k_dim/8, (block + 1) *
// k_dim/8) this row block prefetches into L2 (one every 8 k; into L1 measured no better).
inline void Block8x48(const float* x, int64_t ldx, const float* w, int64_t ldw, float* y, int64_t ldy,
                      int64_t k_dim, const float* next, int64_t block, bool accumulate) {
#define NETY_ROW(m) __m512 c##m##0 = _mm512_setzero_ps(), c##m##1 = c##m##0, c##m##2 = c##m##0; \
  const float* x##m = x + m * ldx; \
  if (accumulate) { c##m##0 = _mm512_loadu_ps(y + m * ldy); c##m##1 = _mm512_loadu_ps(y + m * ldy + 16); \
                    c##m##2 = _mm512_loadu_ps(y + m * ldy + 32); }
  NETY_ROW(0) NETY_ROW(1) NETY_ROW(2) NETY_ROW(3) NETY_ROW(4) NETY_ROW(5) NETY_ROW(6) NETY_ROW(7)
#undef NETY_ROW
  const int64_t slice = block * (k_dim >> 3);
  for (int64_t k = 0; k < k_dim; ++k) {
    const float* wk = w + k * ldw;
    if (next != nullptr && (k & 7) == 0) {
      const char* p = reinterpret_cast<const char*>(next + (slice + (k >> 3)) * ldw);
      _mm_prefetch(p, _MM_HINT_T2);
      _mm_prefetch(p + 64, _MM_HINT_T2);
      _mm_prefetch(p + 128, _MM_HINT_T2);
    }
    const __m512 b0 = _mm512_loadu_ps(wk), b1 = _mm512_loadu_ps(wk + 16), b2 = _mm512_loadu_ps(wk + 32);
#define NETY_FMA(m) { const __m512 a = _mm512_set1_ps(x##m[k]); c##m##0 = _mm512_fmadd_ps(a, b0, c##m##0); \
    c##m##1 = _mm512_fmadd_ps(a, b1, c##m##1); c##m##2 = _mm512_fmadd_ps(a, b2, c##m##2); }
    NETY_FMA(0) NETY_FMA(1) NETY_FMA(2) NETY_FMA(3) NETY_FMA(4) NETY_FMA(5) NETY_FMA(6) NETY_FMA(7)
#undef NETY_FMA
  }
#define NETY_STORE(m) _mm512_storeu_ps(y + m * ldy, c##m##0); _mm512_storeu_ps(y + m * ldy + 16, c##m##1); \
  _mm512_storeu_ps(y + m * ldy + 32, c##m##2);
  NETY_STORE(0) NETY_STORE(1) NETY_STORE(2) NETY_STORE(3) NETY_STORE(4) NETY_STORE(5) NETY_STORE(6) NETY_STORE(7)
#undef NETY_STORE
}

// One row of x against ``cols`` (<= 48) columns of w: the tails (rows past the last block of
// 8, the last panel's columns), with masked loads and stores.
inline void RowTail(const float* x, const float* w, float* y, int64_t k_dim, int64_t n, int64_t cols,
                    bool accumulate) {
  __m512 c[3];
  __mmask16 mask[3];
  for (int64_t v = 0; v < 3; ++v) {
    const int64_t left = std::max<int64_t>(0, std::min<int64_t>(16, cols - 16 * v));
    mask[v] = static_cast<__mmask16>((1u << left) - 1);
    c[v] = accumulate ? _mm512_maskz_loadu_ps(mask[v], y + 16 * v) : _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < k_dim; ++k) {
    const __m512 a = _mm512_set1_ps(x[k]);
    for (int64_t v = 0; v < 3; ++v)
      c[v] = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(mask[v], w + k * n + 16 * v), c[v]);
  }
  for (int64_t v = 0; v < 3; ++v) _mm512_mask_storeu_ps(y + 16 * v, mask[v], c[v]);
}

// Columns [j, j + 48) of y, kDepth rows of w at a time.
void Panel(const float* x, const float* w, float* y, int64_t m_dim, int64_t k_dim, int64_t n, int64_t j,
           const float* next) {
  const int64_t cols = std::min(kPanel, n - j);
  for (int64_t k0 = 0; k0 < k_dim; k0 += kDepth) {
    const int64_t depth = std::min(kDepth, k_dim - k0);
    const float* wk = w + k0 * n + j;
    const float* nk = next == nullptr ? nullptr : next + k0 * n;
    int64_t m = 0;
    if (cols == kPanel) {
      for (; m + kBlockRows <= m_dim; m += kBlockRows)
        Block8x48(x + m * k_dim + k0, k_dim, wk, n, y + m * n + j, n, depth, nk, (m / kBlockRows) & 7,
                  k0 > 0);
    }
    for (; m < m_dim; ++m) RowTail(x + m * k_dim + k0, wk, y + m * n + j, depth, n, cols, k0 > 0);
  }
}

ffi::Error MatmulImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y,
                      ffi::ThreadPool pool) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || xd[1] != wd[0]) {
    return ffi::Error::InvalidArgument("nety_matmul: expects x (M, K) and w (K, N)");
  }
  const int64_t m = xd[0], k = xd[1], n = wd[1];
  const float* xp = x.typed_data();
  const float* wp = w.typed_data();
  float* yp = y->typed_data();
  // chunks of panels, every row, claimed by whichever thread is free: each weight is read by
  // one core, and a core that another process slows takes fewer chunks
  const int64_t panels = (n + kPanel - 1) / kPanel, chunks = (panels + kChunkPanels - 1) / kChunkPanels;
  ParallelFor(pool, chunks, [=](int64_t c) {
    for (int64_t p = c * kChunkPanels; p < std::min(panels, (c + 1) * kChunkPanels); ++p) {
      const int64_t j = p * kPanel;
      const float* next = n - j >= 2 * kPanel ? wp + j + kPanel : nullptr;
      Panel(xp, wp, yp, m, k, n, j, next);
    }
  });
  return ffi::Error::Success();
}

// The same product with w's full panels packed (P, K, 48): panel p is columns [48p, 48p + 48)
// of w with its K rows contiguous (kernels.pack_panels, once per generate call, outside the
// loop). A panel then streams from memory as one run of pages and from L2 in order, where the
// model's layout reads 192 bytes from each of K rows n * 4 bytes apart (a page each). Each
// output is the same chain of FMAs over k as MatmulImpl's (its 512-deep passes store and
// reload the running sums exactly): the results are bit-identical. Columns past the last full
// panel come from w itself.
void PackedPanel(const float* x, const float* wp, const float* next, float* y, int64_t m_dim, int64_t k_dim,
                 int64_t n) {
  int64_t m = 0;
  for (; m + kBlockRows <= m_dim; m += kBlockRows)
    Block8x48(x + m * k_dim, k_dim, wp, kPanel, y + m * n, n, k_dim, next, (m / kBlockRows) & 7, false);
  for (; m < m_dim; ++m) RowTail(x + m * k_dim, wp, y + m * n, k_dim, kPanel, kPanel, false);
}

ffi::Error PackedMatmulImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> packed, ffi::Buffer<ffi::F32> w,
                            ffi::ResultBuffer<ffi::F32> y, ffi::ThreadPool pool) {
  const auto xd = x.dimensions(), pd = packed.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || pd.size() != 3 || xd[1] != wd[0] || pd[1] != wd[0] ||
      pd[2] != kPanel || pd[0] != wd[1] / kPanel) {
    return ffi::Error::InvalidArgument(
        "nety_matmul_packed: expects x (M, K), packed (N // 48, K, 48) and w (K, N)");
  }
  const int64_t m = xd[0], k = xd[1], n = wd[1], panels = pd[0];
  const float* xp = x.typed_data();
  const float* pp = packed.typed_data();
  const float* wp = w.typed_data();
  float* yp = y->typed_data();
  const int64_t chunks = (panels + kChunkPanels - 1) / kChunkPanels;
  ParallelFor(pool, chunks + 1, [=](int64_t c) {
    if (c == chunks) {  // the columns past the last full panel
      for (int64_t r = 0; n > panels * kPanel && r < m; ++r)
        RowTail(xp + r * k, wp + panels * kPanel, yp + r * n + panels * kPanel, k, n, n - panels * kPanel, false);
      return;
    }
    for (int64_t p = c * kChunkPanels; p < std::min(panels, (c + 1) * kChunkPanels); ++p) {
      const float* panel = pp + p * k * kPanel;
      PackedPanel(xp, panel, p + 1 < panels ? panel + k * kPanel : nullptr, yp + p * kPanel, m, k, n);
    }
  });
  return ffi::Error::Success();
}
#else
ffi::Error PackedMatmulImpl(ffi::Buffer<ffi::F32>, ffi::Buffer<ffi::F32>, ffi::Buffer<ffi::F32>,
                            ffi::ResultBuffer<ffi::F32>, ffi::ThreadPool) {
  return ffi::Error::Internal("nety_matmul_packed: built without AVX-512 (nety_matmul_fast() is 0)");
}

ffi::Error MatmulImpl(ffi::Buffer<ffi::F32>, ffi::Buffer<ffi::F32>, ffi::ResultBuffer<ffi::F32>,
                      ffi::ThreadPool) {
  return ffi::Error::Internal("nety_matmul: built without AVX-512 (nety_matmul_fast() is 0)");
}
#endif

// -- float32 product for a few rows (a decode step at batch 1-4, a verification of a draft) --

// Adds x[0:m_rows, k:k+r] @ w[k:k+r, 0:n] to y[0:m_rows, 0:n] (x's rows k_dim apart, y's n
// apart), r <= kMatvecDepth weight rows per pass, each weight read once for every row.
constexpr int64_t kMatvecDepth = 8;
// rows nety_matvec / nety_matvec_t take: a batch-1 verification feeds its last token and a draft
// of up to 7 (XLA's GEMM, which takes 2+ rows otherwise, reads the weights at about half speed)
constexpr int64_t kMatvecMaxRows = 8;

template <int64_t m_rows>
void MatvecRows(const float* x, const float* w, float* y, int64_t k_dim, int64_t k, int64_t r, int64_t n) {
  const float* row[kMatvecDepth];
  float a[m_rows][kMatvecDepth] = {};
  for (int64_t i = 0; i < kMatvecDepth; ++i) {
    row[i] = w + (k + std::min(i, r - 1)) * n;  // past r: a repeated row times 0
    for (int64_t m = 0; m < m_rows; ++m) a[m][i] = i < r ? x[m * k_dim + k + i] : 0.f;
  }
  int64_t j = 0;
#if defined(__AVX512F__)
  __m512 av[m_rows][kMatvecDepth];
  for (int64_t m = 0; m < m_rows; ++m)
    for (int64_t i = 0; i < kMatvecDepth; ++i) av[m][i] = _mm512_set1_ps(a[m][i]);
  for (; j + 16 <= n; j += 16) {
    __m512 wv[kMatvecDepth];
    for (int64_t i = 0; i < kMatvecDepth; ++i) wv[i] = _mm512_loadu_ps(row[i] + j);
    for (int64_t m = 0; m < m_rows; ++m) {
      __m512 acc = _mm512_loadu_ps(y + m * n + j);
      for (int64_t i = 0; i < kMatvecDepth; ++i) acc = _mm512_fmadd_ps(wv[i], av[m][i], acc);
      _mm512_storeu_ps(y + m * n + j, acc);
    }
  }
#endif
  for (; j < n; ++j) {
    for (int64_t m = 0; m < m_rows; ++m) {
      float s = y[m * n + j];
      for (int64_t i = 0; i < kMatvecDepth; ++i) s += a[m][i] * row[i][j];
      y[m * n + j] = s;
    }
  }
}

// y[0:m_rows] = x[0:m_rows, k0:k1] @ w[k0:k1, :]: one contiguous stretch of w's rows, read
// front to back (a single stream per thread, what the hardware prefetcher follows best).
void MatvecChunk(const float* x, const float* w, float* y, int64_t m_rows, int64_t k_dim, int64_t n,
                 int64_t k0, int64_t k1) {
  std::fill(y, y + m_rows * n, 0.f);
  for (int64_t k = k0; k < k1; k += kMatvecDepth) {
    const int64_t r = std::min(kMatvecDepth, k1 - k);
    switch (m_rows) {  // the row count as a constant: the broadcasts stay in registers
      case 1: MatvecRows<1>(x, w, y, k_dim, k, r, n); break;
      case 2: MatvecRows<2>(x, w, y, k_dim, k, r, n); break;
      case 3: MatvecRows<3>(x, w, y, k_dim, k, r, n); break;
      case 4: MatvecRows<4>(x, w, y, k_dim, k, r, n); break;
      case 5: MatvecRows<5>(x, w, y, k_dim, k, r, n); break;
      case 6: MatvecRows<6>(x, w, y, k_dim, k, r, n); break;
      case 7: MatvecRows<7>(x, w, y, k_dim, k, r, n); break;
      default: MatvecRows<8>(x, w, y, k_dim, k, r, n); break;
    }
  }
}

// x (M <= 8, K) @ w (K, N): the weights' bytes bound it. XLA's CPU dot runs such a product
// on one thread (a matrix-vector product is not split), so one core's share of the memory
// bandwidth bounded a decode step at batch 1. Here the K rows of w split into contiguous
// chunks, one per block of work, each summed into its own partial y; the partials are added
// at the end, split by columns.
ffi::Error MatvecImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y,
                      ffi::ThreadPool pool) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || xd[1] != wd[0] || xd[0] > kMatvecMaxRows) {
    return ffi::Error::InvalidArgument("nety_matvec: expects x (M <= 8, K) and w (K, N)");
  }
  const int64_t m = xd[0], k = xd[1], n = wd[1], threads = Threads(pool);
  const float* xp = x.typed_data();
  const float* wp = w.typed_data();
  float* yp = y->typed_data();
  // two chunks per thread (a thread that loses its core leaves less behind), of whole passes
  const int64_t chunks = std::max<int64_t>(1, std::min(2 * threads, k / (4 * kMatvecDepth)));
  const int64_t per = (k + chunks - 1) / chunks;
  const int64_t step = (per + kMatvecDepth - 1) / kMatvecDepth * kMatvecDepth;
  std::vector<float> partial((chunks - 1) * m * n);
  ParallelFor(pool, chunks, [=, &partial](int64_t c) {
    float* out = c == 0 ? yp : partial.data() + (c - 1) * m * n;
    MatvecChunk(xp, wp, out, m, k, n, std::min(k, c * step), std::min(k, (c + 1) * step));
  });
  if (chunks == 1) return ffi::Error::Success();
  const int64_t total = m * n, span = std::max<int64_t>(4096, (total + threads - 1) / threads);
  ParallelFor(pool, (total + span - 1) / span, [=, &partial](int64_t b) {
    const int64_t i0 = b * span, i1 = std::min(total, i0 + span);
    for (int64_t c = 1; c < chunks; ++c) {
      const float* p = partial.data() + (c - 1) * total;
      for (int64_t i = i0; i < i1; ++i) yp[i] += p[i];
    }
  });
  return ffi::Error::Success();
}

// x (M <= 8, K) @ w.T with w (N, K): a tied output head (the embedding table) at batch 1-8.
// Each output is a dot of one contiguous row of w (read from memory once, from L1 for the
// other rows of x); blocks of w's rows go to the threads.
ffi::Error MatvecTImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y,
                       ffi::ThreadPool pool) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || xd[1] != wd[1] || xd[0] > kMatvecMaxRows) {
    return ffi::Error::InvalidArgument("nety_matvec_t: expects x (M <= 8, K) and w (N, K)");
  }
  const int64_t m = xd[0], k = xd[1], n = wd[0], threads = Threads(pool);
  const float* xp = x.typed_data();
  const float* wp = w.typed_data();
  float* yp = y->typed_data();
  const int64_t blocks = std::max<int64_t>(1, std::min(2 * threads, n * k / (1 << 14)));
  ParallelFor(pool, blocks, [=](int64_t b) {
    for (int64_t j = b * n / blocks; j < (b + 1) * n / blocks; ++j)
      for (int64_t r = 0; r < m; ++r) yp[r * n + j] = Dot(xp + r * k, wp + j * k, k);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(NetyInt8Matmul, Int8MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(NetyTopK, TopKImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(NetyDecodeAttention, DecodeAttentionImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(NetyMatmul, MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(NetyMatmulPacked, PackedMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(NetyMatvec, MatvecImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(NetyMatvecT, MatvecTImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ctx<ffi::ThreadPool>());

// Whether nety_matmul was built with its AVX-512 code (without it, XLA's product is used).
extern "C" int NetyMatmulFast() {
#if defined(__AVX512F__)
  return 1;
#else
  return 0;
#endif
}
