// Values read from JSON that deit need not have written: a checkpoint's metadata edited by hand, or
// damaged where no checksum covers it. nlohmann converts any number to any arithmetic type without
// a word: 3.5 workers became 3, 2^63 a negative count and -1 a seed of 2^64 - 1, and 1e300 into an
// integer is undefined behaviour. These read a value only where its type holds it exactly.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include <nlohmann/json.hpp>

namespace deit::model {

// Whether `value` is a T as it stands: for an integer type, a whole number in T's range; for a
// floating type, a number in its range; for bool and std::string, a JSON boolean and string.
template <typename T>
bool holds_exactly(const nlohmann::json& value) {
  if constexpr (std::is_same_v<T, bool>) {
    return value.is_boolean();
  } else if constexpr (std::is_integral_v<T>) {
    using Limits = std::numeric_limits<T>;
    if (value.is_number_unsigned())
      return value.get<uint64_t>() <= static_cast<uint64_t>(Limits::max());
    if (value.is_number_float()) {  // a whole number written as 4.0 is that number
      const double number = value.get<double>();
      const double bound = std::ldexp(1.0, Limits::digits);  // 2^63 for int64_t: past its max
      return std::trunc(number) == number && number < bound &&
             number >= (Limits::is_signed ? -bound : 0.0);
    }
    if (!value.is_number_integer()) return false;
    const int64_t number = value.get<int64_t>();
    if (number < 0) return Limits::is_signed && number >= static_cast<int64_t>(Limits::min());
    return static_cast<uint64_t>(number) <= static_cast<uint64_t>(Limits::max());
  } else if constexpr (std::is_floating_point_v<T>) {
    return value.is_number() && (!value.is_number_float() ||
                                 std::abs(value.get<double>()) <= std::numeric_limits<T>::max());
  } else {
    static_assert(std::is_same_v<T, std::string>, "holds_exactly reads numbers, bools, strings");
    return value.is_string();
  }
}

// object[key] as a T, or std::invalid_argument naming the key and what it holds (and
// nlohmann::json::out_of_range for a missing key, as at() gives).
template <typename T>
T read_exactly(const nlohmann::json& object, const std::string& key) {
  const nlohmann::json& value = object.at(key);
  if (!holds_exactly<T>(value))
    throw std::invalid_argument("'" + key + "' is " + value.dump() + ", not " +
                                (std::is_same_v<T, bool>       ? "true or false"
                                 : std::is_integral_v<T>       ? "a whole number of its range"
                                 : std::is_floating_point_v<T> ? "a number of its range"
                                                               : "a string"));
  return value.get<T>();
}

}  // namespace deit::model
