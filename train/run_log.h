// The run's log, OUTPUT/log.txt: one JSON line per epoch (the reference code's keys), appended
// after the epoch's checkpoint is saved, so that a line stands for a saved and evaluated epoch.
// Rank 0 alone writes it. The checkpoint keeps the last epoch's line too (train/run_state.h), so
// that a resumed run can mend a log that a kill or a full disk left short.
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "train/run_state.h"

namespace deit::train {

// Warns when the run's log lacks the line of some epoch its checkpoint has trained: a run killed
// between saving an epoch and logging it, an epoch saved unevaluated (its val split failed to
// read), or a log removed. Only the last epoch's line is kept elsewhere (restore_last_log_line).
void warn_of_missing_log_lines(const std::string& log_path, int64_t epochs_done);

// Says, where a run resumed into another folder (--resume CK --output NEW) starts a log of its
// own, that the lines of its first `epochs_done` epochs are in `resumed_log` (the checkpoint's
// folder's), not in `log_path`: a plot of one log alone shows part of the run.
void note_log_starts_apart(const std::string& log_path, const std::string& resumed_log,
                           int64_t epochs_done);

// Cuts from the run's log a last line that lacks its newline: what a write cut short left (a full
// disk, a kill inside it). The epoch it began is in the checkpoint, whose line
// restore_last_log_line writes back whole; left there, the next line would be appended to it.
void drop_unfinished_last_line(const std::string& log_path);

// Writes the line of the checkpoint's last epoch into the run's log where the run stopped between
// saving that epoch and logging it (a kill in that millisecond; a retrying script's kills can land
// there every time): the line is in the checkpoint too. Known by the log's last line, which is of
// an earlier epoch; other gaps are for warn_of_missing_log_lines. A failure is warned about: the
// run can go on without the line, as it could before.
void restore_last_log_line(const std::string& log_path, const RunState& saved);

// Appends an epoch's line to log.txt, after its checkpoint was saved. A failure says that the epoch
// is saved, and gives the line, which the log would lack for good: a resumed run goes on from the
// next epoch.
void append_log_line(const std::string& path, const nlohmann::json& line,
                     const std::string& checkpoint, bool last_epoch);

}  // namespace deit::train
