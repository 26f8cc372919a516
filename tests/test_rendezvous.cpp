// Rendezvous: reading each launcher's variables, the errors for launches that make no sense, Slurm
// node lists, and the TCP exchange that carries NCCL's unique id (run here over loopback, one
// thread per rank).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <future>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "engine/communicator.h"
#include "engine/openmp_environment.h"
#include "engine/rendezvous.h"
#include "tests/captured_stderr.h"
#include "tests/scoped_environment.h"
#include "tests/test_data_helpers.h"

using namespace deit;
using namespace std::chrono_literals;

TEST_CASE("no launcher variables: a single process", "[rendezvous]") {
  const Rendezvous r = parse_rendezvous({{"HOME", "/root"}, {"MASTER_ADDR", "ignored"}});
  CHECK(r.launcher == Launcher::none);
  CHECK(r.rank == 0);
  CHECK(r.world_size == 1);
  CHECK(r.local_rank == 0);
  CHECK(r.describe() == "single process");
}

TEST_CASE("processes a launcher leaves unbound on one machine share its cores", "[rendezvous]") {
  const Environment two_by_mpirun = {{"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}};
  CHECK(openmp_threads_per_process(two_by_mpirun, 16, 16) == 8);
  CHECK(openmp_threads_per_process({{"LOCAL_WORLD_SIZE", "4"}}, 16, 16) == 4);
  CHECK(openmp_threads_per_process({{"LOCAL_WORLD_SIZE", "3"}}, 2, 2) == 1);  // at least one
  // OpenMP's default is right: the user chose, the launcher bound each process, or it is alone.
  Environment chosen = two_by_mpirun;
  chosen["OMP_NUM_THREADS"] = "16";
  CHECK_FALSE(openmp_threads_per_process(chosen, 16, 16));
  CHECK_FALSE(openmp_threads_per_process(two_by_mpirun, 1, 16));
  CHECK_FALSE(openmp_threads_per_process({{"OMPI_COMM_WORLD_LOCAL_SIZE", "1"}}, 16, 16));
  CHECK_FALSE(openmp_threads_per_process({}, 16, 16));
  CHECK_FALSE(openmp_threads_per_process({{"LOCAL_WORLD_SIZE", "many"}}, 16, 16));
  // Nor does a count that is no count of processes, which the rendezvous refuses later.
  CHECK_FALSE(openmp_threads_per_process({{"LOCAL_WORLD_SIZE", "-2"}}, 16, 16));
  CHECK_FALSE(openmp_threads_per_process(
      {{"OMPI_COMM_WORLD_LOCAL_SIZE", "many"}, {"LOCAL_WORLD_SIZE", "2"}}, 16, 16));
  // mpirun's count wins over torchrun's, as its variables win in the rendezvous.
  CHECK(openmp_threads_per_process({{"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}, {"LOCAL_WORLD_SIZE", "4"}},
                                   16, 16) == 8);
}

TEST_CASE("this process's thread count reads its own environment and CPU affinity",
          "[rendezvous]") {
  const test::ScopedEnvironment unchosen("OMP_NUM_THREADS", std::nullopt);
  const test::ScopedEnvironment two_by_mpirun("OMPI_COMM_WORLD_LOCAL_SIZE", "2");
  cpu_set_t all;
  REQUIRE(sched_getaffinity(0, sizeof(all), &all) == 0);
  const int online = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  if (CPU_COUNT(&all) == online)  // unbound: its share of the machine
    CHECK(openmp_threads_for_this_process() == std::max(1, online / 2));
  // Bound to one CPU (the affinity is this thread's own, restored below): OpenMP's default.
  cpu_set_t one;
  CPU_ZERO(&one);
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &all)) {
      CPU_SET(cpu, &one);
      break;
    }
  }
  REQUIRE(sched_setaffinity(0, sizeof(one), &one) == 0);
  const std::optional<int> bound = openmp_threads_for_this_process();
  REQUIRE(sched_setaffinity(0, sizeof(all), &all) == 0);
  if (online > 1) CHECK_FALSE(bound);
}

TEST_CASE("DEIT_COMM_TIMEOUT sets how long a rank waits for lost peers", "[rendezvous]") {
  CHECK(parse_rendezvous({}).comm_timeout == 600s);
  CHECK(parse_rendezvous({{"DEIT_COMM_TIMEOUT", "45"}}).comm_timeout == 45s);
  const Rendezvous r = parse_rendezvous(
      {{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"DEIT_COMM_TIMEOUT", "7"}});
  CHECK(r.comm_timeout == 7s);
  for (const char* bad : {"0", "-5", "1.5", "ten", "", "99999999999"}) {
    INFO("DEIT_COMM_TIMEOUT=" << bad);
    CHECK_THROWS_WITH(parse_rendezvous({{"DEIT_COMM_TIMEOUT", bad}}),
                      Catch::Contains("DEIT_COMM_TIMEOUT"));
  }
}

TEST_CASE("DEIT_NCCL_ONE_RANK sends a one-process CUDA run through NCCL", "[rendezvous]") {
  CHECK_FALSE(parse_rendezvous({}).nccl_one_rank);
  CHECK(parse_rendezvous({{"DEIT_NCCL_ONE_RANK", "1"}}).nccl_one_rank);
  CHECK_FALSE(parse_rendezvous({{"DEIT_NCCL_ONE_RANK", "0"}}).nccl_one_rank);
  for (const char* bad : {"", "yes", "2", "true"}) {
    INFO("DEIT_NCCL_ONE_RANK=" << bad);
    CHECK_THROWS_WITH(parse_rendezvous({{"DEIT_NCCL_ONE_RANK", bad}}),
                      Catch::Contains("DEIT_NCCL_ONE_RANK"));
  }
  // The CPU has no NCCL: one process stays on its own there.
  Rendezvous alone;
  alone.nccl_one_rank = true;
  CHECK(std::string(make_communicator(Device::cpu(), alone)->backend()) == "single");
}

TEST_CASE("mpirun: Open MPI's variables", "[rendezvous]") {
  const Rendezvous r = parse_rendezvous({{"OMPI_COMM_WORLD_RANK", "5"},
                                         {"OMPI_COMM_WORLD_SIZE", "8"},
                                         {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}});
  CHECK(r.launcher == Launcher::mpirun);
  CHECK(r.rank == 5);
  CHECK(r.world_size == 8);
  CHECK(r.local_rank == 1);
  CHECK(r.master_addr.empty());  // the NCCL id goes over MPI
  CHECK(r.describe() == "mpirun: rank 5 of 8, local rank 1");
}

TEST_CASE("torchrun: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT", "[rendezvous]") {
  Environment env{{"RANK", "3"},
                  {"WORLD_SIZE", "16"},
                  {"LOCAL_RANK", "3"},
                  {"MASTER_ADDR", "node0"},
                  {"MASTER_PORT", "29500"}};
  const Rendezvous r = parse_rendezvous(env);
  CHECK(r.launcher == Launcher::torchrun);
  CHECK(r.rank == 3);
  CHECK(r.world_size == 16);
  CHECK(r.local_rank == 3);
  CHECK(r.master_addr == "node0");
  CHECK(r.master_port == 29500);
  CHECK(r.describe() == "torchrun: rank 3 of 16, local rank 3, rank 0 at node0:29500");

  SECTION("a launcher of one process per machine may leave LOCAL_RANK out") {
    env.erase("LOCAL_RANK");
    CHECK(parse_rendezvous(env).local_rank == 0);
  }
  SECTION("MASTER_ADDR and MASTER_PORT are needed with more than one rank") {
    env.erase("MASTER_ADDR");
    CHECK_THROWS_WITH(parse_rendezvous(env), Catch::Contains("MASTER_ADDR and MASTER_PORT"));
    env["MASTER_ADDR"] = "node0";
    env.erase("MASTER_PORT");
    CHECK_THROWS_WITH(parse_rendezvous(env), Catch::Contains("MASTER_ADDR and MASTER_PORT"));
  }
  SECTION("but not with one") {
    const Rendezvous one = parse_rendezvous({{"RANK", "0"}, {"WORLD_SIZE", "1"}});
    CHECK(one.launcher == Launcher::torchrun);
    CHECK(one.world_size == 1);
  }
  SECTION("torchrun's agent holds MASTER_PORT for its own store: rank 0 takes the next port") {
    env["TORCHELASTIC_USE_AGENT_STORE"] = "True";
    CHECK(parse_rendezvous(env).master_port == 29501);
    env["MASTER_PORT"] = "65535";
    CHECK_THROWS_WITH(parse_rendezvous(env), Catch::Contains("no port above"));
    env["TORCHELASTIC_USE_AGENT_STORE"] = "False";
    CHECK(parse_rendezvous(env).master_port == 65535);
  }
  SECTION("MASTER_PORT must be a TCP port") {
    env["MASTER_PORT"] = "70000";
    CHECK_THROWS_WITH(parse_rendezvous(env), Catch::Contains("MASTER_PORT=70000"));
    env["MASTER_PORT"] = "0";
    CHECK_THROWS_WITH(parse_rendezvous(env), Catch::Contains("MASTER_PORT=0"));
    env["MASTER_PORT"] = "65536";  // one past the last port
    CHECK_THROWS_WITH(parse_rendezvous(env), Catch::Contains("MASTER_PORT=65536"));
  }
}

TEST_CASE("Slurm: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and rank 0's node", "[rendezvous]") {
  Environment env{{"SLURM_PROCID", "9"},      {"SLURM_NTASKS", "32"},
                  {"SLURM_STEP_ID", "0"},     {"SLURM_LOCALID", "1"},
                  {"SLURM_JOB_ID", "123456"}, {"SLURM_JOB_NODELIST", "gpu[07-09,12],cpu3"}};
  Rendezvous r = parse_rendezvous(env);
  CHECK(r.launcher == Launcher::slurm);
  CHECK(r.rank == 9);
  CHECK(r.world_size == 32);
  CHECK(r.local_rank == 1);
  CHECK(r.master_addr == "gpu07");
  CHECK(r.master_port == 20000 + 123456 % 10000);

  SECTION("outside srun (the shell of salloc or sbatch) deit runs alone") {
    env.erase("SLURM_STEP_ID");
    CHECK(parse_rendezvous(env).launcher == Launcher::none);
  }
  SECTION("the older SLURM_NODELIST serves where SLURM_JOB_NODELIST is not set") {
    env.erase("SLURM_JOB_NODELIST");
    env["SLURM_NODELIST"] = "cpu[3-4]";
    CHECK(parse_rendezvous(env).master_addr == "cpu3");
  }
  SECTION("the step's node list comes before the job's") {
    env["SLURM_STEP_NODELIST"] = "gpu[09-12]";
    CHECK(parse_rendezvous(env).master_addr == "gpu09");
  }
  SECTION("MASTER_ADDR and MASTER_PORT override") {
    env["MASTER_ADDR"] = "10.0.0.1";
    env["MASTER_PORT"] = "29400";
    r = parse_rendezvous(env);
    CHECK(r.master_addr == "10.0.0.1");
    CHECK(r.master_port == 29400);
  }
  SECTION("no node list and no MASTER_ADDR") {
    env.erase("SLURM_JOB_NODELIST");
    CHECK_THROWS_WITH(parse_rendezvous(env), Catch::Contains("MASTER_ADDR"));
  }
  SECTION("no job id and no MASTER_PORT") {
    env.erase("SLURM_JOB_ID");
    CHECK_THROWS_WITH(parse_rendezvous(env), Catch::Contains("MASTER_PORT"));
  }
}

TEST_CASE("mpirun and torchrun started inside a Slurm allocation describe the job",
          "[rendezvous]") {
  const Environment slurm{{"SLURM_PROCID", "0"},  {"SLURM_NTASKS", "2"},
                          {"SLURM_LOCALID", "0"}, {"SLURM_STEP_ID", "0"},
                          {"SLURM_JOB_ID", "7"},  {"SLURM_JOB_NODELIST", "n1"}};
  Environment env = slurm;
  env.insert({{"OMPI_COMM_WORLD_RANK", "6"}, {"OMPI_COMM_WORLD_SIZE", "16"}});
  CHECK(parse_rendezvous(env).launcher == Launcher::mpirun);
  CHECK(parse_rendezvous(env).rank == 6);

  env = slurm;
  env.insert(
      {{"RANK", "11"}, {"WORLD_SIZE", "16"}, {"MASTER_ADDR", "n1"}, {"MASTER_PORT", "29500"}});
  CHECK(parse_rendezvous(env).launcher == Launcher::torchrun);
  CHECK(parse_rendezvous(env).rank == 11);

  // Where both mpirun's and torchrun's variables are present, mpirun's win (the header's order).
  env.insert({{"OMPI_COMM_WORLD_RANK", "6"}, {"OMPI_COMM_WORLD_SIZE", "16"}});
  CHECK(parse_rendezvous(env).launcher == Launcher::mpirun);
  CHECK(parse_rendezvous(env).rank == 6);
}

TEST_CASE("inconsistent launcher variables are refused, naming the variable", "[rendezvous]") {
  CHECK_THROWS_WITH(parse_rendezvous({{"OMPI_COMM_WORLD_RANK", "1"}}),
                    Catch::Contains("OMPI_COMM_WORLD_SIZE is not set"));
  CHECK_THROWS_WITH(parse_rendezvous({{"WORLD_SIZE", "4"}}), Catch::Contains("RANK is not set"));
  CHECK_THROWS_WITH(parse_rendezvous({{"SLURM_PROCID", "0"}, {"SLURM_STEP_ID", "0"}}),
                    Catch::Contains("SLURM_NTASKS is not set"));
  CHECK_THROWS_WITH(
      parse_rendezvous({{"OMPI_COMM_WORLD_RANK", "2"}, {"OMPI_COMM_WORLD_SIZE", "2"}}),
      Catch::Contains("OMPI_COMM_WORLD_RANK=2 is not below OMPI_COMM_WORLD_SIZE=2"));
  CHECK_THROWS_WITH(parse_rendezvous({{"RANK", "0"},
                                      {"WORLD_SIZE", "2"},
                                      {"LOCAL_RANK", "2"},
                                      {"MASTER_ADDR", "a"},
                                      {"MASTER_PORT", "1"}}),
                    Catch::Contains("LOCAL_RANK=2 is not below WORLD_SIZE=2"));
  CHECK_THROWS_WITH(parse_rendezvous({{"RANK", "0"}, {"WORLD_SIZE", "0"}}),
                    Catch::Contains("WORLD_SIZE=0: the world needs a rank"));
  // 2147483648 has ten digits and does not fit an int.
  for (const char* bad : {"", "-1", "1.5", "two", "12345678901", "2147483648"})
    CHECK_THROWS_WITH(
        parse_rendezvous({{"RANK", bad}, {"WORLD_SIZE", "2"}}),
        Catch::Contains(std::string("RANK='") + bad + "' is not a non-negative integer"));
}

TEST_CASE("the first host of a Slurm node list", "[rendezvous]") {
  CHECK(first_slurm_host("node1") == "node1");
  CHECK(first_slurm_host("node1,node2") == "node1");
  CHECK(first_slurm_host("gpu[007-010]") == "gpu007");
  CHECK(first_slurm_host("gpu[3,5-6],cpu[1-2]") == "gpu3");
  CHECK(first_slurm_host("rack[2-3]-n[10-11]") == "rack2-n10");
  CHECK(first_slurm_host("n[4]-ib") == "n4-ib");
  CHECK_THROWS_WITH(first_slurm_host("gpu[1-2"), Catch::Contains("unclosed"));
  CHECK_THROWS_WITH(first_slurm_host(""), Catch::Contains("names no host"));
}

namespace {

// A port nothing listens on right now (the kernel's pick for an ephemeral bind).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  socklen_t len = sizeof(addr);
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  ::close(fd);
  return ntohs(addr.sin_port);
}

Rendezvous rank_of(int rank, int world_size, int port) {
  Rendezvous r;
  r.launcher = Launcher::torchrun;
  r.rank = rank;
  r.world_size = world_size;
  r.master_addr = "127.0.0.1";
  r.master_port = port;
  return r;
}

}  // namespace

