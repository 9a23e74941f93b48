#!/usr/bin/env bash
# Benchmark apopd against Dovecot on loopback with pop3-load.
#
#   sudo bench/compare.sh            # writes bench/results/<date>.md
#
# Needs root (Dovecot's master runs as root; apt-get installs it when missing). Nothing
# outside a private temp dir is configured: /etc/dovecot is never read or written.
# Each scenario runs RUNS times against each server, alternating apopd and Dovecot, on the
# same maildirs (copies) and users. Sizes scale with the environment variables below.
set -euo pipefail

# ---- knobs -------------------------------------------------------------------------------
RUNS=${RUNS:-3}                          # runs per scenario and server
APOPD_PORT=${APOPD_PORT:-21110}
DOVECOT_PORT=${DOVECOT_PORT:-21111}
SECRET=${SECRET:-benchsecret}            # password and APOP secret of every user
CHURN_CLIENTS=${CHURN_CLIENTS:-16}       # login-churn
CHURN_SECS=${CHURN_SECS:-8}
PASS_USERS=${PASS_USERS:-8}              # apopd only: USER/PASS churn, auth cache on and off
RETR_USERS=${RETR_USERS:-8}              # retr: RETR_USERS × RETR_MSGS × RETR_SIZE bytes
RETR_MSGS=${RETR_MSGS:-200}
RETR_SIZE=${RETR_SIZE:-65536}
RETR_CLIENTS=${RETR_CLIENTS:-4}
RETR_ROUNDS=${RETR_ROUNDS:-2}
BIG_MSGS=${BIG_MSGS:-100000}             # big-mailbox
BIG_SIZE=${BIG_SIZE:-1024}
BIG_NAMES=${BIG_NAMES:-plain sized}      # file name styles to test: plain and/or sized (,S=,W=)
IDLE_SESSIONS=${IDLE_SESSIONS:-2000}     # idle (also the number of tiny mailboxes, plus one for the probe)
IDLE_MANY=${IDLE_MANY:-50000}            # idle [many]: apopd only (Dovecot would need a process per session)
IDLE_SOURCES=${IDLE_SOURCES:-16}         # idle [many] spreads its sessions over this many 127.0.1.x addresses
PROBES=${PROBES:-300}                    # fresh login+RETR probes while idle sessions or a flood are held
FLOOD_CONNS=${FLOOD_CONNS:-2000}         # preauth-flood: connections that never log in
FLOOD_PER_ADDR=${FLOOD_PER_ADDR:-10}     #   … this many per source address
FLOOD_MAX_CONNECTIONS=${FLOOD_MAX_CONNECTIONS:-1024}  # apopd's max_connections during the flood
DC_USERS=${DC_USERS:-8}                  # delete-churn
DC_MSGS=${DC_MSGS:-20000}
DC_CMD_MSGS=${DC_CMD_MSGS:-2000}          # delete-churn through `apopd deliver` (slower)
DC_SIZE=${DC_SIZE:-4096}
DC_CLIENTS=${DC_CLIENTS:-4}
KEEP=${KEEP:-0}                          # 1: keep the work dir
SCENARIOS=${SCENARIOS:-login_churn userpass retr delete_churn deliver idle preauth_flood idle_many big_mailbox}  # which to run
# Where maildirs and configs go. tmpfs by default: this box's shared disk deletes ~1,300
# files/s, so cleaning up 400,000 message files would dominate the run; it also takes disk
# noise out. Set BENCH_TMP=/var/tmp (or any disk) to include the filesystem.
BENCH_TMP=${BENCH_TMP:-/dev/shm}

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN=$CARGO_TARGET_DIR/release
WORK=$(mktemp -d "$BENCH_TMP/apopd-bench.XXXXXX")
chmod 755 "$WORK"   # Dovecot's auth (user dovecot) and mail (uid 65534) processes must traverse it
RESULTS=$WORK/results.jsonl
: >"$RESULTS"

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (Dovecot's master process needs it)"

# ---- prerequisites -----------------------------------------------------------------------
if ! command -v dovecot >/dev/null || [ ! -x /usr/lib/dovecot/pop3 ]; then
    log "installing dovecot-core dovecot-pop3d"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dovecot-core dovecot-pop3d >&2
fi
command -v python3 >/dev/null || die "python3 is needed for the report"
log "building apopd and pop3-load (release)"
(cd "$REPO" && cargo build --release -p apopd -p pop3-load >&2)

# Many sessions: apopd holds a socket and 5 maildir descriptors (the directory, cur, new, tmp
# and the lock) per logged-in session. As root, raise the hard limit first (up to fs.nr_open).
NOFILE=$(( (IDLE_MANY > IDLE_SESSIONS ? IDLE_MANY : IDLE_SESSIONS) * 7 + 10000 ))
[ "$NOFILE" -le "$(cat /proc/sys/fs/nr_open)" ] || NOFILE=$(cat /proc/sys/fs/nr_open)
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$NOFILE" ] && ! ulimit -Hn "$NOFILE" 2>/dev/null; then
    log "cannot raise the hard RLIMIT_NOFILE above $(ulimit -Hn) (no CAP_SYS_RESOURCE here?):" \
        "idle [many] is spread over several apopd and pop3-load processes"
fi
ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n); [ "$NOFILE" != unlimited ] || NOFILE=$(cat /proc/sys/fs/nr_open)
# idle [many] per process: apopd needs 6 descriptors per session, pop3-load one.
SHARD_SESSIONS=$(( (NOFILE - 1000) / 6 ))
APOPD_SHARDS=$(( (IDLE_MANY + SHARD_SESSIONS - 1) / SHARD_SESSIONS ))
CLIENT_PROCS=$(( (IDLE_MANY + NOFILE - 1001) / (NOFILE - 1000) ))
[ "$(ulimit -n)" -ge $((IDLE_SESSIONS + 256)) ] || die "ulimit -n $(ulimit -n) is too low for $IDLE_SESSIONS sessions"

