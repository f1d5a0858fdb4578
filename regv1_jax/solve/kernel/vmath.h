
// exp and log without calls (Cephes/fdlibm reductions and polynomials, within 2 ulp of
// numpy, checked in tests/test_kernel.py): inlined into the lane loops, so every lane stays
// in registers (a libmvec call spills them all: with calls, exp and log were half of an
// evaluation and the lane groups could not overlap).  Special values are tested on the bits
// (-ffast-math lets the compiler assume finite values in comparisons): NaN propagates (the
// status relies on it); exp gives 0 below the smallest normal result and inf above the
// largest; log gives -inf at +-0, NaN below 0, inf at inf, and handles subnormal inputs.
static inline __attribute__((always_inline)) T vexp(T x) {
  typedef typename std::make_signed<U>::type I;
  constexpr bool f32 = sizeof(T) == 4;
  // Below lo the result rounds to 0; 2^n is applied in two halves so that results near
  // overflow and subnormal results are right.
  constexpr T lo = f32 ? T(-103.97208) : T(-745.1332191019412);
  constexpr I nmax = f32 ? 127 : 1023;
  constexpr I nlo = f32 ? -150 : -1075;
  T fn = std::rint(x * T(1.4426950408889634));
  fn = fn > T(nmax + 1) ? T(nmax + 1) : (fn < T(nlo) ? T(nlo) : fn);
  const I n = I(fn), n1 = n >> 1;
  T r, p;
  if constexpr (f32) {  // Cephes expf: |r| <= ln2/2, degree 7
    r = std::fma(fn, T(-0.693359375), x);
    r = std::fma(fn, T(2.12194440e-4), r);
    p = T(1.9875691500E-4);
    p = std::fma(p, r, T(1.3981999507E-3));
    p = std::fma(p, r, T(8.3334519073E-3));
    p = std::fma(p, r, T(4.1665795894E-2));
    p = std::fma(p, r, T(1.6666665459E-1));
    p = std::fma(p, r, T(5.0000001201E-1));
    p = std::fma(p * r, r, r) + T(1);
  } else {  // |r| <= ln2/2, Taylor to degree 13 (truncation < 5e-18)
    r = std::fma(fn, T(-6.93147180369123816490e-01), x);
    r = std::fma(fn, T(-1.90821492927058770002e-10), r);
    p = T(1.0 / 6227020800.0);
    p = std::fma(p, r, T(1.0 / 479001600.0));
    p = std::fma(p, r, T(1.0 / 39916800.0));
    p = std::fma(p, r, T(1.0 / 3628800.0));
    p = std::fma(p, r, T(1.0 / 362880.0));
    p = std::fma(p, r, T(1.0 / 40320.0));
    p = std::fma(p, r, T(1.0 / 5040.0));
    p = std::fma(p, r, T(1.0 / 720.0));
    p = std::fma(p, r, T(1.0 / 120.0));
    p = std::fma(p, r, T(1.0 / 24.0));
    p = std::fma(p, r, T(1.0 / 6.0));
    p = std::fma(p, r, T(0.5));
    p = std::fma(p * r, r, r) + T(1);
  }
  const T s1 = __builtin_bit_cast(T, U(n1 + nmax) << (f32 ? 23 : 52));
  const T s2 = __builtin_bit_cast(T, U(n - n1 + nmax) << (f32 ? 23 : 52));
  const T res = x < lo ? T(0) : (p * s1) * s2;
  constexpr U absm = ~U(0) >> 1, inf = f32 ? U(0x7f800000u) : U(0x7ff0000000000000ull);
  return (__builtin_bit_cast(U, x) & absm) > inf ? x : res;
}