TEST_CASE("the TCP exchange hands rank 0's bytes to every rank", "[rendezvous]") {
  const int port = free_port();
  const std::vector<uint8_t> id = {1, 2, 3, 0, 255, 128, 7};
  constexpr int kWorld = 4;
  // Ranks 1..3 start first and retry until rank 0 listens.
  std::vector<std::future<std::vector<uint8_t>>> others;
  for (int rank = 1; rank < kWorld; ++rank)
    others.push_back(std::async(std::launch::async, [=] {
      return tcp_broadcast_from_rank0(rank_of(rank, kWorld, port), {}, 20s);
    }));
  std::this_thread::sleep_for(100ms);
  CHECK(tcp_broadcast_from_rank0(rank_of(0, kWorld, port), id, 20s) == id);
  for (auto& f : others) CHECK(f.get() == id);
}

TEST_CASE("the TCP exchange refuses a rank of another job and times out clearly", "[rendezvous]") {
  const int port = free_port();
  const std::vector<uint8_t> id = {42};
  auto root = std::async(std::launch::async,
                         [=] { return tcp_broadcast_from_rank0(rank_of(0, 2, port), id, 20s); });
  // A rank of a 3-rank job that picked the same port is told so, and rank 0 keeps serving.
  CHECK_THROWS_WITH(tcp_broadcast_from_rank0(rank_of(1, 3, port), {}, 20s),
                    Catch::Contains("world size 2, not 3"));
  // One that claims a rank the job does not have is told that, not that it was served already.
  CHECK_THROWS_WITH(tcp_broadcast_from_rank0(rank_of(5, 2, port), {}, 20s),
                    Catch::Contains("rank 5 is out of range for world size 2"));
  CHECK(tcp_broadcast_from_rank0(rank_of(1, 2, port), {}, 20s) == id);
  CHECK(root.get() == id);

  // Nobody listens on a fresh port: a rank gives up at its deadline, naming where it looked.
  const int silent = free_port();
  CHECK_THROWS_WITH(
      tcp_broadcast_from_rank0(rank_of(1, 2, silent), {}, 300ms),
      Catch::Contains("could not reach rank 0 at 127.0.0.1:" + std::to_string(silent)));
  // And rank 0 waiting for a rank that never comes says which.
  CHECK_THROWS_WITH(tcp_broadcast_from_rank0(rank_of(0, 3, silent), id, 300ms),
                    Catch::Contains("for rank(s) 1, 2"));
}

