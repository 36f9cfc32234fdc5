// Primitives of analogize/ops.py formulas, with ONNX's definitions; host and CUDA device.
//
// exp, erf, tanh, atan and log are written here in plain float arithmetic (+, -, *, fma, /, sqrt, rounding and
// selects; no math-library calls, no branches) for two reasons: GCC vectorises loops over them, where a call
// to the C library's erff or tanhf kept every activation kernel scalar (6 to 100 times slower than a memory
// copy), and CPU and CUDA run the very same operations, so they give the same numbers. fminf and fmaxf are
// avoided too: GCC does not vectorise them without -ffinite-math-only. Each is within a few
// float32 ulps of the true function; tests bound the error against scipy.
#pragma once
#include <math.h>
#include <stdint.h>

// Always inlined: a call left in an element loop keeps it from vectorising.
#ifdef __CUDACC__
#define ANALOGIZE_HD __host__ __device__ __forceinline__
#else
#define ANALOGIZE_HD inline __attribute__((always_inline))
#endif

ANALOGIZE_HD float analogize_sign(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x); }

// Bits to float and back through a union: GCC and nvcc define it, and unlike memcpy through a local it keeps
// loops vectorisable.
union AnalogizeFloatBits {
    float value;
    uint32_t bits;
};
ANALOGIZE_HD float analogize_from_bits(uint32_t bits) {
    AnalogizeFloatBits pun;
    pun.bits = bits;
    return pun.value;
}
ANALOGIZE_HD uint32_t analogize_to_bits(float value) {
    AnalogizeFloatBits pun;
    pun.value = value;
    return pun.bits;
}

// c0 + x (c1 + x (c2 + ...)), one fused multiply-add per coefficient: each step rounds once, and it is exact
// IEEE on both sides (vfmadd on CPUs, fma on GPUs), so CPU and CUDA agree bit for bit. The library's
// -ffp-contract=off stops only the compiler's own fusing, which would make the formulas' arithmetic round
// unlike ONNX Runtime's separate Mul and Add.
ANALOGIZE_HD float analogize_horner(float, float c0) { return c0; }
template <typename... Rest>
ANALOGIZE_HD float analogize_horner(float x, float c0, float c1, Rest... rest) {
    return fmaf(analogize_horner(x, c1, rest...), x, c0);
}

