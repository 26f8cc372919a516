// The run's output folder (--output), which holds its checkpoint.safetensors and log.txt: which
// runs may write it, and rank 0's hold on it for the run's life (train/output_lock.h).
#pragma once
#include <string>

#include "data/made_folder.h"
#include "train/output_lock.h"
#include "train/recipe.h"

namespace deit::train {

// A folder that holds a run is written over only by resuming that run's checkpoint.safetensors
// there: not by a new run, nor by resuming a copy of it or another run's checkpoint.
void refuse_other_run(const std::string& dir, bool resuming_its_checkpoint);

// Whether the run resumes its output folder's own checkpoint.safetensors.
bool resumes_its_checkpoint(const TrainOptions& o);

// A run folder inside a split would be read as one of its classes, by this run and every later
// one on the dataset.
void refuse_output_in_splits(const TrainOptions& o);

// Rank 0's hold on the output folder for the run's life: made where missing, locked against other
// runs, refused when it holds another run, cleared of what an interrupted save left. Fails before
// any work when the run could not save what it computes.
class OutputFolder {
 public:
  OutputFolder(const std::string& dir, bool resuming_its_checkpoint);

 private:
  data::MadeFolder made_;  // destroyed after the lock, whose file would keep a failed run's folder
  OutputLock lock_;
};

}  // namespace deit::train
