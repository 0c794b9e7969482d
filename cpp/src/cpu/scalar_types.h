// Storage types for 16-bit floats and their conversions to and from float, plus the
// accumulation type used for each storage type (float, or double for double).
#pragma once

#include <cstdint>
#include <cstring>

namespace frod::cpu {

/// bfloat16 storage: the upper 16 bits of an IEEE float32.
struct bf16_t { uint16_t bits; };
/// IEEE binary16 storage.
struct f16_t { uint16_t bits; };

inline float to_float(float v) { return v; }
inline double to_float(double v) { return v; }

inline float to_float(bf16_t v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float to_float(f16_t v) {
  const uint32_t h = v.bits;
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (man << 13);  // inf / nan
  } else if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: renormalise
      int e = -1;
      do { ++e; man <<= 1; } while ((man & 0x400u) == 0);
      u = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
    }
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

/// Round-to-nearest-even float -> bfloat16 (NaN stays NaN).
inline bf16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{static_cast<uint16_t>((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16_t{static_cast<uint16_t>(u >> 16)};
}

/// Round-to-nearest-even float -> IEEE half (overflow to inf, NaN stays NaN).
inline f16_t to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t absu = u & 0x7fffffffu;
  if (absu > 0x7f800000u) return f16_t{static_cast<uint16_t>(sign | 0x7e00u)};
  if (absu >= 0x477ff000u) return f16_t{static_cast<uint16_t>(sign | 0x7c00u)};  // >= 65520
  if (absu < 0x38800000u) {  // below the smallest normal half: subnormal or zero
    if (absu < 0x33000000u) return f16_t{static_cast<uint16_t>(sign)};
    const uint32_t e = absu >> 23;
    const uint32_t m = (absu & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14..24
    uint32_t half = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return f16_t{static_cast<uint16_t>(sign | half)};
  }
  uint32_t r = absu + 0xfffu + ((absu >> 13) & 1u);
  return f16_t{static_cast<uint16_t>(sign | ((r - 0x38000000u) >> 13))};
}

template <typename T> struct Scalar;
template <> struct Scalar<float> {
  using acc = float;
  static float store(float v) { return v; }
};
template <> struct Scalar<double> {
  using acc = double;
  static double store(double v) { return v; }
};
template <> struct Scalar<bf16_t> {
  using acc = float;
  static bf16_t store(float v) { return to_bf16(v); }
};
template <> struct Scalar<f16_t> {
  using acc = float;
  static f16_t store(float v) { return to_f16(v); }
};

}  // namespace frod::cpu
