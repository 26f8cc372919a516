// An environment variable set (or unset) for a scope: what a test needs around a call that reads
// it (TMPDIR, the emulated device's switches), without leaking the setting into the cases after it.
#pragma once
#include <cstdlib>
#include <optional>
#include <string>

namespace deit::test {

class ScopedEnvironment {
 public:
  ScopedEnvironment(const char* name, const std::string& value) : name_(name) {
    if (const char* before = std::getenv(name)) saved_ = before;
    setenv(name, value.c_str(), 1);
  }
  // Unset for the scope.
  ScopedEnvironment(const char* name, std::nullopt_t) : name_(name) {
    if (const char* before = std::getenv(name)) saved_ = before;
    unsetenv(name);
  }
  ~ScopedEnvironment() {
    if (saved_)
      setenv(name_.c_str(), saved_->c_str(), 1);
    else
      unsetenv(name_.c_str());
  }
  ScopedEnvironment(const ScopedEnvironment&) = delete;
  ScopedEnvironment& operator=(const ScopedEnvironment&) = delete;

 private:
  std::string name_;
  std::optional<std::string> saved_;  // empty: the variable was not set
};

}  // namespace deit::test
