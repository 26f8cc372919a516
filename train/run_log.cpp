#include "train/run_log.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <stdexcept>
#include <vector>

#include "model/json_exact.h"

namespace deit::train {

namespace {

namespace fs = std::filesystem;

// The lines of the run's log (none where it cannot be read).
std::vector<std::string> log_file_lines(const std::string& log_path) {
  std::vector<std::string> lines;
  std::ifstream log(log_path);
  for (std::string line; std::getline(log, line);) lines.push_back(line);
  return lines;
}

// Appends `text` to the file at `path`; false, with errno set, when it could not.
bool append_to_file(const std::string& path, const std::string& text) {
  std::FILE* file = std::fopen(path.c_str(), "a");
  if (!file) return false;
  const bool written = std::fwrite(text.data(), 1, text.size(), file) == text.size();
  return std::fclose(file) == 0 && written;
}

// The epoch of an epoch's log line; none for what is no such line (a note or a blank line added by
// hand, a line cut short, a value of the wrong type).
std::optional<int64_t> epoch_of(const nlohmann::json& line) {
  if (!line.is_object() || !line.contains("epoch") ||
      !model::holds_exactly<int64_t>(line.at("epoch")))
    return std::nullopt;
  return line.at("epoch").get<int64_t>();
}

std::optional<int64_t> epoch_of_log_line(const std::string& text) {
  return epoch_of(nlohmann::json::parse(text, nullptr, false));
}

}  // namespace

void warn_of_missing_log_lines(const std::string& log_path, int64_t epochs_done) {
  // The checkpoint's epochs that have a line, each counted once (a checkpoint copied back from a
  // backup and resumed logs its later epochs again); a note or a blank line added by hand is none.
  std::set<int64_t> logged_epochs;
  for (const std::string& line : log_file_lines(log_path)) {
    const std::optional<int64_t> epoch = epoch_of_log_line(line);
    if (epoch && *epoch >= 0 && *epoch < epochs_done) logged_epochs.insert(*epoch);
  }
  const auto lines = static_cast<int64_t>(logged_epochs.size());
  if (lines < epochs_done)
    std::fprintf(stderr,
                 "warning: %s holds %lld epoch line%s, its checkpoint %lld epoch%s: the lines of "
                 "the epochs between are lost (a run stopped between saving an epoch and logging "
                 "it, an epoch saved unevaluated when its val split failed to read, or a log "
                 "removed); the log goes on from epoch %lld\n",
                 log_path.c_str(), (long long)lines, lines == 1 ? "" : "s", (long long)epochs_done,
                 epochs_done == 1 ? "" : "s", (long long)epochs_done + 1);
}

void note_log_starts_apart(const std::string& log_path, const std::string& resumed_log,
                           int64_t epochs_done) {
  if (!log_file_lines(log_path).empty()) return;
  std::error_code error;
  const std::string where =
      fs::exists(resumed_log, error)
          ? "are in " + resumed_log
          : "were in the resumed run's log, which is not beside its checkpoint";
  std::fprintf(stderr, "note: %s starts at epoch %lld: the lines of the %lld epoch%s before %s\n",
               log_path.c_str(), (long long)epochs_done + 1, (long long)epochs_done,
               epochs_done == 1 ? "" : "s", where.c_str());
}

void drop_unfinished_last_line(const std::string& log_path) {
  std::error_code error;
  const uintmax_t size = fs::file_size(log_path, error);
  if (error || size == 0) return;
  std::ifstream log(log_path, std::ios::binary);
  std::string text(size, '\0');
  if (!log.read(text.data(), static_cast<std::streamsize>(size)) || text.back() == '\n') return;
  const size_t kept = text.rfind('\n') + 1;  // 0 where the log has no whole line
  fs::resize_file(log_path, kept, error);
  if (error) {
    std::fprintf(stderr,
                 "warning: %s ends in an unfinished line (%zu bytes, a write cut short) that "
                 "cannot be removed (%s): the next line will be appended to it\n",
                 log_path.c_str(), text.size() - kept, error.message().c_str());
    return;
  }
  std::fprintf(stderr,
               "note: %s ended in an unfinished line (%zu bytes, a write cut short): removed\n",
               log_path.c_str(), text.size() - kept);
}

void restore_last_log_line(const std::string& log_path, const RunState& saved) {
  const int64_t last_epoch = saved.epochs_done - 1;
  const nlohmann::json& line = saved.last_log_line;
  if (epoch_of(line) != last_epoch) return;
  const std::vector<std::string> lines = log_file_lines(log_path);
  if (!lines.empty()) {
    // A line that is no log line of an earlier epoch (edited by hand, say) is left as it is.
    const std::optional<int64_t> logged_epoch = epoch_of_log_line(lines.back());
    if (!logged_epoch || *logged_epoch >= last_epoch) return;
  }
  const std::string text = line.dump() + "\n";
  if (!append_to_file(log_path, text)) {
    std::fprintf(
        stderr, "warning: the line of epoch %lld cannot be appended to %s (%s); it reads: %s",
        (long long)saved.epochs_done, log_path.c_str(), std::strerror(errno), text.c_str());
    return;
  }
  std::fprintf(stderr,
               "note: %s lacked the line of epoch %lld, whose checkpoint was saved before the "
               "run stopped: written from the checkpoint\n",
               log_path.c_str(), (long long)saved.epochs_done);
}

void append_log_line(const std::string& path, const nlohmann::json& line,
                     const std::string& checkpoint, bool last_epoch) {
  if (!append_to_file(path, line.dump() + "\n")) {
    const std::string epoch = std::to_string(line.at("epoch").get<int64_t>() + 1);
    throw std::runtime_error(
        "cannot append to log '" + path + "': " + std::strerror(errno) + "; epoch " + epoch +
        (last_epoch ? ", the run's last, is saved in " + checkpoint
                    : " is saved in " + checkpoint + ": fix the log's permissions and --resume") +
        " (the log lacks the epoch's line: " + line.dump() + ")");
  }
}

}  // namespace deit::train
