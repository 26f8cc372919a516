// The one random number generator of the project: xoshiro256** seeded through splitmix64.
// Independent streams come from (seed, stream id) without sharing state between threads, so a
// stream named by what it is for (an epoch and a sample's position, say) gives the same draws no
// matter which worker thread makes them, and no generator state has to be carried across steps
// or saved in a checkpoint.
// Distributions are written here rather than taken from <random>, whose outputs differ between
// standard libraries.
#pragma once
#include <array>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace deit {

class Rng {
 public:
  explicit Rng(uint64_t seed = 0, uint64_t stream = 0) {
    uint64_t s = seed ^ (stream * 0xd1342543de82ef95ull + 0x2545f4914f6cdd1dull);
    for (auto& word : state_) word = splitmix64(s);
  }

  uint64_t next_u64() {
    const uint64_t result = rotl(state_[1] * 5, 7) * 9;
    const uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = rotl(state_[3], 45);
    return result;
  }

  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

  // Uniform integer in [0, n), unbiased (rejection of the short last interval). n >= 1:
  // std::invalid_argument for 0, where there is no such integer (and n % 0 would divide by 0).
  uint64_t below(uint64_t n) {
    if (n == 0) throw std::invalid_argument("Rng::below(0): no integer in [0, 0)");
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t r;
    do r = next_u64();
    while (r >= limit);
    return r % n;
  }

  bool bernoulli(double p) { return uniform() < p; }

  // Standard normal by Box-Muller; uses two uniforms per draw so the state alone is the state.
  double normal() {
    const double u1 = 1.0 - uniform();  // (0, 1]
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

  // Normal(0, std) truncated to [lo, hi] by rejection (timm's trunc_normal_ uses [-2, 2] absolute).
  // Rejection takes about 1 / P(lo <= v <= hi) draws (one for the model's std 0.02 in [-2, 2]),
  // for ever where that is 0 in double: an interval that a million draws miss is refused
  // (std::invalid_argument), as are std <= 0 and lo >= hi.
  double trunc_normal(double std, double lo, double hi) {
    constexpr int kMaxDraws = 1000000;
    if (std > 0 && std::isfinite(std) && lo < hi)
      for (int draw = 0; draw < kMaxDraws; ++draw) {
        const double v = std * normal();
        if (v >= lo && v <= hi) return v;
      }
    throw std::invalid_argument("Rng::trunc_normal: Normal(0, " + std::to_string(std) +
                                ") truncated to [" + std::to_string(lo) + ", " +
                                std::to_string(hi) +
                                "] needs a positive std and an interval that holds some of the "
                                "distribution (rejection missed it a million times)");
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  static uint64_t splitmix64(uint64_t& s) {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  std::array<uint64_t, 4> state_{};
};

}  // namespace deit
