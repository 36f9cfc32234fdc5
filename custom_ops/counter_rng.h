// Counter-based random numbers: output = hash(counter), so any element's draw is computed directly, in any
// order, on any thread or device. The hash is SplitMix64's finaliser (Steele, Lea & Flood, OOPSLA 2014); a
// stream starts at a state mixed from the node's seed and the run number, and its word w is SplitMix64's w-th
// output, mix(stream + w * golden gamma). Each word gives two draws (two uniforms from its halves, or a
// Box-Muller pair), and elements take them in groups of kGroup: element i of group g = i / kGroup takes word
// g * kGroup / 2 + i % (kGroup / 2), its first draw in the group's first half and its second in the other half,
// so that a CPU tile writes each half of its draws contiguously (interleaving pairs kept the loop scalar).
// Reproducible per seed, independent between nodes, runs and threads, and the same on CPU and CUDA (the same
// integer arithmetic; the float transforms below use only IEEE-rounded +, -, *, / and sqrt, no math-library
// calls). Five times cheaper here than Philox4x32-10.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "analogize_math.h"

namespace counter_rng {

constexpr int kNormalDraws = 1;  // a step's random kind: 1 standard normal, 2 uniform on [0, 1)
constexpr size_t kGroup = 256;
constexpr size_t kHalfGroup = kGroup / 2;

constexpr uint64_t kGoldenGamma = 0x9E3779B97F4A7C15ull;

ANALOGIZE_HD uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// The state a node's stream starts from at one run: distinct (key, run) pairs land far apart.
ANALOGIZE_HD uint64_t stream(uint64_t key, uint64_t run) { return mix(mix(key) ^ (run * 0xD1B54A32D192ED03ull)); }

// Word w of the stream: SplitMix64's w-th output.
ANALOGIZE_HD uint64_t word(uint64_t w, uint64_t start) { return mix(start + w * kGoldenGamma); }

// The word element i draws from, and the first of the two elements that share it.
ANALOGIZE_HD uint64_t word_of(uint64_t i) { return i / kGroup * kHalfGroup + i % kHalfGroup; }
ANALOGIZE_HD uint64_t first_element_of(uint64_t w) { return w / kHalfGroup * kGroup + w % kHalfGroup; }
// The words whose draws cover elements 0 .. count - 1 (whole groups).
ANALOGIZE_HD uint64_t words_covering(uint64_t count) { return (count + kGroup - 1) / kGroup * kHalfGroup; }

// 24 random bits to [0, 1): every value exactly representable in float32.
ANALOGIZE_HD float unit(uint32_t bits) { return static_cast<float>(bits >> 8) * 0x1p-24f; }

// Natural log for x in (0, 1], vectorisable: x = m 2^e with m in [sqrt(1/2), sqrt(2)), then the atanh
// series of m (t = (m - 1) / (m + 1), |t| < 0.172) to t^7; relative error below 3e-7.
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
    const float series = t * (2.0f + t2 * (0.666666667f + t2 * (0.4f + t2 * 0.285714286f)));
    return static_cast<float>(exponent) * 0.693147181f + series;
}

// cos and sin of the angle 2 pi u, u in [0, 1), vectorisable: the quadrant picks a rotation by
// pi/4 + k pi/2, the rest is a Taylor polynomial on [-pi/4, pi/4) (to phi^7 and phi^8); absolute error below
// 4e-7, far below any noise level the op set is used at.
ANALOGIZE_HD void cos_sin_turn(float u, float* cosine, float* sine) {
    const float quarter = u * 4.0f;
    const int k = static_cast<int>(quarter);
    const float phi = (quarter - static_cast<float>(k) - 0.5f) * 1.57079633f, p2 = phi * phi;
    const float s = phi * (1.0f - p2 * (1.0f / 6 - p2 * (1.0f / 120 - p2 * (1.0f / 5040))));
    const float c = 1.0f - p2 * (0.5f - p2 * (1.0f / 24 - p2 * (1.0f / 720 - p2 * (1.0f / 40320))));
    const float h = 0.707106781f;
    const float cos_a = (k == 0 || k == 3) ? h : -h, sin_a = (k < 2) ? h : -h;
    *cosine = cos_a * c - sin_a * s;
    *sine = sin_a * c + cos_a * s;
}

// Box-Muller on one word: its low half sets the radius, its high half the angle; two independent standard
// normals, the first and the second draw of the word.
ANALOGIZE_HD void normal_pair(uint32_t low, uint32_t high, float* first, float* second) {
    const float u = static_cast<float>((low >> 8) + 1u) * 0x1p-24f;  // (0, 1]: log is finite
    const float radius = sqrtf(-2.0f * log_unit(u));
    float cosine, sine;
    cos_sin_turn(unit(high), &cosine, &sine);
    *first = radius * cosine;
    *second = radius * sine;
}

// The two draws of one word: normals, or uniforms on [0, 1) from its halves.
ANALOGIZE_HD void draw_pair(int kind, uint64_t bits, float* first, float* second) {
    const uint32_t low = static_cast<uint32_t>(bits), high = static_cast<uint32_t>(bits >> 32);
    if (kind == kNormalDraws) {
        normal_pair(low, high, first, second);
    } else {
        *first = unit(low);
        *second = unit(high);
    }
}

}  // namespace counter_rng
