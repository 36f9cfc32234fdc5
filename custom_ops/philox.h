// Counter-based random numbers: Philox4x32-10 (Salmon et al., SC'11). Element i of a node's output at run r
// takes block i / 4, lane i % 4 of the stream keyed by the node's seed, so draws are reproducible per seed,
// independent between nodes and threads, and the same on CPU and CUDA (the same integer arithmetic; the
// float transforms below use only IEEE-rounded +, -, *, / and sqrt, no math-library calls).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "analogize_math.h"

namespace philox {

struct Block {
    uint32_t v[4];
};

ANALOGIZE_HD void multiply(uint32_t a, uint32_t b, uint32_t* high, uint32_t* low) {
    const uint64_t product = static_cast<uint64_t>(a) * b;
    *high = static_cast<uint32_t>(product >> 32);
    *low = static_cast<uint32_t>(product);
}

ANALOGIZE_HD Block generate(uint64_t block, uint64_t run, uint64_t key) {
    uint32_t c0 = static_cast<uint32_t>(block), c1 = static_cast<uint32_t>(block >> 32);
    uint32_t c2 = static_cast<uint32_t>(run), c3 = static_cast<uint32_t>(run >> 32);
    uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
    for (int round = 0; round < 10; ++round) {
        uint32_t high0, low0, high1, low1;
        multiply(0xD2511F53u, c0, &high0, &low0);
        multiply(0xCD9E8D57u, c2, &high1, &low1);
        const uint32_t n0 = high1 ^ c1 ^ k0, n2 = high0 ^ c3 ^ k1;
        c0 = n0;
        c1 = low1;
        c2 = n2;
        c3 = low0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    return Block{{c0, c1, c2, c3}};
}

// 24 random bits to [0, 1): every value exactly representable in float32.
ANALOGIZE_HD float unit(uint32_t bits) { return static_cast<float>(bits >> 8) * 0x1p-24f; }

// Natural log for x in (0, 1], vectorisable: x = m 2^e with m in [sqrt(1/2), sqrt(2)), then the atanh
// series of m (t = (m - 1) / (m + 1), |t| < 0.172); relative error below 1e-7.
ANALOGIZE_HD float log_unit(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    int exponent = static_cast<int>((bits >> 23) & 0xFF) - 127;
    bits = (bits & 0x007FFFFFu) | 0x3F800000u;
    float mantissa;
    memcpy(&mantissa, &bits, sizeof mantissa);
    if (mantissa > 1.41421356f) {
        mantissa *= 0.5f;
        exponent += 1;
    }
    const float t = (mantissa - 1.0f) / (mantissa + 1.0f), t2 = t * t;
    const float series = t * (2.0f + t2 * (0.666666667f + t2 * (0.4f + t2 * (0.285714286f + t2 * 0.222222222f))));
    return static_cast<float>(exponent) * 0.693147181f + series;
}

// cos and sin of the angle 2 pi u, u in [0, 1), vectorisable: the quadrant picks a rotation by
// pi/4 + k pi/2, the rest is a Taylor polynomial on [-pi/4, pi/4); absolute error below 1e-7.
ANALOGIZE_HD void cos_sin_turn(float u, float* cosine, float* sine) {
    const float quarter = u * 4.0f;
    const int k = static_cast<int>(quarter);
    const float phi = (quarter - static_cast<float>(k) - 0.5f) * 1.57079633f, p2 = phi * phi;
    const float s = phi * (1.0f - p2 * (1.0f / 6 - p2 * (1.0f / 120 - p2 * (1.0f / 5040 - p2 * (1.0f / 362880)))));
    const float c = 1.0f - p2 * (0.5f - p2 * (1.0f / 24 - p2 * (1.0f / 720 - p2 * (1.0f / 40320 - p2 * (1.0f / 3628800)))));
    const float h = 0.707106781f;
    const float cos_a = (k == 0 || k == 3) ? h : -h, sin_a = (k < 2) ? h : -h;
    *cosine = cos_a * c - sin_a * s;
    *sine = sin_a * c + cos_a * s;
}

// Box-Muller: lanes (0, 1) and (2, 3) each give two independent standard normals.
ANALOGIZE_HD void normals(const Block& block, float out[4]) {
    for (int pair = 0; pair < 2; ++pair) {
        const float u = static_cast<float>((block.v[2 * pair] >> 8) + 1u) * 0x1p-24f;  // (0, 1]: log is finite
        const float radius = sqrtf(-2.0f * log_unit(u));
        float cosine, sine;
        cos_sin_turn(unit(block.v[2 * pair + 1]), &cosine, &sine);
        out[2 * pair] = radius * cosine;
        out[2 * pair + 1] = radius * sine;
    }
}

}  // namespace philox