TEST_CASE("a long wait of the TCP exchange says what it waits for", "[rendezvous]") {
  // Every note_every (30 s in deit), rather than silence until the deadline (10 minutes).
  const test::TempDir dir;
  const int silent = free_port();
  const std::string where = "127.0.0.1:" + std::to_string(silent);
  // Two seconds of waiting, a note each 300 ms: the number of notes and their seconds depend on
  // how promptly a busy machine wakes the rank, what they say does not.
  const std::string rank1 = test::stderr_of(dir.file("rank1.txt"), [&] {
    CHECK_THROWS(tcp_broadcast_from_rank0(rank_of(1, 2, silent), {}, 2s, 300ms));
  });
  CHECK_THAT(rank1, Catch::Contains("deit: rendezvous: rank 1 still cannot reach rank 0 at " +
                                    where + " (Connection refused) after ") &&
                        Catch::Contains(" s: is rank 0 started, and is 127.0.0.1 its host?; "
                                        "giving up in "));
  const std::string rank0 = test::stderr_of(dir.file("rank0.txt"), [&] {
    CHECK_THROWS(tcp_broadcast_from_rank0(rank_of(0, 3, silent), {7}, 2s, 300ms));
  });
  CHECK_THAT(rank0, Catch::Contains("deit: rendezvous: rank 0 is still waiting on port " +
                                    std::to_string(silent) + " for rank(s) 1, 2 after ") &&
                        Catch::Contains(" s: is each started, with MASTER_ADDR naming this host "
                                        "and MASTER_PORT " +
                                        std::to_string(silent) + "?; giving up in "));
  // At most six notes, one each 300 ms: not one per retry (every 200 ms).
  size_t notes = 0;
  for (size_t at = rank1.find("rendezvous:"); at != std::string::npos;
       at = rank1.find("rendezvous:", at + 1))
    ++notes;
  CHECK(notes >= 1);
  CHECK(notes <= 6);
  // None where the wait is short.
  const std::string quick = test::stderr_of(dir.file("quick.txt"), [&] {
    CHECK_THROWS(tcp_broadcast_from_rank0(rank_of(1, 2, silent), {}, 200ms, 300ms));
  });
  CHECK(quick.empty());
}

