#include "apps/cli_checks.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <limits>
#include <string>

namespace deit::apps {

namespace {

// "" when `value` is a whole number in decimal that fits 64 bits (unsigned: from 0), which it is
// then rewritten without leading zeros; otherwise what is wrong with it.
std::string check_whole_number(std::string& value, bool is_unsigned) {
  const size_t sign = value[0] == '-' || value[0] == '+' ? 1 : 0;
  const bool digits =
      value.size() > sign && std::all_of(value.begin() + sign, value.end(), [](char c) {
        return std::isdigit(static_cast<unsigned char>(c));
      });
  if (!digits || (is_unsigned && value[0] == '-'))
    return "'" + value + "' is not a whole number" + (is_unsigned ? " from 0" : "") +
           " written in decimal";
  const size_t first_digit = std::min(value.find_first_not_of('0', sign), value.size() - 1);
  value.erase(sign, first_digit - sign);
  errno = 0;
  if (is_unsigned)
    std::strtoull(value.c_str(), nullptr, 10);
  else
    std::strtoll(value.c_str(), nullptr, 10);
  if (errno == ERANGE)
    return "'" + value + "' is out of range (at most " +
           (is_unsigned ? "18446744073709551615" : "9223372036854775807") + ")";
  return "";
}

}  // namespace

void check_every_value(CLI::App& app) {
  for (CLI::Option* option : app.get_options()) {
    if (option->get_type_size() == 0) continue;  // a flag
    const std::string type = option->get_type_name();
    const bool is_unsigned = type.rfind("UINT", 0) == 0;
    const bool is_whole_number = is_unsigned || type.rfind("INT", 0) == 0;
    // A required option has no default to fall back on, nor has one that --help says is required
    // unless another is given (train's --model without --resume).
    const bool has_default = !option->get_required() &&
                             option->get_description().find("required unless") == std::string::npos;
    const std::string empty_refusal =
        has_default ? "an empty value (leave the option out for its default)" : "an empty value";
    option->transform(CLI::Validator(
        [is_unsigned, is_whole_number, empty_refusal](std::string& value) -> std::string {
          if (value.empty()) return empty_refusal;
          return is_whole_number ? check_whole_number(value, is_unsigned) : "";
        },
        ""));
  }
  for (CLI::App* command : app.get_subcommands([](CLI::App*) { return true; }))
    check_every_value(*command);
}

CLI::Validator int_at_least(int min) {
  // Named, so that --help shows "at least MIN" rather than the largest int.
  return CLI::Range(min, std::numeric_limits<int>::max(), "at least " + std::to_string(min));
}

bool ends_with_ignoring_case(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() &&
         std::equal(suffix.begin(), suffix.end(), text.end() - suffix.size(), [](char a, char b) {
           return std::tolower(static_cast<unsigned char>(a)) ==
                  std::tolower(static_cast<unsigned char>(b));
         });
}

}  // namespace deit::apps
