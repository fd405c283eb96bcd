// Our CPU kernel for int8 decoding, called from XLA through jax.ffi (nety_jax/kernels).
//
// nety_int8_matmul: y = (x @ w) * scale with an int8 weight matrix, the matrix-vector
// products of int8 decoding (issue #12). XLA's CPU backend has no kernel that reads int8
// weights: it widens them to float32 first (or hoists the widening out of the decode
// loop), so the loop streams four bytes per weight either way. This one streams the int8
// rows once, widens 16 weights per instruction in registers and accumulates in float32;
// it is meant for a few rows (a decode step's batch), where the bytes of the weights bound
// the product. x (M, K) float32, w (K, N) int8 row-major, scale (N,) float32, y (M, N).
//
// Work splits into blocks shared by the calling thread and our own helper threads (one
// fewer than the cores). A call is only ~0.1 ms of work, so helpers spin briefly between
// calls before sleeping: waking a sleeping thread (XLA's intra-op pool, tried first) takes
// about as long as the call itself and left the caller doing most blocks. A helper that
// arrives after all blocks are claimed does nothing, and the caller only waits for blocks
// already claimed by running threads, so a late helper never blocks it.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

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

class Helpers {
 public:
  static Helpers& Get() {
    static Helpers* helpers = new Helpers();  // never destroyed: the threads live as long as the process
    return *helpers;
  }
  int64_t count() const { return count_; }

  void Offer(std::shared_ptr<Job> job) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = std::move(job);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
  }

 private:
  Helpers() : count_(std::max<int64_t>(1, std::thread::hardware_concurrency()) - 1) {
    for (int64_t i = 0; i < count_; ++i) std::thread([this] { Loop(); }).detach();
  }

  void Loop() {
    uint64_t seen = 0;
    for (;;) {
      const auto start = std::chrono::steady_clock::now();
      while (generation_.load(std::memory_order_acquire) == seen) {
        if (std::chrono::steady_clock::now() - start > std::chrono::microseconds(300)) {
          std::unique_lock<std::mutex> lock(mu_);
          wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
          break;
        }
        std::this_thread::yield();
      }
      std::shared_ptr<Job> job;
      {
        std::lock_guard<std::mutex> lock(mu_);
        job = job_;
        seen = generation_.load(std::memory_order_acquire);
      }
      if (job) job->Work();
    }
  }

  const int64_t count_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::shared_ptr<Job> job_;
};

// Runs fn(0) .. fn(blocks - 1) on the calling thread and the helpers.
void ParallelFor(int64_t blocks, std::function<void(int64_t)> fn) {
  auto job = std::make_shared<Job>();
  job->run = std::move(fn);
  job->blocks = blocks;
  Helpers& helpers = Helpers::Get();
  if (blocks > 1 && helpers.count() > 0) helpers.Offer(job);
  job->Work();
  while (job->done.load(std::memory_order_acquire) < blocks) std::this_thread::yield();
}

int64_t Threads() { return Helpers::Get().count() + 1; }

ffi::Error Int8MatmulImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> w, ffi::Buffer<ffi::F32> scale,
                          ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || xd[1] != wd[0] || scale.element_count() != wd[1]) {
    return ffi::Error::InvalidArgument("nety_int8_matmul: expects x (M, K), w (K, N), scale (N,)");
  }
  const float* xp = x.typed_data();
  const int8_t* wp = w.typed_data();
  const float* sp = scale.typed_data();
  float* yp = y->typed_data();
  const int64_t m = xd[0], k = xd[1], n = wd[1], threads = Threads();
  // blocks of whole cache lines, about two per thread (eight per thread measured slower)
  const int64_t per = (n + 2 * threads - 1) / (2 * threads);
  const int64_t block = std::max<int64_t>(64, (per + 63) / 64 * 64);
  ParallelFor((n + block - 1) / block, [=](int64_t b) {
    Block(xp, wp, sp, yp, m, k, n, b * block, std::min(n, (b + 1) * block));
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(NetyInt8Matmul, Int8MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

