#include "engine/rendezvous.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <thread>
#include <utility>

#include "engine/errno_text.h"

extern char** environ;

namespace deit {

const char* launcher_name(Launcher launcher) {
  switch (launcher) {
    case Launcher::none: return "single process";
    case Launcher::mpirun: return "mpirun";
    case Launcher::torchrun: return "torchrun";
    case Launcher::slurm: return "slurm";
  }
  return "?";
}

std::string Rendezvous::describe() const {
  std::string text = launcher_name(launcher);
  if (launcher == Launcher::none) return text;
  text += ": rank " + std::to_string(rank) + " of " + std::to_string(world_size) + ", local rank " +
          std::to_string(local_rank);
  if (!master_addr.empty())
    text += ", rank 0 at " + master_addr + ":" + std::to_string(master_port);
  return text;
}

namespace {

const std::string* find(const Environment& env, const char* name) {
  auto it = env.find(name);
  return it == env.end() ? nullptr : &it->second;
}

// A non-negative decimal that fits an int; anything else names the variable.
int parse_count(const Environment& env, const char* name) {
  const std::string& text = *find(env, name);
  if (text.empty() || text.size() > 9 || text.find_first_not_of("0123456789") != std::string::npos)
    throw std::invalid_argument(std::string(name) + "='" + text +
                                "' is not a non-negative integer");
  return std::stoi(text);
}

struct RankVariables {
  Launcher launcher;
  const char* rank;
  const char* world_size;
  const char* local_rank;
};

// In the order they win (see the header).
constexpr RankVariables kLaunchers[] = {
    {Launcher::mpirun, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
     "OMPI_COMM_WORLD_LOCAL_RANK"},
    {Launcher::torchrun, "RANK", "WORLD_SIZE", "LOCAL_RANK"},
    {Launcher::slurm, "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
};

// Where rank 0 of a Slurm step listens when MASTER_ADDR / MASTER_PORT do not say. With the default
// block distribution srun places rank 0 on the step's first node. The port comes from the job id so
// two jobs sharing a node do not collide.
void fill_slurm_master(const Environment& env, Rendezvous& r) {
  if (r.master_addr.empty()) {
    for (const char* name : {"SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"}) {
      if (const std::string* list = find(env, name)) {
        r.master_addr = first_slurm_host(*list);
        break;
      }
    }
  }
  if (r.master_addr.empty())
    throw std::invalid_argument("a Slurm launch of " + std::to_string(r.world_size) +
                                " ranks needs SLURM_JOB_NODELIST or MASTER_ADDR to find rank 0");
  if (r.master_port == 0) {
    if (!find(env, "SLURM_JOB_ID"))
      throw std::invalid_argument("a Slurm launch of " + std::to_string(r.world_size) +
                                  " ranks needs SLURM_JOB_ID or MASTER_PORT to pick rank 0's port");
    r.master_port = 20000 + parse_count(env, "SLURM_JOB_ID") % 10000;
  }
}

}  // namespace

Rendezvous parse_rendezvous(const Environment& env) {
  Rendezvous r;
  if (find(env, "DEIT_COMM_TIMEOUT")) {
    r.comm_timeout = std::chrono::seconds(parse_count(env, "DEIT_COMM_TIMEOUT"));
    if (r.comm_timeout.count() == 0)
      throw std::invalid_argument("DEIT_COMM_TIMEOUT=0: a wait needs at least a second");
  }
  if (const std::string* one_rank = find(env, "DEIT_NCCL_ONE_RANK")) {
    if (*one_rank != "0" && *one_rank != "1")
      throw std::invalid_argument("DEIT_NCCL_ONE_RANK must be 0 or 1, got '" + *one_rank + "'");
    r.nccl_one_rank = *one_rank == "1";
  }
  const RankVariables* found = nullptr;
  for (const RankVariables& vars : kLaunchers) {
    // In the shell of salloc or of a batch script, Slurm's variables count the tasks of the
    // allocation, which do not exist until srun starts them (and sets SLURM_STEP_ID).
    if (vars.launcher == Launcher::slurm && !find(env, "SLURM_STEP_ID")) continue;
    if (find(env, vars.rank) || find(env, vars.world_size)) {
      found = &vars;
      break;
    }
  }
  if (!found) return r;

  for (const char* name : {found->rank, found->world_size}) {
    if (!find(env, name))
      throw std::invalid_argument(std::string(launcher_name(found->launcher)) + " launch: " + name +
                                  " is not set (" + found->rank + " and " + found->world_size +
                                  " come together)");
  }
  r.launcher = found->launcher;
  r.rank = parse_count(env, found->rank);
  r.world_size = parse_count(env, found->world_size);
  // Some launchers of one process per machine (Kubernetes' PyTorchJob) set no local rank.
  if (find(env, found->local_rank)) r.local_rank = parse_count(env, found->local_rank);
  if (r.world_size < 1)
    throw std::invalid_argument(std::string(found->world_size) + "=0: the world needs a rank");
  if (r.rank >= r.world_size)
    throw std::invalid_argument(std::string(found->rank) + "=" + std::to_string(r.rank) +
                                " is not below " + found->world_size + "=" +
                                std::to_string(r.world_size));
  if (r.local_rank >= r.world_size)
    throw std::invalid_argument(std::string(found->local_rank) + "=" +
                                std::to_string(r.local_rank) + " is not below " +
                                found->world_size + "=" + std::to_string(r.world_size));

  if (const std::string* addr = find(env, "MASTER_ADDR")) r.master_addr = *addr;
  if (find(env, "MASTER_PORT")) {
    r.master_port = parse_count(env, "MASTER_PORT");
    if (r.master_port < 1 || r.master_port > 65535)
      throw std::invalid_argument("MASTER_PORT=" + std::to_string(r.master_port) +
                                  " is not a TCP port (1 to 65535)");
  }
  if (r.world_size == 1) return r;
  if (r.launcher == Launcher::torchrun) {
    if (r.master_addr.empty() || r.master_port == 0)
      throw std::invalid_argument(
          "a torchrun-style launch of " + std::to_string(r.world_size) +
          " ranks needs MASTER_ADDR and MASTER_PORT (where rank 0 listens)");
    // torchrun's agent serves its own TCPStore on MASTER_PORT and says so with this variable;
    // rank 0 listens on the next port.
    const std::string* agent_store = find(env, "TORCHELASTIC_USE_AGENT_STORE");
    if (agent_store && *agent_store == "True") {
      if (r.master_port == 65535)
        throw std::invalid_argument("MASTER_PORT=65535 leaves no port above torchrun's store");
      ++r.master_port;
    }
  }
  if (r.launcher == Launcher::slurm) fill_slurm_master(env, r);
  return r;
}

Environment process_environment() {
  Environment env;
  for (char** entry = environ; *entry; ++entry) {
    const std::string text = *entry;
    const size_t eq = text.find('=');
    if (eq != std::string::npos) env.emplace(text.substr(0, eq), text.substr(eq + 1));
  }
  return env;
}

Rendezvous detect_rendezvous() { return parse_rendezvous(process_environment()); }

int launch_rank_or_zero() {
  try {
    return detect_rendezvous().rank;
  } catch (const std::invalid_argument&) {
    return 0;
  }
}

std::string first_slurm_host(const std::string& nodelist) {
  // The first entry ends at the first comma outside brackets; each bracketed range in it
  // contributes its first value, zero padding and all.
  std::string host;
  for (size_t i = 0; i < nodelist.size() && nodelist[i] != ',';) {
    if (nodelist[i] != '[') {
      host += nodelist[i++];
      continue;
    }
    const size_t close = nodelist.find(']', i);
    if (close == std::string::npos)
      throw std::invalid_argument("Slurm node list '" + nodelist + "' has an unclosed '['");
    const std::string ranges = nodelist.substr(i + 1, close - i - 1);
    host += ranges.substr(0, ranges.find_first_of(",-"));
    i = close + 1;
  }
  if (host.empty()) throw std::invalid_argument("Slurm node list '" + nodelist + "' names no host");
  return host;
}

// ---- TCP exchange -----------------------------------------------------------------------------

namespace {

using Clock = std::chrono::steady_clock;

// Every message starts with this word, so a connection from something else is recognised.
constexpr uint32_t kMagic = 0x44454954;  // "DEIT"
constexpr uint32_t kPayloadFollows = 0;
constexpr uint32_t kRefused = 1;  // followed by the reason, as text
constexpr uint32_t kMaxMessageBytes = 1u << 20;
// How long rank 0 gives one connection to introduce itself before moving on to the next.
constexpr std::chrono::seconds kHelloTimeout{10};

class Socket {
 public:
  explicit Socket(int fd) : fd_(fd) {}
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  Socket(Socket&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  Socket& operator=(Socket&&) = delete;
  int fd() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

int ms_left(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return static_cast<int>(std::max<int64_t>(0, left.count()));
}

// Waits until `fd` is ready for `events` or `until` has come: true when it is ready.
bool ready_before(int fd, short events, Clock::time_point until, const std::string& what) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, ms_left(until));
    if (n > 0) return true;
    if (n == 0) return false;
    if (errno != EINTR)
      throw std::runtime_error("rendezvous: poll failed " + what + ": " + errno_text());
  }
}

// Waits until `fd` is ready for `events`; throws "timed out <what>" at the deadline.
void wait_ready(int fd, short events, Clock::time_point deadline, const std::string& what) {
  if (!ready_before(fd, events, deadline, what))
    throw std::runtime_error("rendezvous: timed out " + what);
}

// Whole seconds, for the notes below.
long long seconds(Clock::duration d) {
  return static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(d).count());
}

// The notes on stderr of a long wait for the other ranks: once `every` has passed, and each
// `every` after, what this rank still waits for and when it gives up. A rank that never starts,
// or a MASTER_ADDR that names the wrong host, would otherwise leave every rank silent until the
// deadline (minutes: ranks on other nodes may start that much later).
class WaitNotes {
 public:
  WaitNotes(std::chrono::milliseconds every, Clock::time_point deadline)
      : every_(every), start_(Clock::now()), next_(start_ + every), deadline_(deadline) {}
  // When to wake up next to say something (or give up).
  Clock::time_point next() const { return std::min(next_, deadline_); }
  // `waiting` as "rank 1 cannot reach rank 0 at node0:29500 (Connection refused)"; `advice` what
  // to check. Says it once the time has come.
  void say_when_due(const std::string& waiting, const std::string& advice) {
    const Clock::time_point now = Clock::now();
    if (now < next_ || now >= deadline_) return;
    std::fprintf(stderr, "deit: rendezvous: %s after %lld s: %s; giving up in %lld s\n",
                 waiting.c_str(), seconds(now - start_), advice.c_str(), seconds(deadline_ - now));
    while (next_ <= now) next_ += every_;
  }

