// The MPI backend: CPU tensors, reduced with MPI_Allreduce (MPI_Reduce_scatter, MPI_Allgatherv
// for the runs of sharded state) on a private duplicate of MPI_COMM_WORLD whose errors come back
// as return codes (MPI_ERRORS_RETURN) and leave as exceptions.
//
// Each collective, and the duplicate's making, is started as its non-blocking form
// (MPI_Iallreduce, MPI_Comm_idup, ...) and waited for with MPI_Test against the rendezvous's
// comm_timeout: a peer that hangs (stopped, swapping, stuck on a dead file system) never ends the
// job through the launcher as a dead one does, and a blocking call would wait for it for ever.
// Past the deadline this rank throws, skipping MPI's teardown (mpi_record_failure), and its
// non-zero exit makes mpirun end the job, the hung rank too. MPI_Finalize at exit, which waits for
// every rank, comes after a barrier under the same deadline; MPI_Init, which waits for them too
// and cannot be polled, runs under a watchdog (engine/watchdog.h).
#include "engine/comm_check.h"

#if DEIT_HAVE_MPI
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "engine/watchdog.h"
#include "kernels/elementwise.h"

namespace deit::detail {

namespace {

// Polls `request` until it completes (true) or `timeout` has passed (false). It spins as a
// blocking MPI call does (Open MPI moves a message along only inside its calls, so a sleep
// between polls would slow a large all-reduce), yielding the core after the first millisecond
// to whatever else is runnable: ranks may share cores with each other and the data loader.
bool completes_within(MPI_Request& request, std::chrono::seconds timeout) {
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  for (int flag = 0;;) {
    DEIT_MPI_CHECK(MPI_Test(&request, &flag, MPI_STATUS_IGNORE));
    if (flag) return true;
    const Clock::duration waited = Clock::now() - start;
    if (waited > timeout) return false;
    if (waited > std::chrono::milliseconds(1)) std::this_thread::yield();
  }
}

std::atomic<bool> mpi_failed{false};

// The longest a rank waits for its peers, in seconds: the last rendezvous's comm_timeout.
std::atomic<int64_t> peer_wait_seconds{600};

// MPI_Finalize waits for every rank, and a peer that hangs after the last collective (stopped,
// stuck writing a checkpoint on a dead file system) would hold this rank there for ever. A barrier
// under the deadline first: once every rank has reached it, the teardown has nobody to wait for.
void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized || mpi_failed) return;
  const std::chrono::seconds timeout(peer_wait_seconds.load());
  MPI_Request request;
  if (MPI_Ibarrier(MPI_COMM_WORLD, &request) == MPI_SUCCESS && completes_within(request, timeout)) {
    MPI_Finalize();
    return;
  }
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  std::fflush(stdout);
  std::fprintf(
      stderr, "deit: error: %s\n",
      lost_peers_message(rank, size, "the other ranks did not reach the end in time", timeout)
          .c_str());
  // A failed exit, so that the launcher ends the job and the hung peer with it.
  std::_Exit(EXIT_FAILURE);
}

}  // namespace

void mpi_record_failure() { mpi_failed = true; }

void mpi_wait(MPI_Request& request, const char* call, int rank, int world_size,
              std::chrono::seconds timeout) {
  if (completes_within(request, timeout)) return;
  mpi_record_failure();
  throw std::runtime_error(
      lost_peers_message(rank, world_size, std::string(call) + " did not finish in time", timeout));
}

void mpi_call_failed(int code, const char* call, const char* file, int line) {
  mpi_record_failure();
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  const std::string what = MPI_Error_string(code, text, &length) == MPI_SUCCESS
                               ? std::string(text, length)
                               : "MPI error " + std::to_string(code);
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + call +
                           " failed: " + what + " (has another rank died or lost its connection?)");
}

void mpi_init(const Rendezvous& rendezvous) {
  static std::once_flag once;
  std::call_once(once, [&] {
    int initialized = 0;
    DEIT_MPI_CHECK(MPI_Initialized(&initialized));
    if (initialized) return;  // the host program owns MPI's lifetime
    // Only the thread that made the communicator calls MPI; the data loader's threads never do.
    // Open MPI's MPI_Init waits for every rank to start (PMIx's fence), and nothing can interrupt
    // it: a peer that hangs before it would hold this rank there for ever.
    int provided = 0;
    exit_unless_returns_within(
        rendezvous.comm_timeout,
        lost_peers_message(rendezvous.rank, rendezvous.world_size,
                           "MPI_Init_thread did not return in time", rendezvous.comm_timeout),
        [&] { DEIT_MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided)); });
    std::atexit(finalize_at_exit);
  });
  peer_wait_seconds = rendezvous.comm_timeout.count();
  int rank = 0, size = 0;
  DEIT_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  DEIT_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
  if (rank != rendezvous.rank || size != rendezvous.world_size)
    throw std::runtime_error(
        "MPI sees rank " + std::to_string(rank) + " of " + std::to_string(size) +
        " where the launch (" + rendezvous.describe() + ") says rank " +
        std::to_string(rendezvous.rank) + " of " + std::to_string(rendezvous.world_size) +
        ": MPI connects only processes started by one MPI launch (mpirun, or srun --mpi=pmix)");
}

