#include "apps/reference_flags.h"

#include <map>

namespace deit::apps {

namespace {

// What follows "the reference code's --NAME" in a note.
const std::map<std::string, std::string>& reference_options() {
  static const std::string submitit_launch =
      "(run_with_submitit.py's) is the launcher's business here: mpirun, srun or torchrun "
      "(README.md, Multi-GPU / multi-node)";
  static const std::string distillation =
      "belongs to DeiT I's distillation, which deit does not train";
  static const std::map<std::string, std::string> notes = {
      {"--data-path", "is --data here"},
      {"--output_dir", "is --output here"},
      {"--batch", "(argparse's abbreviation of --batch-size) is --batch-size here"},
      {"--ThreeAugment", "is --three-augment here"},
      {"--nb_classes", "is --num-classes here (default: the dataset's)"},
      {"--num_workers", "is --workers here"},
      {"--unscale-lr",
       "is how deit always reads --lr (never scaled by the batch size): leave it out"},
      {"--sched", "has one value in DeiT III, cosine, deit's only schedule: leave it out"},
      {"--reprob",
       "(random erasing) is 0 in every DeiT III command, and deit has none: leave it out"},
      {"--drop", "(dropout) is 0 in every DeiT III command, and deit has none: leave it out"},
      {"--cooldown-epochs", "adds epochs main.py's loop never runs: leave it out"},
      {"--dist-eval", "is how deit always evaluates with several processes: leave it out"},
      {"--pin-mem", "is how deit always copies batches to a GPU: leave it out"},
      {"--train-interpolation", "is bicubic in DeiT III, as in deit: leave it out"},
      {"--eval", "is the command `deit eval` here"},
      {"--nodes", submitit_launch},
      {"--ngpus", submitit_launch},
      {"--world_size", "comes from the launcher here (mpirun, srun or torchrun)"},
      {"--dist_url", "comes from the launcher here (MASTER_ADDR and MASTER_PORT, or Slurm's)"},
      {"--start_epoch", "is read from the checkpoint --resume continues"},
      {"--teacher-model", distillation},
      {"--distillation-type", distillation},
  };
  return notes;
}

}  // namespace

std::vector<std::string> reference_option_notes(const std::vector<std::string>& args) {
  std::vector<std::string> lines;
  for (const std::string& arg : args) {
    const std::string name = arg.substr(0, arg.find('='));
    const auto it = reference_options().find(name);
    if (it != reference_options().end())
      lines.push_back("the reference code's " + name + " " + it->second);
  }
  return lines;
}

}  // namespace deit::apps