 private:
  std::chrono::milliseconds every_;
  Clock::time_point start_, next_, deadline_;
};

void send_all(int fd, const void* data, size_t bytes, Clock::time_point deadline,
              const std::string& what) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    wait_ready(fd, POLLOUT, deadline, what);
    const ssize_t n = ::send(fd, p, bytes, MSG_NOSIGNAL);  // a closed peer is an error, not SIGPIPE
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      throw std::runtime_error("rendezvous: send failed " + what + ": " + errno_text());
    }
    p += n;
    bytes -= static_cast<size_t>(n);
  }
}

void recv_all(int fd, void* data, size_t bytes, Clock::time_point deadline,
              const std::string& what) {
  char* p = static_cast<char*>(data);
  while (bytes > 0) {
    wait_ready(fd, POLLIN, deadline, what);
    const ssize_t n = ::recv(fd, p, bytes, 0);
    if (n == 0) throw std::runtime_error("rendezvous: connection closed " + what);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      throw std::runtime_error("rendezvous: recv failed " + what + ": " + errno_text());
    }
    p += n;
    bytes -= static_cast<size_t>(n);
  }
}

void send_words(int fd, std::initializer_list<uint32_t> words, Clock::time_point deadline,
                const std::string& what) {
  std::vector<uint32_t> wire;
  for (uint32_t w : words) wire.push_back(htonl(w));
  send_all(fd, wire.data(), wire.size() * sizeof(uint32_t), deadline, what);
}

