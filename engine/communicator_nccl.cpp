// The NCCL backend: CUDA tensors, reduced on the device's compute stream (engine/stream.h), the
// stream every engine kernel runs on, so a collective needs no event or synchronisation to see its
// inputs final or to have its outputs read after it. NCCL's unique id travels from rank 0 to the
// others over MPI when mpirun launched the job (and MPI is built in), else over TCP to rank 0 at
// MASTER_ADDR:MASTER_PORT (engine/rendezvous.h).
//
// NCCL reports a dead peer by never completing: a collective waits on the GPU. The launcher is
// what ends the other ranks when one exits abnormally (engine/communicator.h, "Failures").
#include "engine/comm_check.h"

#if DEIT_HAVE_NCCL
#include <chrono>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/stream.h"

// ncclAvg, the averaging reduction, arrived in NCCL 2.10.
#if NCCL_VERSION_CODE < NCCL_VERSION(2, 10, 0)
#error "deit needs NCCL 2.10 or newer"
#endif

namespace deit::detail {

namespace {

// Ranks of a multi-node job may start minutes apart (a node pulling its container, a busy file
// system); the first to arrive waits this long for the others.
constexpr std::chrono::minutes kUniqueIdTimeout{10};

ncclDataType_t nccl_type(DType dtype) { return dtype == DType::f64 ? ncclFloat64 : ncclFloat32; }

// Rank 0 makes the id; every rank returns it.
ncclUniqueId exchange_unique_id(const Rendezvous& rendezvous) {
  ncclUniqueId id{};
  if (rendezvous.rank == 0) DEIT_NCCL_CHECK(ncclGetUniqueId(&id));
#if DEIT_HAVE_MPI
  if (rendezvous.launcher == Launcher::mpirun) {
    mpi_init(rendezvous);
    DEIT_MPI_CHECK(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD));
    return id;
  }
#endif
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(&id);
  const std::vector<uint8_t> received = tcp_broadcast_from_rank0(
      rendezvous, std::vector<uint8_t>(bytes, bytes + sizeof(id)), kUniqueIdTimeout);
  if (received.size() != sizeof(id))
    throw std::runtime_error("NCCL rendezvous: rank 0 sent " + std::to_string(received.size()) +
                             " bytes for a unique id of " + std::to_string(sizeof(id)));
  std::memcpy(&id, received.data(), sizeof(id));
  return id;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Device device, const Rendezvous& rendezvous)
      : Communicator(device, rendezvous.rank, rendezvous.world_size, rendezvous.local_rank) {
    if (!device.is_cuda())
      throw std::invalid_argument("the NCCL communicator moves CUDA tensors, not " + device.str());
    // NCCL binds a communicator to the device current at its creation.
    DEIT_CUDA_CHECK(cudaSetDevice(device.index));
    stream_ = compute_stream(device.index);
    const ncclUniqueId id = exchange_unique_id(rendezvous);
    DEIT_NCCL_CHECK(ncclCommInitRank(&comm_, world_size(), id, rank()));
  }

  ~NcclCommunicator() override {
    // Leaving by an exception: queued collectives may wait for ranks that will never join them,
    // and ncclCommDestroy would wait with them; ncclCommAbort does not. If MPI carried the id, it
    // must not be finalised either (see engine/comm_check.h).
    if (std::uncaught_exceptions() > 0) {
      ncclCommAbort(comm_);
#if DEIT_HAVE_MPI
      mpi_record_failure();
#endif
      return;
    }
    ncclCommDestroy(comm_);
  }

  const char* backend() const override { return "nccl"; }

  // NCCL has no barrier: a one-element all-reduce is one, once the stream has drained. Waiting
  // here is also when an asynchronous NCCL failure becomes visible.
  void barrier() override {
    all_reduce_flat(Tensor::zeros({1}, DType::f32, device()), ReduceOp::sum);
    DEIT_CUDA_CHECK(cudaStreamSynchronize(stream_));
    ncclResult_t async_error = ncclSuccess;
    DEIT_NCCL_CHECK(ncclCommGetAsyncError(comm_, &async_error));
    DEIT_NCCL_CHECK(async_error);
  }

 protected:
  void all_reduce_flat(const Tensor& flat, ReduceOp op) override {
    DEIT_NCCL_CHECK(ncclAllReduce(flat.raw_data(), flat.raw_data(),
                                  static_cast<size_t>(flat.numel()), nccl_type(flat.dtype()),
                                  op == ReduceOp::mean ? ncclAvg : ncclSum, comm_, stream_));
  }

  void broadcast_flat(const Tensor& flat, int root) override {
    DEIT_NCCL_CHECK(ncclBroadcast(flat.raw_data(), flat.raw_data(),
                                  static_cast<size_t>(flat.numel()), nccl_type(flat.dtype()), root,
                                  comm_, stream_));
  }

 private:
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(Device device, const Rendezvous& rendezvous) {
  return std::make_unique<NcclCommunicator>(device, rendezvous);
}

}  // namespace deit::detail
#endif