// NORMAL: x is known to be NaN, +inf or at least the smallest normal number (the generator
// proves it where the argument is max(y, c) with such a literal c): no subnormal, zero or
// negative cases to handle.
template <bool NORMAL = false>
static inline __attribute__((always_inline)) T vlog(T x) {
  typedef typename std::make_signed<U>::type I;
  constexpr bool f32 = sizeof(T) == 4;
  constexpr int mb = f32 ? 23 : 52;
  constexpr U absm = ~U(0) >> 1, inf = f32 ? U(0x7f800000u) : U(0x7ff0000000000000ull);
  constexpr U tiny = U(1) << mb;  // the smallest normal
  constexpr U hsqrt2 = f32 ? U(0x3f3504f3u) : U(0x3fe6a09e667f3bcdull);  // sqrt(1/2)
  const U u0 = __builtin_bit_cast(U, x), a = u0 & absm;
  const bool sub = !NORMAL && a < tiny;  // subnormal (or zero): scale by 2^mb first
  const U u = __builtin_bit_cast(U, sub ? x * T(f32 ? 8388608.0 : 4503599627370496.0) : x);
  // x = 2^e m with m in [sqrt(1/2), sqrt(2)): offset the bits so the exponent rounds there.
  const U off = u - hsqrt2;
  const T e = T(I(off) >> mb) - (sub ? T(mb) : T(0));
  const T f = __builtin_bit_cast(T, (off & (tiny - 1)) + hsqrt2) - T(1);
  const T s = f / (T(2) + f);
  const T z = s * s;
  // fdlibm: log(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2)), s = f / (2 + f)
  const T w = z * z;
  T t1, t2;
  if constexpr (f32) {
    t1 = w * std::fma(w, T(2.4279078841e-01), T(4.0000972152e-01));
    t2 = z * std::fma(w, T(2.8498786688e-01), T(6.6666662693e-01));
  } else {
    t1 = w * std::fma(w, std::fma(w, T(1.531383769920937332e-01),
                                  T(2.222219843214978396e-01)),
                      T(3.999999999940941908e-01));
    t2 = z * std::fma(w, std::fma(w, std::fma(w, T(1.479819860511658591e-01),
                                              T(1.818357216161805012e-01)),
                                  T(2.857142874366239149e-01)),
                      T(6.666666666666735130e-01));
  }
  const T R = t1 + t2, hfsq = T(0.5) * f * f;
  constexpr T ln2_hi = f32 ? T(6.9313812256e-01) : T(6.93147180369123816490e-01);
  constexpr T ln2_lo = f32 ? T(9.0580006145e-06) : T(1.90821492927058770002e-10);
  T res = std::fma(e, ln2_hi, f - (hfsq - std::fma(s, hfsq + R, e * ln2_lo)));
  res = a >= inf ? x : res;  // inf -> inf, NaN -> NaN
  if constexpr (NORMAL) return res;
  res = (u0 != a) ? T(__builtin_nan("")) : res;  // negative -> NaN
  return a == 0 ? T(-__builtin_inf()) : res;
}

// x^(-1/8) for x NaN, +inf or at least the smallest normal number (the generator proves it,
// as for vlog<true>: the model's smooth runoff cap takes (1 + raw^8)^(-1/8)).  As written,
// sqrt(sqrt(1 / sqrt(x))) is three square roots and a division in one dependency chain, all
// on the divider (~10% of a float64 evaluation); here: a seed from the bits, bits(y) =
// K - bits(x) / 8 (within 3%), then third-order steps y += y e (1/8 + 9/128 e),
// e = 1 - x y^8 (two for float, three for double; within 1.5 ulp, checked in
// tests/test_kernel.py).  x y^8 is taken as (x y^4) y^4: no overflow for any normal x.
static inline __attribute__((always_inline)) T vinv8rt(T x) {
  constexpr bool f32 = sizeof(T) == 4;
  constexpr U inf = f32 ? U(0x7f800000u) : U(0x7ff0000000000000ull);
  const U b = __builtin_bit_cast(U, x);
  T y = __builtin_bit_cast(T, U((f32 ? U(0x47692000u) : U(0x47ED200000000000ull)) - (b >> 3)));
  // written out, not a loop: nothing in a lane loop's body that could keep it scalar
  const auto step = [x](T y) {
    const T y2 = y * y, y4 = y2 * y2;
    const T e = T(1) - (x * y4) * y4;
    return y + (y * e) * (T(0.125) + e * T(9.0 / 128));
  };
  y = step(step(y));
  if constexpr (!f32) y = step(y);
  // inf -> 0 by a bit mask (NaN stays NaN through e): a select on this integer compare is
  // not if-converted in every lane loop that inlines it, and GCC 12 then leaves the loop
  // scalar (the one-register tail blocks: B = 1 took 3x as long)
  return __builtin_bit_cast(T, __builtin_bit_cast(U, y) & (U(0) - U(b != inf)));
}
