#include "apps/reference_flags.h"

#include <map>

namespace deit::apps {

namespace {

// What follows "the reference code's --NAME" in a note.
const std::map<std::string, std::string>& reference_options() {
  static const std::string submitit_launch =
      "(run_with_submitit.py's) is the launcher's business here: mpirun, srun or torchrun "
      "(README.md, Multi-GPU / multi-node)";
  static const std::string from_launcher =
      "comes from the launcher here (mpirun, srun or torchrun)";
  static const std::string distillation =
      "belongs to DeiT I's distillation, which deit does not train";
  static const std::string random_erasing =
      "(random erasing) is off in every DeiT III command (--reprob 0), and deit has none: leave "
      "it out";
  static const std::string other_schedules =
      "belongs to the step and plateau schedules; DeiT III's is cosine, deit's only schedule: "
      "leave it out";
  static const std::string lr_noise =
      "(learning-rate noise) is off in every DeiT III command, and deit has none: leave it out";
  static const std::string datasets =
      "chooses among main.py's datasets (IMNET, CIFAR, INAT); deit reads the folder "
      "of classes, or the shards, that --data names: leave it out";
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
      {"--reprob", random_erasing},
      {"--remode", random_erasing},
      {"--recount", random_erasing},
      {"--resplit", random_erasing},
      {"--decay-epochs", other_schedules},
      {"--decay-rate", other_schedules},
      {"--dr", other_schedules},
      {"--patience-epochs", other_schedules},
      {"--lr-noise", lr_noise},
      {"--lr-noise-pct", lr_noise},
      {"--lr-noise-std", lr_noise},
      {"--opt-betas", "is (0.9, 0.999) in every DeiT III command, as in deit: leave it out"},
      {"--momentum", "belongs to SGD, which DeiT III does not use: leave it out"},
      {"--model-ema-force-cpu",
       "(the moving average kept on the CPU) is off in every DeiT III command; deit keeps it "
       "where the weights are: leave it out"},
      {"--cutmix-minmax",
       "(cutmix's box limits instead of its alpha) is unset in every DeiT III command, and deit "
       "has none: leave it out"},
      {"--mixup-mode", "is batch in DeiT III (one mix per batch), deit's only mode: leave it out"},
      {"--train-mode", "(drop-path active while training) is how deit always trains: leave it out"},
      {"--no-train-mode", "(training with drop-path off) is --drop-path 0 here"},
      {"--data-set", datasets},
      {"--inat-category", datasets},
      {"--drop", "(dropout) is 0 in every DeiT III command, and deit has none: leave it out"},
      {"--cooldown-epochs", "adds epochs main.py's loop never runs: leave it out"},
      {"--dist-eval", "is how deit always evaluates with several processes: leave it out"},
      {"--pin-mem", "is how deit always copies batches to a GPU: leave it out"},
      {"--no-pin-mem",
       "turns off pinned memory, which deit always copies batches from: leave it out"},
      {"--train-interpolation", "is bicubic in DeiT III, as in deit: leave it out"},
      {"--eval", "is the command `deit eval` here"},
      {"--nodes", submitit_launch},
      {"--ngpus", submitit_launch},
      {"--timeout", submitit_launch},
      {"--partition", submitit_launch},
      {"--job_dir", submitit_launch},
      {"--use_volta32", submitit_launch},
      {"--comment", submitit_launch},
      {"--world_size", from_launcher},
      {"--distributed", from_launcher},
      {"--dist_url", "comes from the launcher here (MASTER_ADDR and MASTER_PORT, or Slurm's)"},
      {"--start_epoch", "is read from the checkpoint --resume continues"},
      {"--teacher-model", distillation},
      {"--distillation-type", distillation},
      {"--distillation-alpha", distillation},
      {"--distillation-tau", distillation},
      {"--teacher-path", distillation},
      {"--cosub", "belongs to the co-training paper (cosub), which deit does not train"},
      {"--attn-only",
       "(fine-tuning the attention layers alone) belongs to another paper; deit fine-tunes every "
       "layer"},
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
