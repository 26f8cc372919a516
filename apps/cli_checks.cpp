#include "apps/cli_checks.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <string>

namespace deit::apps {

CLI::Validator unsigned_64bit() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        const bool digits = !value.empty() && std::all_of(value.begin(), value.end(), [](char c) {
          return std::isdigit(static_cast<unsigned char>(c));
        });
        errno = 0;
        if (digits) std::strtoull(value.c_str(), nullptr, 10);
        if (!digits || errno == ERANGE)
          return "'" + value + "' is not a whole number from 0 to 18446744073709551615";
        return "";
      },
      "UINT64");
}

}  // namespace deit::apps
