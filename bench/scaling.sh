#!/usr/bin/env bash
# The figures of docs/scaling.md: two apopd nodes on one mail root behind a real HAProxy
# (send-proxy-v2, POP3 health checks), all on loopback ports 21110-23101. Needs haproxy and
# release builds: cargo build --release -p apopd -p pop3-load. Knobs: SECS (8), DC_MSGS (10000).
set -uo pipefail
B=$(realpath "${B:-${CARGO_TARGET_DIR:-target}/release}")
S=$(mktemp -d)
cd $S
mkdir -p m
$B/pop3-load populate --root $S/m --user-prefix u --users 16 --messages 1 --size 512 \
    --credentials $S/cred --password benchsecret --apop-secret benchsecret >/dev/null
$B/pop3-load populate --root $S/m --user-prefix c --users 8 --messages 0 --size 512 \
    --credentials $S/cred --password benchsecret --apop-secret benchsecret >/dev/null
$B/pop3-load populate --root $S/m --user-prefix i --users 1000 --messages 0 --size 512 \
    --credentials $S/cred --password benchsecret --apop-secret benchsecret >/dev/null
for n in 1 2; do cat > node$n.toml <<EOT
listen = ["127.0.0.1:2${n}110", { addr = "127.0.0.1:2${n}111", proxy_protocol = true }]
proxy_trusted_networks = ["127.0.0.1/32"]
mail_root = "$S/m/{user}"
users_file = "$S/cred/users"
apop_secrets_file = "$S/cred/apop-secrets"
auth_failure_delay_ms = 0
max_connections_per_ip = 100000
EOT
done
cat > haproxy.cfg <<EOT
global
  pidfile $S/haproxy.pid
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 15m
  timeout server 15m
frontend two
  bind 127.0.0.1:23100
  default_backend two
frontend one
  bind 127.0.0.1:23101
  default_backend one
backend two
  balance leastconn
  option tcp-check
  tcp-check expect rstring ^\+OK
  tcp-check send QUIT\r\n
  default-server send-proxy-v2 check check-send-proxy inter 2s fall 3 rise 2
  server node1 127.0.0.1:21111
  server node2 127.0.0.1:22111
backend one
  server node1 127.0.0.1:21111 send-proxy-v2
EOT
RUST_LOG=warn $B/apopd serve --config node1.toml 2>node1.log & P1=$!
RUST_LOG=warn $B/apopd serve --config node2.toml 2>node2.log & P2=$!
haproxy -f haproxy.cfg -db 2>haproxy.log & PH=$!
trap 'kill $P1 $P2 $PH 2>/dev/null; rm -rf "$S"' EXIT
sleep 2
SECS=${SECS:-8}
churn() { $B/pop3-load login-churn --addr $1 --user-prefix u --users 16 --apop-secret benchsecret \
    --clients 16 --seconds $SECS "${@:2}"; }
echo "== load: $(cat /proc/loadavg)"
echo "== login-churn direct to node1"; churn 127.0.0.1:21110 --server-pid $P1
echo "== login-churn HAProxy -> node1"; churn 127.0.0.1:23101 --server-pid $P1 --server-pid $PH
echo "== login-churn HAProxy -> node1+node2"; churn 127.0.0.1:23100 --server-pid $P1 --server-pid $P2 --server-pid $PH
echo "== login-churn USER/PASS (argon2id as populated) HAProxy -> node1+node2"
$B/pop3-load login-churn --addr 127.0.0.1:23100 --user-prefix u --users 16 --password benchsecret \
    --clients 4 --seconds $SECS --server-pid $P1 --server-pid $P2 --server-pid $PH
echo "== load: $(cat /proc/loadavg)"
echo "== delete-churn across node1+node2 (--also-addr)"
$B/pop3-load delete-churn --addr 127.0.0.1:21110 --also-addr 127.0.0.1:22110 --user-prefix c --users 8 \
    --apop-secret benchsecret --maildir-root $S/m --messages ${DC_MSGS:-10000} --size 4096 --clients 4 \
    --server-pid $P1 --server-pid $P2
echo "== delete-churn through HAProxy to node1+node2"
$B/pop3-load delete-churn --addr 127.0.0.1:23100 --user-prefix c --users 8 --seed 8 \
    --apop-secret benchsecret --maildir-root $S/m --messages ${DC_MSGS:-10000} --size 4096 --clients 4 \
    --server-pid $P1 --server-pid $P2 --server-pid $PH
echo "== load: $(cat /proc/loadavg)"
echo "== idle: 1000 sessions through HAProxy over node1+node2"
$B/pop3-load idle --addr 127.0.0.1:23100 --user-prefix i --users 1000 --apop-secret benchsecret \
    --sessions 1000 --server-pid $P1 --server-pid $P2
echo "== load: $(cat /proc/loadavg)"
grep -c . node1.log node2.log haproxy.log || true
