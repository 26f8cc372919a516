#include "tests/emulated/runtime/stream_order.h"

#include <dlfcn.h>
#include <execinfo.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <sstream>

namespace deit_emu {

CallStack CallStack::here() {
  CallStack stack;
  stack.frames.resize(24);
  stack.frames.resize(backtrace(stack.frames.data(), static_cast<int>(stack.frames.size())));
  return stack;
}

namespace {

// The function that contains `address`, by addr2line over the object that holds it.
std::string function_at(const void* address) {
  Dl_info info{};
  if (dladdr(address, &info) == 0 || info.dli_fname == nullptr) return "??";
  // A return address points after its call: look up the call itself.
  const auto offset =
      reinterpret_cast<uintptr_t>(address) - 1 - reinterpret_cast<uintptr_t>(info.dli_fbase);
  // The program itself may be named as it was started, relative to a directory since left.
  std::string file = info.dli_fname;
  if (file.empty() || file[0] != '/') {
    char path[4096];
    const ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    file = n > 0 ? std::string(path, static_cast<size_t>(n)) : file;
  }
  std::ostringstream command;
  command << "addr2line -C -f -e '" << file << "' 0x" << std::hex << offset;
  std::string name;
  if (FILE* pipe = popen(command.str().c_str(), "r")) {
    char line[4096];
    if (std::fgets(line, sizeof line, pipe) != nullptr) name = line;
    pclose(pipe);
  }
  while (!name.empty() && (name.back() == '\n' || name.back() == '\r')) name.pop_back();
  return name.empty() || name == "??" ? file + "+" + std::to_string(offset) : name;
}

}  // namespace

std::string CallStack::describe() const {
  std::string lines;
  int shown = 0;
  for (void* frame : frames) {
    const std::string name = function_at(frame);
    const size_t own = name.find("deit_emu::");
    if (own != std::string::npos && own < name.find('(')) continue;  // the emulated runtime's
    if (name.rfind("Catch::", 0) == 0 || name == "main") break;      // what ran the test or program
    lines += "    " + name + "\n";
    if (++shown == 8) break;
  }
  return lines;
}

uint64_t VectorClock::at(const void* stream) const {
  const auto it = counts_.find(stream);
  return it == counts_.end() ? 0 : it->second;
}

void VectorClock::merge(const VectorClock& other) {
  for (const auto& [stream, count] : other.counts_)
    counts_[stream] = std::max(counts_[stream], count);
}

std::optional<Race> RaceDetector::check(const void* stream, const VectorClock& clock,
                                        const Footprint& footprint) {
  for (const Access& a : footprint.accesses) {
    const auto it = by_allocation_.find(a.allocation);
    if (it == by_allocation_.end()) continue;
    for (const Record& r : it->second) {
      const bool ordered = r.stream == stream || r.piece <= clock.at(r.stream);
      const bool overlap = r.access.begin < a.end && a.begin < r.access.end;
      if (!ordered && overlap && (r.access.writes || a.writes))
        return Race{r.stream, r.work, r.access, a};
    }
  }
  const auto work = std::make_shared<const Footprint>(footprint);
  for (const Access& a : footprint.accesses) {
    const Record record{stream, clock.at(stream), a, work};
    // A record of this stream over the same bytes, writing no more, says nothing the new one does
    // not: work unordered with the old piece is unordered with the new one too.
    std::vector<Record>& records = by_allocation_[a.allocation];
    const auto covered = std::find_if(records.begin(), records.end(), [&](const Record& r) {
      return r.stream == stream && r.access.begin == a.begin && r.access.end == a.end &&
             (a.writes || !r.access.writes);
    });
    if (covered != records.end())
      *covered = record;
    else
      records.push_back(record);
  }
  return std::nullopt;
}

void RaceDetector::forget_ordered_before(const VectorClock& host) {
  for (auto it = by_allocation_.begin(); it != by_allocation_.end();) {
    std::vector<Record>& records = it->second;
    records.erase(std::remove_if(records.begin(), records.end(),
                                 [&](const Record& r) { return r.piece <= host.at(r.stream); }),
                  records.end());
    it = records.empty() ? by_allocation_.erase(it) : std::next(it);
  }
}

}  // namespace deit_emu