APOPD_PID=
DOVECOT_PID=
cleanup() {
    stop_apopd || true
    stop_dovecot || true
    if [ "$KEEP" = 1 ]; then log "work dir kept: $WORK"; else log "removing $WORK"; rm -rf "$WORK"; fi
}
trap cleanup EXIT

# ---- data --------------------------------------------------------------------------------
MAIL_A=$WORK/mail-apopd          # apopd's maildirs
MAIL_D=$WORK/mail-dovecot        # Dovecot's copy (owned by the mail uid)
CRED=$WORK/cred
MAIL_UID=65534 MAIL_GID=65534    # nobody:nogroup, Dovecot's mail processes run as this

load() { "$BIN/pop3-load" "$@"; }
pop() { load populate --root "$MAIL_A" --credentials "$CRED" --password "$SECRET" --apop-secret "$SECRET" \
    --dovecot-uid-gid "$MAIL_UID:$MAIL_GID" "$@" >/dev/null; }

log "populating ($IDLE_SESSIONS tiny, $RETR_USERS×$RETR_MSGS×$RETR_SIZE retr, $BIG_MSGS×$BIG_SIZE big, $DC_USERS churn)"
pop --user-prefix tiny --users $((IDLE_SESSIONS + 1)) --messages 1 --size 1024 --seed 11
pop --user-prefix retr --users "$RETR_USERS" --messages "$RETR_MSGS" --size "$RETR_SIZE" --seed 12
# The same with files already in wire form (CRLF, no dot lines): apopd may sendfile them.
pop --user-prefix retrcrlf --users "$RETR_USERS" --messages "$RETR_MSGS" --size "$RETR_SIZE" --seed 14 \
    --line-ends crlf
pop --user-prefix churn --users "$DC_USERS" --messages 0
# The big mailboxes (user big<names>1) sit in cur/, as if a client had seen them before, so
# neither server renames 100,000 files and a run is reset by deleting Dovecot's index files.
for names in $BIG_NAMES; do
    pop --user-prefix "big$names" --users 1 --messages "$BIG_MSGS" --size "$BIG_SIZE" --names "$names" \
        --subdir cur --seed 13
done
chgrp dovecot "$CRED/dovecot-passwd" && chmod 640 "$CRED/dovecot-passwd"
cp -a "$MAIL_A" "$MAIL_D"
chown -R "$MAIL_UID:$MAIL_GID" "$MAIL_D"
# apopd only (after the copy): one tiny mailbox per idle [many] session, plus the probe's.
if [ "$IDLE_MANY" -gt 0 ]; then
    pop --user-prefix many --users $((IDLE_MANY + 1)) --messages 1 --size 1024 --seed 14
fi

