#!/usr/bin/env bash
# Login churn against the users file and against PostgreSQL (docs/scaling-postgres.md), both
# on loopback, with pop3-load: the cost of one database lookup per login. Needs the release
# binaries (cargo build --release -p apopd -p pop3-load) and Debian's postgresql; when run as
# root, the throw-away cluster runs as nobody. Nothing outside a temp dir is touched.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${CARGO_TARGET_DIR:-target}/release
SECS=${SECS:-8} CLIENTS=${CLIENTS:-8} USERS=${USERS:-8} PORT=${PORT:-21120} PGPORT=${PGPORT:-25432}
PG=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
T=$(mktemp -d /tmp/pgchurn.XXXXXX)
chmod 755 "$T"
run_pg() { if [ "$(id -u)" = 0 ]; then runuser -u nobody -- "$@"; else "$@"; fi; }
cleanup() {
    [ -n "${APOPD_PID:-}" ] && kill "$APOPD_PID" 2>/dev/null || true
    run_pg "$PG/pg_ctl" -D "$T/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$T"
}
trap cleanup EXIT

mkdir "$T/pg"
[ "$(id -u)" = 0 ] && chown nobody "$T/pg"
run_pg "$PG/initdb" -D "$T/pg/data" -U postgres --auth=trust --no-sync >/dev/null
run_pg "$PG/pg_ctl" -D "$T/pg/data" -l "$T/pg/log" -w -o "-k $T/pg -p $PGPORT -c listen_addresses=127.0.0.1" start >/dev/null

"$B/pop3-load" populate --root "$T/m" --user-prefix u --users "$USERS" --messages 10 --size 2048 \
    --credentials "$T/cred" --password s3cret --apop-secret s3cret >/dev/null
{
    sed -n '/^```sql$/,/^```$/p' docs/scaling-postgres.md | sed '1d;$d' | head -n 5
    while IFS=: read -r name hash; do
        echo "INSERT INTO pop3_users VALUES ('$name', '$hash', 's3cret');"
    done <"$T/cred/users"
} | run_pg "$PG/psql" -q -h "$T/pg" -p "$PGPORT" -U postgres postgres

cat >"$T/file.toml" <<TOML
listen = ["127.0.0.1:$PORT"]
mail_root = "$T/m/{user}"
users_file = "$T/cred/users"
apop_secrets_file = "$T/cred/apop-secrets"
maildir_owner = "any"
max_connections_per_ip = 1000
TOML
{ cat "$T/file.toml"; printf '[users]\nbackend = "postgres"\nurl = "postgres://postgres@127.0.0.1:%s/postgres"\n' "$PGPORT"; } >"$T/postgres.toml"

for backend in file postgres; do
    for method in password apop-secret; do
        "$B/apopd" serve -c "$T/$backend.toml" 2>"$T/serve.log" &
        APOPD_PID=$!
        for _ in $(seq 50); do grep -q 'apopd: ready' "$T/serve.log" && break; sleep 0.1; done
        printf '%-8s %-11s ' "$backend" "$method"
        "$B/pop3-load" login-churn --addr "127.0.0.1:$PORT" --user-prefix u --users "$USERS" \
            --"$method" s3cret --clients "$CLIENTS" --seconds "$SECS" --server-pid "$APOPD_PID" 2>/dev/null
        kill "$APOPD_PID"; wait "$APOPD_PID" || true
        APOPD_PID=
    done
done