TEST_CASE("the TCP exchange needs to know where rank 0 is", "[rendezvous]") {
  Rendezvous r = rank_of(1, 2, 0);
  CHECK_THROWS_WITH(tcp_broadcast_from_rank0(r, {}, 1s), Catch::Contains("MASTER_PORT"));
  // A rank other than 0 needs rank 0's host too (rank 0 itself listens on every interface).
  r = rank_of(1, 2, free_port());
  r.master_addr.clear();
  CHECK_THROWS_AS(tcp_broadcast_from_rank0(r, {}, 1s), std::invalid_argument);
  const std::vector<uint8_t> id = {9};
  CHECK(tcp_broadcast_from_rank0(Rendezvous{}, id, 1s) == id);  // alone: nothing to send
}

TEST_CASE("the TCP exchange refuses arguments it cannot work with", "[rendezvous]") {
  // Checked before any connection is tried, so these fail at once rather than at the deadline.
  const Rendezvous root = rank_of(0, 2, free_port());
  CHECK_THROWS_AS(tcp_broadcast_from_rank0(root, {1}, 20s, 0ms), std::invalid_argument);
  const std::vector<uint8_t> huge(4u << 20);
  CHECK_THROWS_WITH(tcp_broadcast_from_rank0(root, huge, 20s), Catch::Contains("over the limit"));
}

