#include "engine/watchdog.h"

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>

namespace deit {

void exit_unless_returns_within(std::chrono::milliseconds limit, const std::string& message,
                                const std::function<void()>& call) {
  std::mutex mutex;
  std::condition_variable returned_signal;
  bool returned = false;
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> lock(mutex);
    if (returned_signal.wait_for(lock, limit, [&] { return returned; })) return;
    std::fflush(stdout);
    std::fprintf(stderr, "deit: error: %s\n", message.c_str());
    std::fflush(stderr);
    std::_Exit(EXIT_FAILURE);
  });
  std::exception_ptr error;
  try {
    call();
  } catch (...) {
    error = std::current_exception();
  }
  {
    std::lock_guard<std::mutex> lock(mutex);
    returned = true;
  }
  returned_signal.notify_one();
  watchdog.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace deit