# ---- apopd -------------------------------------------------------------------------------
cat >"$WORK/apopd.toml" <<EOF
listen = ["127.0.0.1:$APOPD_PORT"]
mail_root = "$MAIL_A/{user}"
users_file = "$CRED/users"
apop_secrets_file = "$CRED/apop-secrets"
max_connections = $(( (IDLE_MANY > IDLE_SESSIONS ? IDLE_MANY : IDLE_SESSIONS) + 1000 ))
max_connections_per_ip = $(( (IDLE_MANY > IDLE_SESSIONS ? IDLE_MANY : IDLE_SESSIONS) + 1000 ))
EOF
# preauth-flood: the same server with a connection limit the flood exceeds (and the default per-IP limit).
sed '/^max_connections/d' "$WORK/apopd.toml" >"$WORK/apopd-flood.toml"
echo "max_connections = $FLOOD_MAX_CONNECTIONS" >>"$WORK/apopd-flood.toml"
APOPD_CONFIG=$WORK/apopd.toml

wait_port() { # port: wait until something accepts on 127.0.0.1:port
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

start_apopd() { # [config]: $APOPD_CONFIG unless another is named
    "$BIN/apopd" serve --config "${1:-$APOPD_CONFIG}" 2>>"$WORK/apopd.log" &
    APOPD_PID=$!
    wait_port "$APOPD_PORT" || die "apopd did not start; see $WORK/apopd.log"
}
stop_apopd() {
    [ -n "$APOPD_PID" ] || return 0
    kill "$APOPD_PID" 2>/dev/null || true
    wait "$APOPD_PID" 2>/dev/null || true
    APOPD_PID=
}

# ---- Dovecot -----------------------------------------------------------------------------
mkdir -p "$WORK/dovecot/run" "$WORK/dovecot/state"
cat >"$WORK/dovecot/dovecot.conf" <<EOF
# Private, loopback-only POP3 instance for the benchmark.
base_dir = $WORK/dovecot/run
state_dir = $WORK/dovecot/state
log_path = $WORK/dovecot/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
# APOP needs plaintext-retrievable passwords: the passwd-file uses {PLAIN}.
auth_mechanisms = plain apop
mail_location = maildir:$MAIL_D/%u
first_valid_uid = 1
pop3_uidl_format = %f
mail_max_userip_connections = 10000
default_internal_user = dovecot
default_login_user = dovenull
# Not artificially capped: room for every idle session.
default_process_limit = $((IDLE_SESSIONS + 1000))
default_client_limit = $((4 * IDLE_SESSIONS + 4000))
passdb {
  driver = passwd-file
  args = scheme=PLAIN $CRED/dovecot-passwd
}
userdb {
  driver = passwd-file
  args = $CRED/dovecot-passwd
}
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $DOVECOT_PORT
  }
  inet_listener pop3s {
    port = 0
  }
  # High-performance mode: long-lived login processes, one per core kept ready.
  service_count = 0
  process_min_avail = $(nproc)
}
service pop3 {
  process_limit = $((IDLE_SESSIONS + 1000))
}
EOF

start_dovecot() {
    dovecot -c "$WORK/dovecot/dovecot.conf" -F 2>>"$WORK/dovecot/stderr.log" &
    DOVECOT_PID=$!
    wait_port "$DOVECOT_PORT" || die "Dovecot did not start; see $WORK/dovecot/"
}
stop_dovecot() {
    [ -n "$DOVECOT_PID" ] || return 0
    kill "$DOVECOT_PID" 2>/dev/null || true
    wait "$DOVECOT_PID" 2>/dev/null || true
    DOVECOT_PID=
    # Let the per-session processes go away before the next measurement.
    sleep 1
}

# ---- running scenarios -------------------------------------------------------------------
# record SERVER RUN SCENARIO-ARGS…: run pop3-load against SERVER, tag its JSON line.
record() {
    local server=$1 run=$2 addr pids line
    shift 2
    if [ "$server" = apopd ]; then
        addr=127.0.0.1:$APOPD_PORT; pids=(--server-pid "$APOPD_PID")
    else
        addr=127.0.0.1:$DOVECOT_PORT; pids=(--server-pid "$DOVECOT_PID" --server-tree)
    fi
    local cmd=("$@" --addr "$addr" "${pids[@]}")
    log "$server run $run: pop3-load ${cmd[*]}"
    if line=$(load "${cmd[@]}" 2>"$WORK/last.err"); then :; else log "  (exit $?: $(tail -n 3 "$WORK/last.err" | tr '\n' ' '))"; fi
    sed 's/^/  /' "$WORK/last.err" >&2
    [ -n "$line" ] || line='{"scenario":"'"$1"'","failed":true}'
    printf '{"server":"%s","run":%s,"variant":"%s","cmd":"pop3-load %s",%s\n' \
        "$server" "$run" "$VARIANT" "${cmd[*]//\"/}" "${line#\{}" >>"$RESULTS"
}

