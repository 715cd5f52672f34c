# Shell helpers shared by the service scripts (sourced, not run).

# stop_and_wait PID: SIGTERM, then wait up to 5 s for the process to be gone (SIGKILL
# after that), so that a script's `stop` returns only once its server has exited.
stop_and_wait() {
  local pid=$1
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}
