#include "train/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <utility>

namespace deit::train {

std::string format_duration(double seconds) {
  const int64_t s = static_cast<int64_t>(std::llround(std::max(0.0, seconds)));
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", (long long)(s / 3600), (long long)(s / 60 % 60));
  else if (s >= 60)
    std::snprintf(buf, sizeof buf, "%lldm%02llds", (long long)(s / 60), (long long)(s % 60));
  else
    std::snprintf(buf, sizeof buf, "%llds", (long long)s);
  return buf;
}

Progress::Progress(std::string label, int64_t total, bool enabled, int64_t first)
    : label_(std::move(label)),
      total_(total),
      first_(first),
      enabled_(enabled && total > 0),
      terminal_(isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_),
      last_tenth_(total > 0 ? first * 10 / total : 0),
      done_(first),
      last_line_done_(first) {}

void Progress::update(int64_t done, int64_t images, double loss) {
  done_ = done;
  images_ = images;
  loss_ = loss;
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (terminal_) {
    // Redrawing costs a write per step; ten times a second is enough for a person.
    if (done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    draw(done, images, loss, false);
  } else {
    const int64_t tenth = done * 10 / total_;
    if (tenth <= last_tenth_) return;
    last_tenth_ = tenth;
    draw(done, images, loss, true);
  }
}

void Progress::finish() {
  if (!enabled_) return;
  if (terminal_) {
    draw(done_, images_, loss_, false);
    std::fputc('\n', stderr);
  } else if (done_ != last_line_done_) {
    // Where the work stopped between two tenths (a stop signal): that step, once.
    draw(done_, images_, loss_, true);
  }
  std::fflush(stderr);
  enabled_ = false;
}

void Progress::finish(int64_t done, int64_t images, double loss) {
  done_ = done;
  images_ = images;
  loss_ = loss;
  finish();
}

void Progress::draw(int64_t done, int64_t images, double loss, bool final_line) {
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = elapsed > 0 ? images / elapsed : 0;
  const double eta = done > first_ ? elapsed * (total_ - done) / (done - first_) : 0;
  char stats[160];
  std::snprintf(stats, sizeof stats, "%lld/%lld  %.0f img/s  loss %.4f  %s %s", (long long)done,
                (long long)total_, rate, loss, done < total_ ? "eta" : "took",
                format_duration(done < total_ ? eta : elapsed).c_str());
  if (final_line) {
    last_line_done_ = done;
    std::fprintf(stderr, "%s  %s\n", label_.c_str(), stats);
    return;
  }
  constexpr int kWidth = 24;
  const int filled = static_cast<int>(kWidth * done / std::max<int64_t>(total_, 1));
  std::string bar(filled, '#');
  bar.resize(kWidth, '.');
  std::fprintf(stderr, "\r%s [%s] %s\x1b[K", label_.c_str(), bar.c_str(), stats);
  std::fflush(stderr);
}

}  // namespace deit::train