// 2^n for an integer-valued n in [-126, 127] (0 for n = -127): the float with that exponent field.
ANALOGIZE_HD float analogize_pow2(float n) {
    return analogize_from_bits(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
}

// e^x = 2^n e^r with n = round(x / ln 2) and |r| <= ln 2 / 2 (ln 2 split in two for an exact reduction); e^r
// by its Taylor series to r^7 (truncation below 6e-9 relative). 2^128 is no float, so n = 128 (x above
// 88.38) scales by 2^127 and doubles p; n = -127 (x below -87.68) makes the float 0, the nearest to e^x
// without denormal arithmetic. NaN passes through r and p.
ANALOGIZE_HD float analogize_exp(float x) {
    const float clamped = x < -88.0296919f ? -88.0296919f : (x > 88.7228394f ? 88.7228394f : x);
    const float n = floorf(fmaf(clamped, 1.44269504f, 0.5f));
    const float r = fmaf(n, 2.12194440e-4f, fmaf(n, -0.693359375f, clamped));
    const float p = analogize_horner(r, 1.0f, 1.0f, 0.5f, 1.0f / 6, 1.0f / 24, 1.0f / 120, 1.0f / 720, 1.0f / 5040);
    const bool top = n > 127.0f;
    const float value = (top ? p + p : p) * analogize_pow2(top ? 127.0f : n);
    return x > 88.7228394f ? INFINITY : value;
}

// Natural log of a positive normal x (the caller gives 1 + y, y in [0, 1]): x = m 2^e with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(t), t = (m - 1) / (m + 1),
// |t| < 0.172, by its series to t^11 (truncation below 2e-11).
ANALOGIZE_HD float analogize_log(float x) {
    const uint32_t bits = analogize_to_bits(x);
    float exponent = static_cast<float>(static_cast<int32_t>((bits >> 23) & 0xFF) - 127);
    float mantissa = analogize_from_bits((bits & 0x007FFFFFu) | 0x3F800000u);
    const bool high = mantissa > 1.41421356f;
    mantissa = high ? mantissa * 0.5f : mantissa;
    exponent = high ? exponent + 1.0f : exponent;
    const float t = (mantissa - 1.0f) / (mantissa + 1.0f);
    const float series = t * analogize_horner(t * t, 2.0f, 2.0f / 3, 2.0f / 5, 2.0f / 7, 2.0f / 9, 2.0f / 11);
    return fmaf(exponent, 0.693147181f, series);
}

// log(1 + y) for y >= 0; below 1e-4, y (1 - y / 2), since 1 + y would round y away.
ANALOGIZE_HD float analogize_log1p(float y) { return y < 1e-4f ? y * (1.0f - 0.5f * y) : analogize_log(1.0f + y); }

// erf(x) = x P(x^2) / Q(x^2) for |x| < 3.92, +-1 beyond (erf(3.92) rounds to 1 in float32). P (degree 6) and Q
// (degree 4, Q(0) = 1) are a rational fit in float64 of erf(x) / x on 20000 Chebyshev nodes of [0, 3.92],
// least squares reweighted toward the largest relative error (error below 8e-8 before float32 rounding, 4e-7
// after).
// One division and one branch: the series-plus-exp form it replaces cost about three times as many operations.
ANALOGIZE_HD float analogize_erf(float x) {
    const float s = x * x;
    const float p = analogize_horner(s, 1.12837911f, 0.199969739f, 0.0505795181f, 0.00370339118f,
                                     0.000141880577f, -1.9576828e-06f, 1.99186658e-08f);
    const float q = analogize_horner(s, 1.0f, 0.510550201f, 0.115017243f, 0.0143570593f, 0.00095642556f);
    const float value = x * p / q;
    const float bounded = value > 1.0f ? 1.0f : (value < -1.0f ? -1.0f : value);  // rounding overshoots 1 by 6 ulp
    return fabsf(x) >= 3.92f ? (x < 0.0f ? -1.0f : 1.0f) : bounded;  // NaN passes through p and q
}

// tanh: for |x| < 0.3, its Taylor series to x^11 (truncation below 1e-9 relative); beyond,
// 1 - 2 / (e^(2|x|) + 1), with the sign of x.
ANALOGIZE_HD float analogize_tanh(float x) {
    const float a = fabsf(x);
    const float series = x * analogize_horner(x * x, 1.0f, -1.0f / 3, 2.0f / 15, -17.0f / 315, 62.0f / 2835,
                                              -1382.0f / 155925);
    const float magnitude = 1.0f - 2.0f / (analogize_exp(2.0f * (a > 20.0f ? 20.0f : a)) + 1.0f);
    return a < 0.3f ? series : (x < 0.0f ? -magnitude : magnitude);
}

// atan: above 1 through pi/2 - atan(1 / |x|) (one division), then w P(w^2) on [0, 1], P of degree 8 a fit in
// float64 of atan(w) / w on 20000 Chebyshev nodes, least squares reweighted toward the largest relative error
// (error below 2e-8 before float32 rounding). Taylor's series would need 3 range reductions (and 3 divisions,
// since GCC splits a division of selects into one per case) for the same accuracy. NaN passes through.
ANALOGIZE_HD float analogize_atan(float x) {
    const float a = fabsf(x);
    const bool inverted = a > 1.0f;
    const float w = inverted ? 1.0f / a : a;
    const float series = w * analogize_horner(w * w, 1.0f, -0.33333075f, 0.199926242f, -0.142036766f, 0.106410399f,
                                              -0.0750449374f, 0.0426936522f, -0.0160698425f, 0.00285017421f);
    const float magnitude = inverted ? 1.57079633f - series : series;
    return analogize_from_bits(analogize_to_bits(magnitude) | (analogize_to_bits(x) & 0x80000000u));  // x's sign
}

ANALOGIZE_HD float analogize_sigmoid(float x) { return 1.0f / (1.0f + analogize_exp(-x)); }
ANALOGIZE_HD float analogize_softplus(float x) {
    const float value = (x > 0.0f ? x : 0.0f) + analogize_log1p(analogize_exp(-fabsf(x)));
    return x != x ? x : value;
}