std::vector<uint32_t> recv_words(int fd, size_t count, Clock::time_point deadline,
                                 const std::string& what) {
  std::vector<uint32_t> words(count);
  recv_all(fd, words.data(), count * sizeof(uint32_t), deadline, what);
  for (uint32_t& w : words) w = ntohl(w);
  return words;
}

void send_message(int fd, uint32_t status, const void* bytes, size_t size,
                  Clock::time_point deadline) {
  send_words(fd, {kMagic, status, static_cast<uint32_t>(size)}, deadline, "answering a rank");
  send_all(fd, bytes, size, deadline, "answering a rank");
}

Socket listen_on(int port) {
  Socket s(::socket(AF_INET, SOCK_STREAM, 0));
  if (s.fd() < 0) throw std::runtime_error("rendezvous: socket failed: " + errno_text());
  // A job restarted on the same port must not wait for the last one's connections to time out.
  const int one = 1;
  ::setsockopt(s.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::bind(s.fd(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
    throw std::runtime_error("rendezvous: rank 0 cannot listen on port " + std::to_string(port) +
                             ": " + errno_text() + " (another job on this node? pick MASTER_PORT)");
  if (::listen(s.fd(), SOMAXCONN) != 0)
    throw std::runtime_error("rendezvous: listen failed: " + errno_text());
  return s;
}

std::string ranks_not_served(const std::vector<bool>& served) {
  std::string list;
  for (size_t r = 0; r < served.size(); ++r)
    if (!served[r]) list += (list.empty() ? "" : ", ") + std::to_string(r);
  return list;
}

// Rank 0: serves the payload to each other rank once.
void serve(const Rendezvous& rv, const std::vector<uint8_t>& payload, Clock::time_point deadline,
           WaitNotes& notes) {
  Socket listener = listen_on(rv.master_port);
  std::vector<bool> served(rv.world_size, false);
  served[0] = true;
  const std::string port = std::to_string(rv.master_port);
  for (int missing = rv.world_size - 1; missing > 0;) {
    const std::string waiting =
        "waiting on port " + port + " for rank(s) " + ranks_not_served(served);
    while (!ready_before(listener.fd(), POLLIN, notes.next(), waiting)) {
      if (Clock::now() >= deadline) throw std::runtime_error("rendezvous: timed out " + waiting);
      notes.say_when_due(
          "rank 0 is still " + waiting,
          "is each started, with MASTER_ADDR naming this host and MASTER_PORT " + port + "?");
    }
    Socket peer(::accept(listener.fd(), nullptr, nullptr));
    if (peer.fd() < 0) continue;  // the connection went away before it was accepted
    std::vector<uint32_t> hello;
    try {
      hello = recv_words(peer.fd(), 3, std::min(deadline, Clock::now() + kHelloTimeout),
                         "reading a rank's hello");
    } catch (const std::runtime_error&) {
      continue;  // not one of our ranks (a port scan, a client that gave up): serve the others
    }
    std::string refusal;
    const uint32_t rank = hello[1], world = hello[2];
    if (hello[0] != kMagic)
      refusal = "not a deit rendezvous";
    else if (world != static_cast<uint32_t>(rv.world_size))
      refusal = "rank 0 here runs a job of world size " + std::to_string(rv.world_size) + ", not " +
                std::to_string(world) + " (two jobs on one port?)";
    else if (rank == 0 || rank >= world)
      refusal = "rank " + std::to_string(rank) + " is out of range for world size " +
                std::to_string(world) + " (rank 0 serves ranks 1 to " + std::to_string(world - 1) +
                ")";
    else if (served[rank])
      refusal = "rank " + std::to_string(rank) + " has already been served (two jobs on one port?)";
    if (!refusal.empty()) {
      try {
        send_message(peer.fd(), kRefused, refusal.data(), refusal.size(), deadline);
      } catch (const std::runtime_error&) {
        // The stray peer left already; nothing of ours depends on it hearing why.
      }
      continue;
    }
    send_message(peer.fd(), kPayloadFollows, payload.data(), payload.size(), deadline);
    served[rank] = true;
    --missing;
  }
}

// One connection attempt that gives up at `deadline` (a blocking connect to an unreachable host
// could wait minutes). Returns the connected socket, or one holding -1 with `error` set.
Socket try_connect(const addrinfo& ai, Clock::time_point deadline, std::string& error) {
  Socket s(::socket(ai.ai_family, ai.ai_socktype, ai.ai_protocol));
  if (s.fd() < 0) {
    error = "socket: " + errno_text();
    return s;
  }
  const int flags = ::fcntl(s.fd(), F_GETFL);
  ::fcntl(s.fd(), F_SETFL, flags | O_NONBLOCK);
  if (::connect(s.fd(), ai.ai_addr, ai.ai_addrlen) != 0) {
    if (errno != EINPROGRESS) {
      error = errno_text();
      return Socket(-1);
    }
    pollfd p{s.fd(), POLLOUT, 0};
    if (::poll(&p, 1, ms_left(deadline)) <= 0) {
      error = "connect timed out";
      return Socket(-1);
    }
    int so_error = 0;
    socklen_t len = sizeof(so_error);
    ::getsockopt(s.fd(), SOL_SOCKET, SO_ERROR, &so_error, &len);
    if (so_error != 0) {
      error = std::strerror(so_error);
      return Socket(-1);
    }
  }
  ::fcntl(s.fd(), F_SETFL, flags);
  return s;
}

// Ranks other than 0: connect, retrying while rank 0 is not listening yet (ranks start in any
// order, and a host name may not resolve until its node is up).
Socket connect_to_rank0(const Rendezvous& rv, Clock::time_point deadline, WaitNotes& notes) {
  const std::string where = rv.master_addr + ":" + std::to_string(rv.master_port);
  std::string error;
  for (;;) {
    addrinfo hints{};
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    const int gai = ::getaddrinfo(rv.master_addr.c_str(), std::to_string(rv.master_port).c_str(),
                                  &hints, &found);
    if (gai != 0) {
      error = ::gai_strerror(gai);
    } else {
      std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> list(found, ::freeaddrinfo);
      for (const addrinfo* ai = found; ai; ai = ai->ai_next) {
        Socket s = try_connect(*ai, deadline, error);
        if (s.fd() >= 0) return s;
      }
    }
    if (Clock::now() >= deadline)
      throw std::runtime_error("rendezvous: rank " + std::to_string(rv.rank) +
                               " could not reach rank 0 at " + where + ": " + error);
    notes.say_when_due("rank " + std::to_string(rv.rank) + " still cannot reach rank 0 at " +
                           where + " (" + error + ")",
                       "is rank 0 started, and is " + rv.master_addr + " its host?");
    std::this_thread::sleep_for(std::chrono::milliseconds(std::min(200, ms_left(deadline))));
  }
}

std::vector<uint8_t> receive(const Rendezvous& rv, Clock::time_point deadline, WaitNotes& notes) {
  Socket s = connect_to_rank0(rv, deadline, notes);
  const std::string what =
      "waiting for rank 0 at " + rv.master_addr + ":" + std::to_string(rv.master_port);
  send_words(s.fd(), {kMagic, static_cast<uint32_t>(rv.rank), static_cast<uint32_t>(rv.world_size)},
             deadline, what);
  const std::vector<uint32_t> header = recv_words(s.fd(), 3, deadline, what);
  if (header[0] != kMagic || header[2] > kMaxMessageBytes)
    throw std::runtime_error("rendezvous: " + rv.master_addr + ":" +
                             std::to_string(rv.master_port) + " is not a deit rank 0");
  std::vector<uint8_t> bytes(header[2]);
  recv_all(s.fd(), bytes.data(), bytes.size(), deadline, what);
  if (header[1] != kPayloadFollows)
    throw std::runtime_error("rendezvous: rank 0 at " + rv.master_addr + ":" +
                             std::to_string(rv.master_port) + " refused rank " +
                             std::to_string(rv.rank) + ": " +
                             std::string(bytes.begin(), bytes.end()));
  return bytes;
}

}  // namespace

std::vector<uint8_t> tcp_broadcast_from_rank0(const Rendezvous& rendezvous,
                                              const std::vector<uint8_t>& payload,
                                              std::chrono::milliseconds timeout,
                                              std::chrono::milliseconds note_every) {
  if (rendezvous.world_size == 1) return payload;
  if (rendezvous.master_port == 0 || (rendezvous.rank != 0 && rendezvous.master_addr.empty()))
    throw std::invalid_argument("rendezvous: the TCP exchange needs rank 0's address and port (" +
                                rendezvous.describe() + "); set MASTER_ADDR and MASTER_PORT");
  if (note_every.count() <= 0)
    throw std::invalid_argument("rendezvous: the notes of a long wait need a positive interval");
  if (payload.size() > kMaxMessageBytes)
    throw std::invalid_argument("rendezvous: a TCP payload of " + std::to_string(payload.size()) +
                                " bytes is over the limit");
  const Clock::time_point deadline = Clock::now() + timeout;
  WaitNotes notes(note_every, deadline);
  if (rendezvous.rank != 0) return receive(rendezvous, deadline, notes);
  serve(rendezvous, payload, deadline, notes);
  return payload;
}

}  // namespace deit
