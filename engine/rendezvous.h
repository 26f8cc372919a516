// How this process was launched, and where it stands in the job: its rank, the world size, its rank
// on its node (which picks the GPU), and where rank 0 can be reached for the TCP exchange of the
// NCCL unique id. Read from the launcher's environment variables:
//   mpirun (Open MPI)  OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK
//   torchrun           RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; where torchrun's
//                      agent already serves its store on MASTER_PORT (it sets
//                      TORCHELASTIC_USE_AGENT_STORE=True), rank 0 listens on MASTER_PORT + 1
//   Slurm (srun)       SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, when srun started the process
//                      (SLURM_STEP_ID is set; in the shell of salloc or sbatch they describe the
//                      allocation). Rank 0's host is MASTER_ADDR, else the first node of the step's
//                      (else the job's) node list; its port MASTER_PORT, else one from SLURM_JOB_ID
// The first of these that is present wins, in this order: mpirun and torchrun are often started
// inside a Slurm allocation, and then their own variables describe the job, Slurm's only the
// allocation. With none present the process runs alone. Whatever the launcher, DEIT_COMM_TIMEOUT
// (seconds, default 600 as PyTorch's NCCL default) is how long a rank waits for queued
// collectives before it calls its peers lost (engine/communicator.h, "Failures").
#pragma once
#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace deit {

enum class Launcher { none, mpirun, torchrun, slurm };
const char* launcher_name(Launcher launcher);

struct Rendezvous {
  Launcher launcher = Launcher::none;
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  // Rank 0's host and port for the TCP exchange; empty / 0 where the launcher gives none (mpirun,
  // which exchanges over MPI; any launch of world size 1).
  std::string master_addr;
  int master_port = 0;
  std::chrono::seconds comm_timeout{600};
  // DEIT_NCCL_ONE_RANK=1: a CUDA run of one process goes through NCCL anyway (each collective a
  // copy on one rank) rather than skipping its collectives, so that the communication path runs,
  // and is timed, on a machine with one GPU.
  bool nccl_one_rank = false;

  std::string describe()
      const;  // e.g. "torchrun: rank 1 of 8, local rank 1, rank 0 at node0:29500"
};

using Environment = std::map<std::string, std::string>;

// Pure: reads only `env`. Throws std::invalid_argument naming the variable for a launch it cannot
// make sense of: half a set of variables, a value that is not a number, rank >= world size, a
// multi-process torchrun or Slurm launch that does not say where rank 0 is.
Rendezvous parse_rendezvous(const Environment& env);

Environment process_environment();
// parse_rendezvous(process_environment()).
Rendezvous detect_rendezvous();
// This process's rank in the launch its environment describes; 0 where it describes none it can
// make sense of (the launch itself then refuses it, where it matters): who of several processes
// says what only one should.
int launch_rank_or_zero();

// The first host of a Slurm node list: "gpu[07-09,12],cpu3" -> "gpu07".
std::string first_slurm_host(const std::string& nodelist);

// Rank 0 sends `payload` to every other rank over TCP; every rank returns it. Rank 0 listens on
// rendezvous.master_port (all IPv4 interfaces); the others connect to master_addr:master_port,
// retrying while rank 0 is not up yet. Each connecting rank says its rank and world size, so a
// stray process or a second job on the same port is refused with a clear error rather than
// handed the payload. Throws std::runtime_error when `timeout` passes before every rank is served.
// A wait longer than `note_every` is told on stderr, each `note_every`: what the rank waits for,
// what to check, and when it gives up.
std::vector<uint8_t> tcp_broadcast_from_rank0(
    const Rendezvous& rendezvous, const std::vector<uint8_t>& payload,
    std::chrono::milliseconds timeout,
    std::chrono::milliseconds note_every = std::chrono::seconds(30));

}  // namespace deit
