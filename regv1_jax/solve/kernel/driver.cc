
#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <type_traits>
#include "xla/ffi/api/ffi.h"
namespace ffi = xla::ffi;

typedef @CTYPE@ T;
typedef @UTYPE@ U;  // T's bits
constexpr int WB = @W@;   // members per block
constexpr int WS = @WS@;  // members per block of the tail (one SIMD register)
constexpr int GROUPS = @GROUPS@;  // interleaved lane groups of a full block (WB = GROUPS WS)
constexpr int D = @D@;
constexpr int NP = @NP@;
constexpr int ND = @ND@;
constexpr int N0 = @N0@;
constexpr int N1 = @N1@;
constexpr int NO = @NO@;  // annual outputs (OBSERVED)
constexpr int NR = @NR@;  // result arrays (FIELDS): output k goes to column COL[k] of FIELD[k]
constexpr int FIELD[NO] = {@FIELD@};
constexpr int COL[NO] = {@COL@};
constexpr int WIDTH[NR] = {@WIDTH@};
constexpr int64_t MIN_BLOCKS = 8;

@VMATH@
// Parameter-only terms (once per block of members).
template <int W>
static inline void pre0(const T* __restrict P, T* __restrict H0) {
  #pragma omp simd
  for (int i = 0; i < W; ++i) {
      @PRE0@
  }
}

// Terms of the parameters and the year's drivers (once per year).
template <int W>
static inline void pre1(const T* __restrict P, const T* __restrict H0, const T* __restrict DR,
                        T* __restrict H1) {
  #pragma omp simd
  for (int i = 0; i < W; ++i) {
      @PRE1@
  }
}

// One right-hand-side evaluation of the block: one pass, state in L1.  A block of two
// registers (WB) runs them interleaved, two dependency chains in flight: +10% measured.
template <int W, int S>
static inline void rhs(const T* __restrict P, const T* __restrict H0, const T* __restrict DR,
                       const T* __restrict H1, const T* __restrict X, T* __restrict Y,
                       T* __restrict Z, T* __restrict A, const T half_h, const T full_h,
                       const T sixth_h) {
  const T two = T(2);
  if constexpr (W == GROUPS * WS) {
    #pragma omp simd
    for (int i = 0; i < W / GROUPS; ++i) {
      @RHSG@
    }
  } else {
    #pragma omp simd
    for (int i = 0; i < W; ++i) {
      @RHS@
    }
  }
}

// Lanes [0, n) of a W-wide block from row ``src``; lanes n..W-1 repeat lane 0 (a partial
// block computes copies of its first member and writes none of them).
template <int W>
static inline void load(T* __restrict dst, const T* __restrict src, int64_t n) {
  std::memcpy(dst, src, n * sizeof(T));
  for (int64_t i = n; i < W; ++i) dst[i] = src[0];
}

// The observation step of a year (generated from observe_year): the outputs from the
// states at the start (S0), middle (S1) and end (Y) of the year.
template <int W>
static inline void observe(const T* __restrict P, const T* __restrict S0,
                           const T* __restrict S1, const T* __restrict Y, T* __restrict OB) {
  #pragma omp simd
  for (int i = 0; i < W; ++i) {
      @OBS@
  }
}

// The initial state (generated from initial_terms) from the parameters and the first
// year's forcing.
template <int W>
static inline void init(const T* __restrict P, const T* __restrict DR, T* __restrict Y) {
  @INIT@
}

// Sets ``bad`` on lanes whose state is not finite (tested on the bits: -ffast-math lets
// the compiler assume finite values).
template <int W>
static inline void check(const T* __restrict Y, U* __restrict bad) {
  constexpr U absm = ~U(0) >> 1;
  const U inf = U(absm ^ (absm >> (sizeof(T) == 4 ? 8 : 11)));  // exponent bits all set
  for (int c = 0; c < D; ++c) {
    #pragma omp simd
    for (int i = 0; i < W; ++i) {
      U u;
      std::memcpy(&u, Y + c * W + i, sizeof(T));
      bad[i] |= U((u & absm) >= inf);
    }
  }
}

