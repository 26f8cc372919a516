// What a person watching a run sees on stderr: on a terminal, one line redrawn in place
// (a bar, images/s, loss, ETA); otherwise (a log file, CI) plain lines at every tenth of the work,
// so the output stays line-oriented.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace deit::train {

class Progress {
 public:
  // `total` steps of work called `label` (e.g. "epoch 3/20"), of which `first` were done before
  // (a resumed epoch); nothing is shown when !enabled.
  Progress(std::string label, int64_t total, bool enabled, int64_t first = 0);
  // After step `done` (1-based) of `total`, having processed `images` images in all so far.
  void update(int64_t done, int64_t images, double loss);
  // Ends the display (a terminal line is finished with a newline).
  void finish();
  // The last update and the end together: the last line shows these figures. Where each process
  // counts its own share (an evaluation across processes), the caller updates up to the step
  // before the last and ends with the totals over every process, so the last line is the run's.
  void finish(int64_t done, int64_t images, double loss);

 private:
  void draw(int64_t done, int64_t images, double loss, bool final_line);

  std::string label_;
  int64_t total_;
  int64_t first_;
  bool enabled_;
  bool terminal_;
  std::chrono::steady_clock::time_point start_, last_draw_;
  int64_t last_tenth_ = 0;
  int64_t done_ = 0, images_ = 0;
  int64_t last_line_done_ = 0;  // the step of the last plain line (`first` before any)
  double loss_ = 0;
};

// "1m23s", "45s", "2h05m".
std::string format_duration(double seconds);

}  // namespace deit::train