AUTH=(--apop-secret "$SECRET")
VARIANT=
DC_SEED=100

scenario() { # name: run it RUNS times per server, alternating (callers check SCENARIOS)
    local name=$1 run server
    for run in $(seq 1 "$RUNS"); do
        for server in apopd dovecot; do
            "scenario_$name" "$server" "$run"
        done
    done
}

scenario_login_churn() {
    record "$1" "$2" login-churn --user-prefix tiny --users "$CHURN_CLIENTS" "${AUTH[@]}" \
        --clients "$CHURN_CLIENTS" --seconds "$CHURN_SECS"
}

scenario_retr() { # VARIANT=crlf: the mailboxes whose files need no rewriting
    local prefix=retr seed=12
    if [ "$VARIANT" = crlf ]; then prefix=retrcrlf seed=14; fi
    record "$1" "$2" retr --user-prefix "$prefix" --users "$RETR_USERS" "${AUTH[@]}" --clients "$RETR_CLIENTS" \
        --seed "$seed" --messages "$RETR_MSGS" --rounds "$RETR_ROUNDS"
}

scenario_big_mailbox() { # restart the server without its caches: the first login is the cold one
    local user=big${NAMES}1
    if [ "$1" = apopd ]; then
        stop_apopd
        rm -f "$MAIL_A/$user"/apopd.index   # its scan index: the first login rebuilds it
        start_apopd
    else
        stop_dovecot
        rm -f "$MAIL_D/$user"/dovecot*   # index, cache and uidlist
        start_dovecot
    fi
    record "$1" "$2" big-mailbox --user "$user" "${AUTH[@]}" --messages "$BIG_MSGS"
}

scenario_big_mailbox_warm() { # restart the server keeping its index files (run after big_mailbox)
    if [ "$1" = apopd ]; then stop_apopd; start_apopd; else stop_dovecot; start_dovecot; fi
    record "$1" "$2" big-mailbox --user "big${NAMES}1" "${AUTH[@]}" --messages "$BIG_MSGS"
}

scenario_idle() { # a fresh server, so "before" is a server with no history
    if [ "$1" = apopd ]; then stop_apopd; start_apopd; else stop_dovecot; start_dovecot; fi
    sleep 1
    record "$1" "$2" idle --user-prefix tiny --users $((IDLE_SESSIONS + 1)) --sessions "$IDLE_SESSIONS" "${AUTH[@]}" \
        --seconds 120 --probes "$PROBES"
}

scenario_idle_many() { # apopd only: IDLE_MANY sessions from IDLE_SOURCES addresses, probed while held
    # When one process cannot hold them (RLIMIT_NOFILE), extra apopd processes on the next ports
    # share the mail root (mailboxes are locked per session, as between nodes) and pop3-load
    # holds the sessions in several processes; the memory is summed over every apopd.
    local k port shards=() pids=()
    stop_apopd; start_apopd
    for k in $(seq 1 $((APOPD_SHARDS - 1))); do
        port=$((APOPD_PORT + 100 + k))
        sed "s/127.0.0.1:$APOPD_PORT/127.0.0.1:$port/" "$WORK/apopd.toml" >"$WORK/apopd-shard$k.toml"
        "$BIN/apopd" serve --config "$WORK/apopd-shard$k.toml" 2>>"$WORK/apopd-shard.log" &
        pids+=($!)
        shards+=(--also-addr "127.0.0.1:$port" --server-pid "$!")
        wait_port "$port" || die "apopd shard $k did not start; see $WORK/apopd-shard.log"
    done
    sleep 1
    record apopd "$1" idle --user-prefix many --users $((IDLE_MANY + 1)) --sessions "$IDLE_MANY" "${AUTH[@]}" \
        --seconds 600 --connect-concurrency 64 --source-addrs "$IDLE_SOURCES" --settle-secs 5 --probes "$PROBES" \
        --client-processes "$CLIENT_PROCS" "${shards[@]}"
    for k in "${pids[@]}"; do kill "$k" 2>/dev/null || true; wait "$k" 2>/dev/null || true; done
}

scenario_preauth_flood() { # FLOOD_CONNS silent connections, FLOOD_PER_ADDR per address, while a probe logs in
    if [ "$1" = apopd ]; then
        stop_apopd; APOPD_CONFIG=$WORK/apopd-flood.toml; start_apopd; APOPD_CONFIG=$WORK/apopd.toml
    else
        stop_dovecot; start_dovecot
    fi
    sleep 1
    record "$1" "$2" preauth-flood --connections "$FLOOD_CONNS" --per-addr "$FLOOD_PER_ADDR" "${AUTH[@]}" \
        --probe-user tiny$((IDLE_SESSIONS + 1)) --probes "$PROBES"
    if [ "$1" = apopd ]; then stop_apopd; start_apopd; else stop_dovecot; start_dovecot; fi
}

