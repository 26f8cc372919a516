// The test runner. Without a CUDA device, a run with no filter leaves the [gpu] cases out and says
// so; asked for exactly "[gpu]" on such a machine, it exits with 77, which CTest reports as
// "Skipped". (CTest's per-case entries never name a [gpu] case: see tests/CMakeLists.txt.)
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>
#include <string>

#include "engine/device.h"

int main(int argc, char* argv[]) {
  Catch::Session session;
  if (int rc = session.applyCommandLine(argc, argv); rc != 0) return rc;
  if (deit::cuda_device_count() > 0) return session.run();

  auto& config = session.configData();
  bool only_gpu = config.testsOrTags.size() == 1 && config.testsOrTags[0] == "[gpu]";
  if (only_gpu) {
    std::printf("SKIPPED: no CUDA device on this machine; the [gpu] tests did not run.\n");
    return 77;
  }
  if (config.testsOrTags.empty()) {
    std::printf("note: no CUDA device on this machine; [gpu] tests are skipped.\n");
    config.testsOrTags.push_back("~[gpu]");
  }
  return session.run();
}