TEST_CASE("the process's own launch: its rank or zero", "[rendezvous]") {
  if (std::getenv("OMPI_COMM_WORLD_RANK") || std::getenv("SLURM_STEP_ID")) {
    WARN("run by a launcher whose variables would win over the ones this case sets");
    return;
  }
  const test::ScopedEnvironment rank("RANK", "1");
  const test::ScopedEnvironment world("WORLD_SIZE", "2");
  const test::ScopedEnvironment addr("MASTER_ADDR", "127.0.0.1");
  const test::ScopedEnvironment port("MASTER_PORT", "29500");
  CHECK(process_environment().at("MASTER_ADDR") == "127.0.0.1");
  CHECK(detect_rendezvous().describe() ==
        "torchrun: rank 1 of 2, local rank 0, rank 0 at "
        "127.0.0.1:29500");
  CHECK(launch_rank_or_zero() == 1);
  // A launch that makes no sense is refused where it matters; here it is rank 0.
  const test::ScopedEnvironment bad_rank("RANK", "one");
  CHECK(launch_rank_or_zero() == 0);
}

namespace {

// A socket connected to 127.0.0.1:`port`, retrying while nothing listens there yet.
int connect_when_listening(int port) {
  for (int attempt = 0; attempt < 200; ++attempt) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) return fd;
    ::close(fd);
    std::this_thread::sleep_for(50ms);
  }
  FAIL("nothing listens on port " << port);
  return -1;
}

