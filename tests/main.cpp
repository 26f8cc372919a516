// The test runner. Without a CUDA device the [gpu] cases cannot pass: a run with no filter leaves
// them out and says so, and a selection made only of [gpu] cases (exactly "[gpu]", or say
// "[gpu][attention]") exits with 77, which CTest reports as "Skipped". (CTest's per-case entries
// never name a [gpu] case: see tests/CMakeLists.txt.)
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdio>
#include <string>

#include "engine/device.h"

namespace {

bool is_gpu_case(const Catch::TestCase& test) {
  const std::vector<std::string>& tags = test.getTestCaseInfo().lcaseTags;
  return std::find(tags.begin(), tags.end(), "gpu") != tags.end();
}

}  // namespace

int main(int argc, char* argv[]) {
  Catch::Session session;
  if (int rc = session.applyCommandLine(argc, argv); rc != 0) return rc;
  if (deit::cuda_device_count() > 0) return session.run();

  Catch::ConfigData& data = session.configData();
  if (data.listTests || data.listTestNamesOnly || data.listTags || data.listReporters)
    return session.run();
  if (data.testsOrTags.empty()) {
    std::printf("note: no CUDA device on this machine; [gpu] tests are skipped.\n");
    data.testsOrTags.push_back("~[gpu]");
    return session.run();
  }
  const Catch::Config& config = session.config();
  const std::vector<Catch::TestCase> selected =
      Catch::filterTests(Catch::getAllTestCasesSorted(config), config.testSpec(), config);
  if (!selected.empty() && std::all_of(selected.begin(), selected.end(), is_gpu_case)) {
    std::printf("SKIPPED: no CUDA device on this machine; the selected [gpu] tests did not run.\n");
    return 77;
  }
  if (std::any_of(selected.begin(), selected.end(), is_gpu_case))
    std::printf("note: no CUDA device on this machine; the selected [gpu] tests will fail.\n");
  return session.run();
}
