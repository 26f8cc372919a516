// The test runner. Without a CUDA device the [gpu] cases cannot pass, so every selection runs
// without them and says so; a selection made only of [gpu] cases (exactly "[gpu]", or say
// "[gpu][attention]") exits with 77, which CTest reports as "Skipped". (CTest's per-case entries
// never name a [gpu] case: see tests/CMakeLists.txt.)
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "engine/device.h"

namespace {

size_t selected_test_count(Catch::Session& session) {
  const Catch::Config& config = session.config();
  return Catch::filterTests(Catch::getAllTestCasesSorted(config), config.testSpec(), config).size();
}

// Each of the comma-separated alternatives of each spec, and an empty selection, made to exclude
// [gpu].
std::vector<std::string> without_gpu(const std::vector<std::string>& specs) {
  if (specs.empty()) return {"~[gpu]"};
  std::vector<std::string> excluded;
  for (const std::string& spec : specs) {
    std::istringstream alternatives(spec);
    std::string alternative, joined;
    while (std::getline(alternatives, alternative, ','))
      joined += (joined.empty() ? "" : ",") + alternative + "~[gpu]";
    excluded.push_back(joined);
  }
  return excluded;
}

}  // namespace

int main(int argc, char* argv[]) {
  Catch::Session session;
  if (int rc = session.applyCommandLine(argc, argv); rc != 0) return rc;
  if (deit::cuda_device_count() > 0) return session.run();

  const size_t selected = selected_test_count(session);
  Catch::ConfigData config = session.configData();
  config.testsOrTags = without_gpu(config.testsOrTags);
  session.useConfigData(config);
  if (selected > 0 && selected_test_count(session) == 0) {
    std::printf("SKIPPED: no CUDA device on this machine; the selected [gpu] tests did not run.\n");
    return 77;
  }
  std::printf("note: no CUDA device on this machine; [gpu] tests are skipped.\n");
  return session.run();
}