// Reads rank 0's answer on `fd`: its status word and text (the reason of a refusal).
std::pair<uint32_t, std::string> read_answer(int fd) {
  uint32_t header[3] = {};
  size_t got = 0;
  char* bytes = reinterpret_cast<char*>(header);
  for (ssize_t n; got < sizeof header && (n = ::recv(fd, bytes + got, sizeof header - got, 0)) > 0;)
    got += static_cast<size_t>(n);
  REQUIRE(got == sizeof header);
  std::string text(ntohl(header[2]), '\0');
  got = 0;
  for (ssize_t n; got < text.size() && (n = ::recv(fd, &text[got], text.size() - got, 0)) > 0;)
    got += static_cast<size_t>(n);
  return {ntohl(header[1]), text};
}

// Plays rank 0 of another protocol: accepts one connection on `port`, reads its hello and answers
// with `header` (three words, sent in network order).
std::future<void> fake_rank0(int port, std::vector<uint32_t> header) {
  const int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  const int one = 1;
  ::setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  REQUIRE(::listen(listener, 4) == 0);
  return std::async(std::launch::async, [listener, header] {
    const int peer = ::accept(listener, nullptr, nullptr);
    char hello[12];
    size_t got = 0;
    for (ssize_t n;
         got < sizeof hello && (n = ::recv(peer, hello + got, sizeof hello - got, 0)) > 0;)
      got += static_cast<size_t>(n);
    std::vector<uint32_t> wire;
    for (uint32_t word : header) wire.push_back(htonl(word));
    (void)!::send(peer, wire.data(), wire.size() * sizeof(uint32_t), MSG_NOSIGNAL);
    std::this_thread::sleep_for(500ms);  // the rank reads what it was sent before the close
    ::close(peer);
    ::close(listener);
  });
}