// RK4 over every year for members [o, o + n) (n <= W) of the problem.
// The drivers of year yr for members [o, o + n): FV (NY, ND) shared by every member
// (per == false), or (NY, ND, B), one series per member (per == true).
template <int W>
static inline void year_drivers(const T* __restrict FV, T* __restrict DR, int64_t yr,
                                int64_t B, bool per, int64_t o, int64_t n) {
  for (int j = 0; j < ND; ++j) {
    if (per) {
      load<W>(DR + j * W, FV + (yr * ND + j) * B + o, n);
    } else {
      for (int i = 0; i < W; ++i) DR[j * W + i] = FV[yr * ND + j];
    }
  }
}

template <int W>
static void block(const T* __restrict PR, const T* __restrict FV, T* const* R,
                  int32_t* __restrict OK, int64_t B, int64_t NY, int64_t steps, int64_t o,
                  int64_t n, bool per) {
  const double h = 1.0 / double(steps);
  const T half_h = T(0.5 * h), full_h = T(h), sixth_h = T(h / 6.0);
  const int64_t half = steps / 2;
  alignas(64) T P[NP * W], DR[ND * W], H0[N0 * W], H1[N1 * W], Y[D * W], A[D * W];
  alignas(64) T Z2[D * W], Z3[D * W], S0[D * W], S1[D * W], OB[NO * W];
  alignas(64) U bad[W] = {};
  for (int j = 0; j < NP; ++j) load<W>(P + j * W, PR + j * B + o, n);
  pre0<W>(P, H0);
  year_drivers<W>(FV, DR, 0, B, per, o, n);
  init<W>(P, DR, Y);
  check<W>(Y, bad);
  for (int64_t yr = 0; yr < NY; ++yr) {
    std::memcpy(S0, Y, sizeof(S0));
    year_drivers<W>(FV, DR, yr, B, per, o, n);
    pre1<W>(P, H0, DR, H1);
    for (int hf = 0; hf < 2; ++hf) {
      for (int64_t s = 0; s < half; ++s) {
        // Each evaluation reads its stage input X and writes the next one (Z2, Z3, Z4
        // alternate so that no stage reads what it writes), the weighted sum A, and at the
        // last stage the state Y.
        rhs<W, 1>(P, H0, DR, H1, Y, Y, Z2, A, half_h, full_h, sixth_h);
        rhs<W, 2>(P, H0, DR, H1, Z2, Y, Z3, A, half_h, full_h, sixth_h);
        rhs<W, 3>(P, H0, DR, H1, Z3, Y, Z2, A, half_h, full_h, sixth_h);
        rhs<W, 4>(P, H0, DR, H1, Z2, Y, Z3, A, half_h, full_h, sixth_h);
      }
      check<W>(Y, bad);
      if (hf == 0) std::memcpy(S1, Y, sizeof(S1));
    }
    observe<W>(P, S0, S1, Y, OB);
    // Straight into the result arrays' layout (member, year[, column]): no XLA pass over
    // the outputs follows.
    for (int k = 0; k < NO; ++k) {
      const int64_t stride = NY * WIDTH[FIELD[k]];
      T* __restrict dst = R[FIELD[k]] + (o * NY + yr) * WIDTH[FIELD[k]] + COL[k];
      for (int64_t i = 0; i < n; ++i) dst[i * stride] = OB[k * W + i];
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    OK[o + i] = bad[i] == 0;
    if (bad[i])  // a member whose state became NaN/inf: every output NaN
      for (int r = 0; r < NR; ++r)
        std::fill_n(R[r] + (o + i) * NY * WIDTH[r], NY * WIDTH[r], T(__builtin_nan("")));
  }
}

// The RK4 solves: PR (NP, B) (the parameter leaves), FV (NY, ND) (the forcing every
// member shares; per: (NY, ND, B), a forcing per member) -> the result arrays R[NR] (each (B, NY, WIDTH[r]): the FIELDS, NaN for
// a member whose state did not stay finite) and OK (B,) (1 where the member's state stayed
// finite at every half year).  Members [nvalid, B) (the padding of a bucket) are not
// solved: their outputs are zero and OK is 1.  Full blocks of WB members
// spread over the threads, then the rest in blocks of WS (one register: B = 1 costs one
// lane group, not WB).  A plain C entry point; the FFI handler below wraps it.
extern "C" void regv1_rk4_run(const T* __restrict PR, const T* __restrict FV, T* const* R,
                              int32_t* __restrict OK, int64_t B, int64_t nvalid, int64_t NY,
                              int64_t steps, int64_t threads, int per) {
  const int64_t nv = std::max<int64_t>(0, std::min(nvalid, B));
  const int64_t nfull = nv / WB, tail0 = nfull * WB;
  const int64_t ntasks = nfull + (nv - tail0 + WS - 1) / WS;
  // A thread gets at least MIN_BLOCKS blocks: on a busy machine waking a second thread for
  // a few hundred microseconds of work costs more than it saves.
  const int nt = int(std::max<int64_t>(1, std::min<int64_t>(threads, ntasks / MIN_BLOCKS)));
  // Blocks handed out four at a time: when another process slows one core, the others take
  // over its share (float64, 32k members, 2 threads on a busy machine: median +5% over a
  // static split; equal on a quiet one).
  #pragma omp parallel for schedule(dynamic, 4) num_threads(nt) if(nt > 1)
  for (int64_t b = 0; b < ntasks; ++b) {
    if (b < nfull) {
      block<WB>(PR, FV, R, OK, B, NY, steps, b * WB, WB, per != 0);
    } else {
      const int64_t o = tail0 + (b - nfull) * WS;
      block<WS>(PR, FV, R, OK, B, NY, steps, o, std::min<int64_t>(WS, nv - o), per != 0);
    }
  }
  if (nv < B) {
    for (int r = 0; r < NR; ++r)
      std::memset(R[r] + nv * NY * WIDTH[r], 0, (B - nv) * NY * WIDTH[r] * sizeof(T));
    for (int64_t i = nv; i < B; ++i) OK[i] = 1;
  }
}

// exp (op 0), log (op 1), log of normal numbers (op 2) or x^(-1/8) of normal numbers (op 3)
// of x[0..n) into y: the kernel's own functions, for the tests.
extern "C" void regv1_vmath(int op, const T* __restrict x, T* __restrict y, int64_t n) {
  if (op == 0) {
    #pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = vexp(x[i]);
  } else if (op == 1) {
    #pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = vlog(x[i]);
  } else if (op == 2) {
    #pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = vlog<true>(x[i]);
  } else {
    #pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = vinv8rt(x[i]);
  }
}

static ffi::Error Rk4(ffi::Buffer<ffi::@FFI@> prm, ffi::Buffer<ffi::@FFI@> drv,
                      ffi::Buffer<ffi::S32> nvalid, ffi::RemainingRets res, int64_t steps,
                      int64_t threads) {
  const auto bad = ffi::Error::InvalidArgument("regv1 rk4 kernel: bad shapes or steps");
  const auto dd = drv.dimensions();
  if (prm.dimensions().size() != 2 || prm.dimensions()[0] != NP
      || (dd.size() != 2 && dd.size() != 3) || dd[1] != ND || dd[0] < 1
      || nvalid.element_count() != 1 || steps < 2 || steps % 2 || res.size() != NR + 1)
    return bad;
  const int64_t B = prm.dimensions()[1];
  const bool per = dd.size() == 3;  // a forcing per member: (NY, ND, B)
  if (per && dd[2] != B) return bad;
  const int64_t NY = drv.dimensions()[0];
  auto ok = res.get<ffi::Buffer<ffi::S32>>(NR);
  if (ok.has_error()) return ok.error();
  if ((*ok)->element_count() != B) return bad;
  T* R[NR];
  for (int r = 0; r < NR; ++r) {
    auto b = res.get<ffi::Buffer<ffi::@FFI@>>(r);
    if (b.has_error()) return b.error();
    if ((*b)->element_count() != B * NY * WIDTH[r]) return bad;
    R[r] = (*b)->typed_data();
  }
  regv1_rk4_run(prm.typed_data(), drv.typed_data(), R, (*ok)->typed_data(), B,
                nvalid.typed_data()[0], NY, steps, threads, per ? 1 : 0);
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    regv1_rk4, Rk4,
    ffi::Ffi::Bind()
        .Arg<ffi::Buffer<ffi::@FFI@>>()
        .Arg<ffi::Buffer<ffi::@FFI@>>()
        .Arg<ffi::Buffer<ffi::S32>>()
        .RemainingRets()
        .Attr<int64_t>("steps")
        .Attr<int64_t>("threads"));