namespace {

MPI_Datatype mpi_type(DType dtype) { return dtype == DType::f64 ? MPI_DOUBLE : MPI_FLOAT; }

// MPI counts elements in an int.
int mpi_count(const Tensor& flat) {
  if (flat.numel() > INT_MAX)
    throw std::invalid_argument("MPI collective on " + flat.describe() + ": over " +
                                std::to_string(INT_MAX) + " elements");
  return static_cast<int>(flat.numel());
}

// The ranks' runs of a checked flat buffer (mpi_count bounds their sum): counts and offsets.
struct Runs {
  std::vector<int> counts;
  std::vector<int> offsets;
};
Runs mpi_runs(const std::vector<int64_t>& counts) {
  Runs runs;
  int64_t offset = 0;
  for (int64_t n : counts) {
    runs.counts.push_back(static_cast<int>(n));
    runs.offsets.push_back(static_cast<int>(offset));
    offset += n;
  }
  return runs;
}

// flat *= 1 / ranks, for a mean made as a sum.
void divide_by(int ranks, const Tensor& flat) {
  const int64_t n = flat.numel();
  if (flat.dtype() == DType::f64)
    kernels::scale_cpu(flat.data<double>(), 1.0 / ranks, flat.data<double>(), n);
  else
    kernels::scale_cpu(flat.data<float>(), 1.0f / ranks, flat.data<float>(), n);
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(Device device, const Rendezvous& rendezvous)
      : Communicator(device, rendezvous.rank, rendezvous.world_size, rendezvous.local_rank),
        timeout_(rendezvous.comm_timeout) {
    if (!device.is_cpu())
      throw std::invalid_argument("the MPI communicator moves CPU tensors, not " + device.str());
    mpi_init(rendezvous);
    // A duplicate, so the error handler set here and the collectives issued here stay apart from
    // anything else in the process that uses MPI_COMM_WORLD.
    MPI_Request request;
    DEIT_MPI_CHECK(MPI_Comm_idup(MPI_COMM_WORLD, &comm_, &request));
    wait_for(request, "MPI_Comm_idup");
    DEIT_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  }

  ~MpiCommunicator() override {
    // Leaving by an exception: the other ranks may sit in a collective this rank will never join,
    // and every orderly MPI teardown would wait for them. Exit without one; mpirun ends the job.
    if (std::uncaught_exceptions() > 0) {
      mpi_record_failure();
      return;
    }
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
  }

  const char* backend() const override { return "mpi"; }

  void barrier() override {
    MPI_Request request;
    DEIT_MPI_CHECK(MPI_Ibarrier(comm_, &request));
    wait_for(request, "MPI_Ibarrier");
  }

 protected:
  void all_reduce_flat(const Tensor& flat, ReduceOp op) override {
    MPI_Request request;
    DEIT_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, flat.raw_data(), mpi_count(flat),
                                  mpi_type(flat.dtype()), MPI_SUM, comm_, &request));
    wait_for(request, "MPI_Iallreduce");
    if (op == ReduceOp::mean) divide_by(world_size(), flat);
  }

  // Into a buffer of this rank's run, then copied to where the run lies: MPI_IN_PLACE would leave
  // the result at the start of `flat` rather than there.
  void reduce_scatter_flat(const Tensor& flat, const std::vector<int64_t>& counts,
                           ReduceOp op) override {
    mpi_count(flat);
    const Runs runs = mpi_runs(counts);
    const int mine = runs.counts[rank()];
    const Tensor result = Tensor::empty({mine}, flat.dtype(), device());
    MPI_Request request;
    DEIT_MPI_CHECK(MPI_Ireduce_scatter(flat.raw_data(), result.raw_data(), runs.counts.data(),
                                       mpi_type(flat.dtype()), MPI_SUM, comm_, &request));
    wait_for(request, "MPI_Ireduce_scatter");
    if (op == ReduceOp::mean) divide_by(world_size(), result);
    flat.slice(runs.offsets[rank()], runs.offsets[rank()] + mine).copy_from(result);
  }

  void all_gather_flat(const Tensor& flat, const std::vector<int64_t>& counts) override {
    mpi_count(flat);
    const Runs runs = mpi_runs(counts);
    MPI_Request request;
    DEIT_MPI_CHECK(MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, flat.raw_data(),
                                   runs.counts.data(), runs.offsets.data(), mpi_type(flat.dtype()),
                                   comm_, &request));
    wait_for(request, "MPI_Iallgatherv");
  }

  void broadcast_flat(const Tensor& flat, int root) override {
    MPI_Request request;
    DEIT_MPI_CHECK(MPI_Ibcast(flat.raw_data(), mpi_count(flat), mpi_type(flat.dtype()), root, comm_,
                              &request));
    wait_for(request, "MPI_Ibcast");
  }

 private:
  void wait_for(MPI_Request& request, const char* call) {
    mpi_wait(request, call, rank(), world_size(), timeout_);
  }

  std::chrono::seconds timeout_;
  MPI_Comm comm_ = MPI_COMM_NULL;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(Device device, const Rendezvous& rendezvous) {
  return std::make_unique<MpiCommunicator>(device, rendezvous);
}

}  // namespace deit::detail
#endif