constexpr uint32_t kDeitMagic = 0x44454954;  // "DEIT", the first word of every message

}  // namespace

TEST_CASE("rank 0 refuses a second connection for a rank it has served", "[rendezvous]") {
  const int port = free_port();
  const std::vector<uint8_t> id = {3, 1, 4};
  auto root = std::async(std::launch::async,
                         [=] { return tcp_broadcast_from_rank0(rank_of(0, 3, port), id, 20s); });
  CHECK(tcp_broadcast_from_rank0(rank_of(1, 3, port), {}, 20s) == id);
  CHECK_THROWS_WITH(tcp_broadcast_from_rank0(rank_of(1, 3, port), {}, 5s),
                    Catch::Contains("rank 1 has already been served"));
  // The rank just past the last is out of range too.
  CHECK_THROWS_WITH(tcp_broadcast_from_rank0(rank_of(3, 3, port), {}, 5s),
                    Catch::Contains("rank 3 is out of range for world size 3"));
  CHECK(tcp_broadcast_from_rank0(rank_of(2, 3, port), {}, 5s) == id);
  CHECK(root.get() == id);
}

TEST_CASE("rank 0 turns away connections that are not deit ranks and serves its own",
          "[rendezvous]") {
  const int port = free_port();
  const std::vector<uint8_t> id = {8, 8};
  auto root = std::async(std::launch::async,
                         [=] { return tcp_broadcast_from_rank0(rank_of(0, 2, port), id, 20s); });
  // A client that connects and leaves without a word (a port scan).
  ::close(connect_when_listening(port));
  // One that speaks another protocol is told so.
  const int stranger = connect_when_listening(port);
  const char request[12] = {'G', 'E', 'T', ' ', '/', ' ', 'H', 'T', 'T', 'P', '/', '1'};
  REQUIRE(::send(stranger, request, sizeof request, MSG_NOSIGNAL) == sizeof request);
  const auto [status, reason] = read_answer(stranger);
  ::close(stranger);
  CHECK(status == 1);  // refused
  CHECK(reason == "not a deit rendezvous");
  // Neither kept rank 0 from serving the job's rank.
  CHECK(tcp_broadcast_from_rank0(rank_of(1, 2, port), {}, 20s) == id);
  CHECK(root.get() == id);
}

TEST_CASE("a rank refuses an answer that is not from a deit rank 0", "[rendezvous]") {
  SECTION("another protocol") {
    const int port = free_port();
    auto server = fake_rank0(port, {0x48545450, 0, 4});  // "HTTP"
    CHECK_THROWS_WITH(
        tcp_broadcast_from_rank0(rank_of(1, 2, port), {}, 20s),
        Catch::Contains("127.0.0.1:" + std::to_string(port) + " is not a deit rank 0"));
    server.get();
  }
  SECTION("a size no rank 0 sends") {
    const int port = free_port();
    // 64 MiB: far more than any payload rank 0 may send (an NCCL id is 128 bytes).
    auto server = fake_rank0(port, {kDeitMagic, 0, 64u << 20});
    CHECK_THROWS_WITH(tcp_broadcast_from_rank0(rank_of(1, 2, port), {}, 20s),
                      Catch::Contains("is not a deit rank 0"));
    server.get();
  }
}
