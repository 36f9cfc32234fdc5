// Primitives of analogize/ops.py formulas, with ONNX's definitions; host and CUDA device.
//
// exp, erf, tanh, atan and log are written here in plain float arithmetic (+, -, *, /, sqrt, rounding and
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

// 2^n for an integer-valued n in [-126, 127]: the float with that exponent field.
ANALOGIZE_HD float analogize_pow2(float n) {
    return analogize_from_bits(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
}

// e^x = 2^n e^r with n = round(x / ln 2) and |r| <= ln 2 / 2 (ln 2 split in two for an exact reduction); e^r
// by its Taylor series to r^7 (truncation below 6e-9 relative). Results below the smallest normal float
// (x < -87.33) are 0.
ANALOGIZE_HD float analogize_exp(float x) {
    const float clamped = x < -87.33f ? -87.33f : (x > 88.7f ? 88.7f : x);
    const float n = floorf(clamped * 1.44269504f + 0.5f);
    const float r = (clamped - n * 0.693359375f) - n * -2.12194440e-4f;
    const float p =
        1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
    const float value = x < -87.33f ? 0.0f : p * analogize_pow2(n);
    return x != x ? x : (x > 88.7228394f ? INFINITY : value);
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
    const float t = (mantissa - 1.0f) / (mantissa + 1.0f), t2 = t * t;
    const float series =
        t * (2.0f + t2 * (2.0f / 3 + t2 * (2.0f / 5 + t2 * (2.0f / 7 + t2 * (2.0f / 9 + t2 * (2.0f / 11))))));
    return exponent * 0.693147181f + series;
}

// log(1 + y) for y >= 0; below 1e-4, y (1 - y / 2), since 1 + y would round y away.
ANALOGIZE_HD float analogize_log1p(float y) { return y < 1e-4f ? y * (1.0f - 0.5f * y) : analogize_log(1.0f + y); }

// erf: for |x| < 1, x times the Taylor series of erf(x) / x in x^2 to x^18 (truncation below 2e-8); for
// 1 <= |x| < 3.92, 1 - exp(-x^2) g(|x|), where g(x) = erfc(x) exp(x^2) is a least-squares polynomial fit of
// degree 10 in x - 2.5 (4000 Chebyshev nodes on [1, 3.92], in float64; error below 4e-8); beyond, +-1 in
// float32. No division: it would cost more than the two extra terms.
ANALOGIZE_HD float analogize_erf(float x) {
    const float a = fabsf(x), s = x * x;
    const float series = x * (1.12837917f + s * (-0.376126389f + s * (0.112837917f + s * (-0.0268661706f +
        s * (0.00522397763f + s * (-8.54832702e-4f + s * (1.20553330e-4f + s * (-1.49256504e-5f +
        s * (1.64621144e-6f + s * -1.63658447e-7f)))))))));
    const float u = a - 2.5f;
    const float g = 0.210806355f + u * (-0.0743475407f + u * (0.024938399f + u * (-0.00799981505f +
        u * (0.00246512564f + u * (-0.000738074072f + u * (0.000214263477f + u * (-5.42458001e-05f +
        u * (1.35707396e-05f + u * (-6.2311583e-06f + u * 1.83604345e-06f)))))))));
    const float tail = 1.0f - analogize_exp(-s) * g;
    const float magnitude = a >= 3.92f ? 1.0f : tail;
    return x != x ? x : (a < 1.0f ? series : (x < 0.0f ? -magnitude : magnitude));
}

// tanh: for |x| < 0.3, its Taylor series to x^11 (truncation below 1e-9 relative); beyond,
// 1 - 2 / (e^(2|x|) + 1), with the sign of x.
ANALOGIZE_HD float analogize_tanh(float x) {
    const float a = fabsf(x), s = x * x;
    const float series = x * (1.0f + s * (-1.0f / 3 + s * (2.0f / 15 + s * (-17.0f / 315 + s * (62.0f / 2835 +
        s * (-1382.0f / 155925))))));
    const float magnitude = 1.0f - 2.0f / (analogize_exp(2.0f * (a < 20.0f ? a : 20.0f)) + 1.0f);
    return a < 0.3f ? series : (x < 0.0f ? -magnitude : magnitude);
}

// atan: |x| above tan(3 pi / 8) through pi/2 + atan(-1 / |x|), above tan(pi / 8) through
// pi/4 + atan((|x| - 1) / (|x| + 1)) (one division either way), then the Taylor series to w^21 on
// |w| <= tan(pi / 8) (truncation below 5e-10).
ANALOGIZE_HD float analogize_atan(float x) {
    const float a = fabsf(x);
    const bool far = a > 2.41421356f, middle = a > 0.414213562f;
    const float w = (far ? -1.0f : (middle ? a - 1.0f : a)) / (far ? a : (middle ? a + 1.0f : 1.0f)), s = w * w;
    const float series = w * (1.0f + s * (-1.0f / 3 + s * (1.0f / 5 + s * (-1.0f / 7 + s * (1.0f / 9 +
        s * (-1.0f / 11 + s * (1.0f / 13 + s * (-1.0f / 15 + s * (1.0f / 17 + s * (-1.0f / 19 + s * (1.0f / 21)))))))))));
    const float magnitude = (far ? 1.57079633f : (middle ? 0.785398163f : 0.0f)) + series;
    return x != x ? x : (x < 0.0f ? -magnitude : magnitude);
}

ANALOGIZE_HD float analogize_sigmoid(float x) { return 1.0f / (1.0f + analogize_exp(-x)); }
ANALOGIZE_HD float analogize_softplus(float x) {
    const float value = (x > 0.0f ? x : 0.0f) + analogize_log1p(analogize_exp(-fabsf(x)));
    return x != x ? x : value;
}
