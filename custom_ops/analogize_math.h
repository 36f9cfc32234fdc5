// Primitives of analogize/ops.py formulas, with ONNX's definitions; host and CUDA device.
//
// exp, erf and atan are written here in plain float arithmetic (+, -, *, fma, /, sqrt, rounding and
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

// e^x = 2^n e^r with n = round(x / ln 2) and |r| <= ln 2 / 2 (ln 2 split in two for an exact reduction). Adding
// 1.5 * 2^23 in the multiply-add rounds x / ln 2 to the integer n (the sum's one rounding), and the sum's low bits,
// shifted, are 2^n's exponent field. e^r is a polynomial of degree 6 fitted in float64 on [-ln 2 / 2, ln 2 / 2]
// (error 4e-9; Taylor's series needs degree 7). 2^128 is no float, so 2p is scaled by 2^(n-1): one rounding, and
// inf exactly when e^x overflows (x is held below 89, so n <= 128). The price: n = -126 (x below -86.99, e^x
// below 1.8e-38, 1.5 times the least normal float) leaves a zero exponent field, so 0, as for all x further down.
// NaN passes through r and p.
ANALOGIZE_HD float analogize_exp(float x) {
    const float held = x < -87.5f ? -87.5f : (x > 89.0f ? 89.0f : x);
    const float shifted = fmaf(held, 1.44269504f, 12582912.0f);
    const float n = shifted - 12582912.0f;
    const float r = fmaf(n, 2.12194440e-4f, fmaf(n, -0.693359375f, held));
    const float p = analogize_horner(r, 1.0f, 1.0f, 0.49999994f, 0.166665211f, 0.041668389f, 0.00836871006f,
                                     0.00138146116f);
    const float half_scale = analogize_from_bits((analogize_to_bits(shifted) << 23) + (126u << 23));
    return (p + p) * half_scale;
}

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

// atan(x) for |x| <= 1 (the formulas promise it): x P(x^2), P of degree 8 a fit in float64 of atan(w) / w on
// 20000 Chebyshev nodes of [0, 1], least squares reweighted toward the largest relative error (error below 2e-8
// before float32 rounding). Beyond 1 it would need the reduction pi/2 - atan(1 / |x|), whose division costs as
// much as the rest. Odd by construction: the sign (and -0) follow x, and NaN passes through.
ANALOGIZE_HD float analogize_atan_within_one(float x) {
    return x * analogize_horner(x * x, 1.0f, -0.33333075f, 0.199926242f, -0.142036766f, 0.106410399f,
                                -0.0750449374f, 0.0426936522f, -0.0160698425f, 0.00285017421f);
}

ANALOGIZE_HD float analogize_sigmoid(float x) { return 1.0f / (1.0f + analogize_exp(-x)); }