scenario_delete_churn() { # same delivery (tmp→new renames) for both; fresh seed per run
    local root
    if [ "$1" = apopd ]; then root=$MAIL_A; else root=$MAIL_D; fi
    DC_SEED=$((DC_SEED + 1))
    record "$1" "$2" delete-churn --user-prefix churn --users "$DC_USERS" "${AUTH[@]}" --clients "$DC_CLIENTS" \
        --messages "$DC_MSGS" --size "$DC_SIZE" --seed "$DC_SEED" --maildir-root "$root" --seconds 90
}

START=$(date +%s)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
start_apopd
start_dovecot
wanted() { [[ " $SCENARIOS " == *" $1 "* ]]; }
wanted login_churn && scenario login_churn
# apopd only: USER/PASS churn of the same users (argon2id at the users file's parameters),
# the auth cache on (the default) and off (a second config with auth_cache_ttl_secs = 0).
{ cat "$WORK/apopd.toml"; echo "auth_cache_ttl_secs = 0"; } >"$WORK/apopd-nocache.toml"
wanted userpass && for run in $(seq 1 "$RUNS"); do
    for VARIANT in userpass-cache-on userpass-cache-off; do
        stop_apopd
        if [ "$VARIANT" = userpass-cache-off ]; then start_apopd "$WORK/apopd-nocache.toml"; else start_apopd; fi
        record apopd "$run" login-churn --user-prefix tiny --users "$PASS_USERS" --password "$SECRET" \
            --clients "$PASS_USERS" --seconds "$CHURN_SECS"
    done
done
VARIANT=
stop_apopd
start_apopd
wanted retr && scenario retr
wanted retr && { VARIANT=crlf; scenario retr; VARIANT=; }
wanted delete_churn && scenario delete_churn
# apopd only: delivery through `apopd deliver` (fsyncs, a process per message).
wanted deliver && for run in $(seq 1 "$RUNS"); do
    DC_SEED=$((DC_SEED + 1))
    record apopd "$run" delete-churn --user-prefix churn --users "$DC_USERS" "${AUTH[@]}" --clients "$DC_CLIENTS" \
        --messages "$DC_CMD_MSGS" --size "$DC_SIZE" --seed "$DC_SEED" \
        --seconds 90 --deliver-cmd "$BIN/apopd deliver {user} --config $WORK/apopd.toml"
done
wanted idle && scenario idle
wanted preauth_flood && scenario preauth_flood
if wanted idle_many && [ "$IDLE_MANY" -gt 0 ]; then
    VARIANT=many
    for run in $(seq 1 "$RUNS"); do scenario_idle_many "$run"; done
    VARIANT=
    stop_apopd; start_apopd
fi
wanted big_mailbox && for NAMES in $BIG_NAMES; do
    VARIANT=$NAMES; scenario big_mailbox
    # Every index the cold runs left behind has settled (apopd trusts an index only when its
    # listing was taken 2 s or more after the last change): now the restarts that keep them.
    sleep 3
    VARIANT="$NAMES warm"; scenario big_mailbox_warm
done
VARIANT=
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
ELAPSED=$(( $(date +%s) - START ))

# ---- report ------------------------------------------------------------------------------
mkdir -p "$HERE/results"
OUT=$HERE/results/$(date +%Y-%m-%d).md
[ ! -e "$OUT" ] || OUT=$HERE/results/$(date +%Y-%m-%d-%H%M).md
export RESULTS OUT ELAPSED LOAD_BEFORE LOAD_AFTER RUNS SCENARIOS IDLE_MANY APOPD_SHARDS CLIENT_PROCS IDLE_SOURCES FLOOD_CONNS FLOOD_PER_ADDR FLOOD_MAX_CONNECTIONS
export WORK_FS="$(df --output=fstype "$WORK" | tail -n 1) ($BENCH_TMP)"
export MACHINE_NPROC=$(nproc)
export MACHINE_MEM=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)
export MACHINE_KERNEL=$(uname -sr)
export MACHINE_CPU=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
export APOPD_VERSION="$("$BIN/apopd" --version) ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown))"
export DOVECOT_VERSION=$(dovecot --version)
python3 "$HERE/report.py"
log "results: $OUT"
cat "$OUT"
