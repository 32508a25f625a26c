# Sourced by dist_train.sh and dist_test.sh: start a tool in NUM_PROCESSES processes per node
# with torchrun, on the checkout's .venv.
#   torchrun_tool NUM_PROCESSES TOOL.py [ARGS...]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR and PORT, set on every node.
torchrun_tool() {
  local nproc=$1 tool=$2
  shift 2
  local root nnodes=${NNODES:-1} node_rank=${NODE_RANK:-0} port=${PORT:-29500}
  local master_addr=${MASTER_ADDR:-127.0.0.1}
  # Counts of at most 5 digits: bash's arithmetic wraps past 2^63 (a NODE_RANK of 2^64 - 1 is -1).
  if ! [[ "$nproc" =~ ^[1-9][0-9]{0,4}$ ]]; then
    echo "$(basename "$0"): error: the number of processes must be a whole number from 1 to 99999, got '$nproc'" >&2
    exit 2
  fi
  if ! [[ "$port" =~ ^[1-9][0-9]{0,4}$ ]] || [ "$port" -gt 65535 ]; then
    echo "$(basename "$0"): error: PORT must be a port number (1 to 65535), got '$port'" >&2
    exit 2
  fi
  # A NODE_RANK left in the environment (NNODES unset: 1) had torchrun wait for ever, silently,
  # for nodes that never come; so did nodes other than the first meeting at their own loopback.
  if ! [[ "$nnodes" =~ ^[1-9][0-9]{0,4}$ && "$node_rank" =~ ^(0|[1-9][0-9]{0,4})$ ]] || ((node_rank >= nnodes)); then
    echo "$(basename "$0"): error: NNODES must be a whole number from 1 to 99999 and NODE_RANK one" \
      "from 0 to NNODES - 1, got NNODES='$nnodes' NODE_RANK='$node_rank'" >&2
    exit 2
  fi
  if ((nnodes > 1)) && [[ "$master_addr" =~ ^(127\.|localhost$|::1$) ]]; then
    echo "$(basename "$0"): error: with NNODES=$nnodes, MASTER_ADDR must be the first node's" \
      "address as the other nodes reach it, not '$master_addr'" >&2
    exit 2
  fi
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  # The checkout's .venv first: PYTHON may name the interpreter scripts/setup_env.sh built it from.
  local python=${PYTHON:-python}
  [ -x "$root/.venv/bin/python" ] && python="$root/.venv/bin/python"
  # Every node reaches the rendezvous at MASTER_ADDR: a name that does not resolve made torchrun
  # retry for ever. The first node hosts it on PORT: one taken (e.g. by a run still going) ended in
  # torchrun's traceback. Only "in use" counts (SO_REUSEADDR, as torch binds: a port a finished
  # run left in TIME_WAIT is free), on any address: torch's store listens on all of them.
  local rendezvous_check=0
  "$python" -c '
import errno, socket, sys
address, port, hosts = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "0"
try:
    socket.getaddrinfo(address, port)
except socket.gaierror:
    sys.exit(3)
if hosts:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("", port))
    except OSError as error:
        sys.exit(4 if error.errno == errno.EADDRINUSE else 0)' "$master_addr" "$port" "$node_rank" \
    >/dev/null 2>&1 || rendezvous_check=$?
  if [ "$rendezvous_check" = 3 ]; then
    echo "$(basename "$0"): error: MASTER_ADDR '$master_addr' does not resolve to an address" >&2
    exit 2
  elif [ "$rendezvous_check" = 4 ]; then
    echo "$(basename "$0"): error: port $port of $master_addr is in use (another run?): set PORT to a free one" >&2
    exit 1
  elif [ "$rendezvous_check" != 0 ]; then
    echo "$(basename "$0"): error: $python does not run (exit $rendezvous_check); run" \
      "scripts/setup_env.sh or set PYTHON" >&2
    exit 2
  fi
  # torchrun gives each process one CPU thread unless OMP_NUM_THREADS says otherwise: right beside
  # GPUs, but on a machine without them training ran on one core per process.
  if [ -z "${OMP_NUM_THREADS:-}" ] && ! nvidia-smi -L >/dev/null 2>&1; then
    local cores
    cores=$(nproc 2>/dev/null || echo 1)
    export OMP_NUM_THREADS=$((cores / nproc > 1 ? cores / nproc : 1))
  fi
  # torchrun, ending in one line (tools/_torchrun.py) where it ended in a traceback.
  PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$python" "$root/tools/_torchrun.py" \
    --nnodes="$nnodes" --node_rank="$node_rank" --master_addr="$master_addr" --master_port="$port" \
    --nproc_per_node="$nproc" "$root/tools/$tool" "$@"
}
