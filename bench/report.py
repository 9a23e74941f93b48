#!/usr/bin/env python3
"""Turn compare.sh's results.jsonl into bench/results/<date>.md (called by compare.sh)."""

import json
import os
from datetime import datetime, timezone

env = os.environ
rows = [json.loads(line) for line in open(env["RESULTS"]) if line.strip()]


def key(r):
    s = r.get("scenario", "?")
    if s == "delete-churn":
        s += " (" + r.get("delivery", "?") + ")"
    if r.get("variant"):
        s += " [" + r["variant"] + "]"
    return s


def values(scenario, field, server):
    out = []
    for r in rows:
        if key(r) == scenario and r.get("server") == server:
            v = field(r) if callable(field) else r.get(field)
            out.append(v if isinstance(v, (int, float)) and not isinstance(v, bool) else None)
    return out


KIB = 1024.0
MANY = env.get("IDLE_MANY", "50000")
FLOOD = f"{env.get('FLOOD_CONNS', '?')} silent connections, {env.get('FLOOD_PER_ADDR', '?')} per address"


def login_stat(r):
    a, b = r.get("second_login_ms"), r.get("stat_ms")
    return a + b if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None


def client_cores(r):
    c, s = r.get("client_cpu_seconds"), r.get("seconds")
    return c / s if isinstance(c, (int, float)) and isinstance(s, (int, float)) and s > 0 else None
def cpu_ms_per_mb(r):
    c, n, o = r.get("server_cpu_ms_per_message"), r.get("messages"), r.get("octets")
    ok = all(isinstance(v, (int, float)) for v in (c, n, o)) and o > 0
    return c * n / (o / 1e6) if ok else None


# scenario, field, label, scale, target: (kind, bound) with kind ratio_ge / ratio_le / abs_le / zero
METRICS = [
    ("login-churn", "sessions_per_sec", "login-churn sessions/s (APOP)", 1, ("ratio_ge", 10)),
    ("login-churn", "p50_ms", "login-churn p50 latency ms", 1, None),
    ("login-churn", "p99_ms", "login-churn p99 latency ms", 1, None),
    ("login-churn", client_cores, "login-churn client CPU (cores busy)", 1, None),
    ("login-churn", "server_cpu_ms_per_session", "login-churn server CPU ms/session", 1, None),
    ("login-churn [userpass-cache-off]", "sessions_per_sec", "login-churn USER/PASS sessions/s cache off (apopd only)", 1, None),
    ("login-churn [userpass-cache-on]", "sessions_per_sec", "login-churn USER/PASS sessions/s cache on (apopd only)", 1, None),
    ("login-churn [userpass-cache-off]", "server_cpu_ms_per_session", "login-churn USER/PASS server CPU ms/session cache off", 1, None),
    ("login-churn [userpass-cache-on]", "server_cpu_ms_per_session", "login-churn USER/PASS server CPU ms/session cache on", 1, None),
    ("retr", "mb_per_sec", "retr MB/s (LF files)", 1, ("ratio_ge", 2)),
    ("retr", "server_cpu_ms_per_message", "retr server CPU ms/message (LF files)", 1, None),
    ("retr", cpu_ms_per_mb, "retr server CPU ms/MB (LF files)", 1, ("ratio_le", 0.25)),
    ("retr", client_cores, "retr client CPU (cores busy) (LF files)", 1, None),
    ("retr", "mismatches", "retr mismatches (LF files)", 1, ("zero", 0)),
    ("retr [crlf]", "mb_per_sec", "retr MB/s (CRLF files)", 1, None),
    ("retr [crlf]", cpu_ms_per_mb, "retr server CPU ms/MB (CRLF files)", 1, ("ratio_le", 0.25)),
    ("retr [crlf]", client_cores, "retr client CPU (cores busy) (CRLF files)", 1, None),
    ("retr [crlf]", "mismatches", "retr mismatches (CRLF files)", 1, ("zero", 0)),
    ("big-mailbox [plain]", "first_login_stat_ms", "big-mailbox (plain names) first login+STAT ms", 1, ("ratio_le", 0.3)),
    ("big-mailbox [plain]", "second_login_ms", "big-mailbox (plain names) 2nd session login ms", 1, None),
    ("big-mailbox [plain]", "stat_ms", "big-mailbox (plain names) 2nd session STAT ms", 1, ("ratio_le", 0.2)),
    ("big-mailbox [plain]", login_stat, "big-mailbox (plain names) 2nd session login+STAT ms", 1, ("ratio_le", 0.2)),
    ("big-mailbox [plain]", "list_ms", "big-mailbox (plain names) 2nd session LIST ms", 1, None),
    ("big-mailbox [plain]", "uidl_ms", "big-mailbox (plain names) 2nd session UIDL ms", 1, ("ratio_le", 0.15)),
    ("big-mailbox [plain warm]", "first_login_stat_ms",
     "big-mailbox (plain names) first login+STAT after restart (index kept) ms", 1, ("ratio_le", 0.3)),
    ("big-mailbox [sized]", "first_login_stat_ms", "big-mailbox (sized names) first login+STAT ms", 1, ("ratio_le", 0.3)),
    ("big-mailbox [sized]", "second_login_ms", "big-mailbox (sized names) 2nd session login ms", 1, None),
    ("big-mailbox [sized]", "stat_ms", "big-mailbox (sized names) 2nd session STAT ms", 1, ("ratio_le", 0.2)),
    ("big-mailbox [sized]", login_stat, "big-mailbox (sized names) 2nd session login+STAT ms", 1, ("ratio_le", 0.2)),
    ("big-mailbox [sized]", "list_ms", "big-mailbox (sized names) 2nd session LIST ms", 1, None),
    ("big-mailbox [sized]", "uidl_ms", "big-mailbox (sized names) 2nd session UIDL ms", 1, ("ratio_le", 0.15)),
    ("big-mailbox [sized warm]", "first_login_stat_ms",
     "big-mailbox (sized names) first login+STAT after restart (index kept) ms", 1, ("ratio_le", 0.3)),
    ("idle", "pss_bytes_per_session", "idle PSS KiB/session", 1 / KIB, ("abs_le", 64)),
    ("idle", "rss_bytes_per_session", "idle RSS KiB/session", 1 / KIB, None),
    ("idle", "sessions_held", "idle sessions held", 1, None),
    ("idle", "probe_p99_ms", "idle: fresh login+RETR p99 ms while held", 1, None),
    ("idle [many]", "sessions_held", f"idle {MANY}: sessions held", 1, ("abs_ge", int(MANY))),
    ("idle [many]", "rss_bytes_per_session", f"idle {MANY}: RSS KiB/session", 1 / KIB, ("abs_le", 16)),
    ("idle [many]", "pss_bytes_per_session", f"idle {MANY}: PSS KiB/session", 1 / KIB, None),
    ("idle [many]", "probe_p50_ms", f"idle {MANY}: fresh login+RETR p50 ms", 1, None),
    ("idle [many]", "probe_p99_ms", f"idle {MANY}: fresh login+RETR p99 ms", 1, ("abs_lt", 50)),
    ("idle [many]", "probe_errors", f"idle {MANY}: fresh login+RETR errors", 1, ("zero", 0)),
    ("preauth-flood", "probe_errors", f"preauth-flood ({FLOOD}): fresh login+RETR errors", 1, ("zero", 0)),
    ("preauth-flood", "probe_p99_ms", "preauth-flood: fresh login+RETR p99 ms", 1, ("abs_lt", 50)),
    ("preauth-flood", "greeted", "preauth-flood: flood connections greeted", 1, None),
    ("preauth-flood", "refused", "preauth-flood: flood connections refused at once", 1, None),
    ("preauth-flood", "evicted", "preauth-flood: greeted flood connections closed later by the server", 1, None),
    ("delete-churn (rename)", "messages_per_sec", "delete-churn msg/s (tmp→new renames)", 1, ("ratio_ge", 3)),
    ("delete-churn (rename)", "lost", "delete-churn lost", 1, ("zero", 0)),
    ("delete-churn (rename)", "duplicated", "delete-churn duplicated", 1, ("zero", 0)),
    ("delete-churn (rename)", client_cores, "delete-churn client CPU (cores busy)", 1, None),
    ("delete-churn (rename)", "server_cpu_ms_per_message", "delete-churn server CPU ms/message", 1, None),
    ("delete-churn (command)", "messages_per_sec", "delete-churn msg/s (`apopd deliver`)", 1, None),
    ("delete-churn (command)", "lost", "delete-churn lost (`apopd deliver`)", 1, ("zero", 0)),
    ("delete-churn (command)", "duplicated", "delete-churn duplicated (`apopd deliver`)", 1, ("zero", 0)),
]


def fmt(v):
    if v is None:
        return "–"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if 0 < abs(v) < 0.1:
        return f"{v:.3f}"
    return f"{v:.2f}"


def mean(vs):
    vs = [v for v in vs if v is not None]
    return sum(vs) / len(vs) if vs else None


lines = []
w = lines.append
now = datetime.now(timezone.utc)
w(f"# apopd vs Dovecot, {now:%Y-%m-%d %H:%M} UTC")
w("")
w("Produced by `bench/compare.sh` (pop3-load). Numbers are noisy: the machine is shared with other builds; "
  f"each scenario ran {env['RUNS']} times per server, alternating apopd and Dovecot.")
w("")
w("## Machine")
w("")
w(f"- CPU: {env['MACHINE_CPU']}, nproc {env['MACHINE_NPROC']}")
w(f"- Memory: {env['MACHINE_MEM']}")
w(f"- Kernel: {env['MACHINE_KERNEL']}")
w(f"- apopd: {env['APOPD_VERSION']}")
w(f"- Dovecot: {env['DOVECOT_VERSION']}")
w(f"- Maildirs on: {env['WORK_FS']}")
w(f"- Load average before / after: {env['LOAD_BEFORE']} / {env['LOAD_AFTER']}; run took {env['ELAPSED']} s")
w(f"- Scenarios: {env.get('SCENARIOS', 'all')}")
w("")
w("## Results")
w("")
w("Ratio = mean(apopd) ÷ mean(Dovecot). Targets are those of issues 4 and 9.")
w("")
w("| metric | apopd runs | Dovecot runs | ratio | target | met |")
w("|---|---|---|---|---|---|")
for scenario, field, label, scale, target in METRICS:
    a = [None if v is None else v * scale for v in values(scenario, field, "apopd")]
    d = [None if v is None else v * scale for v in values(scenario, field, "dovecot")]
    if not a and not d:
        continue
    ma, md = mean(a), mean(d)
    ratio = ma / md if ma is not None and md not in (None, 0) else None
    tgt, met = "", ""
    if target:
        kind, bound = target
        if kind == "ratio_ge":
            tgt, ok = f"≥ {bound}×", ratio is not None and ratio >= bound
        elif kind == "ratio_le":
            tgt, ok = f"≤ {bound}×", ratio is not None and ratio <= bound
        elif kind == "abs_le":
            tgt, ok = f"apopd ≤ {bound}", ma is not None and ma <= bound
        elif kind == "abs_lt":
            tgt, ok = f"apopd < {bound}", ma is not None and ma < bound
        elif kind == "abs_ge":
            tgt, ok = f"apopd ≥ {bound}", bool(a) and None not in a and min(a) >= bound
        else:
            tgt, ok = "0", all(v == 0 for v in a if v is not None) and None not in a and bool(a)
        met = "yes" if ok else "**no**"
    w(f"| {label} | {' / '.join(fmt(v) for v in a) or 'not run'} | {' / '.join(fmt(v) for v in d) or 'not run'} "
      f"| {fmt(ratio) + '×' if ratio is not None else '–'} | {tgt} | {met} |")
w("")
w("## How to read this")
w("")
for note in [
    "Both servers run with their defaults except for limits: apopd with `max_connections` raised for the idle "
    "sessions; Dovecot in high-performance login mode (`service_count = 0`, `process_min_avail = nproc`) with "
    "process and client limits raised, a `{PLAIN}` passwd-file (APOP needs retrievable passwords) and "
    "`pop3_uidl_format = %f`. Both log every login (apopd at its default `info`, Dovecot to its log file).",
    "All logins use APOP. USER/PASS is not compared: apopd verifies argon2id (tens of ms by design), "
    "Dovecot's `{PLAIN}` is a string compare, so the figure would measure the password scheme. "
    "The apopd-only USER/PASS rows log the same users in again and again with their password, "
    "with the auth cache on (the default: one argon2id run per user, then an HMAC) and off "
    "(`auth_cache_ttl_secs = 0`: argon2id at every login).",
    "The client (pop3-load) shares the 2 cores with the server and regenerates and compares every "
    "retrieved byte; its \"client CPU (cores busy)\" row shows how much of the box it took. When it "
    "nears 1–2 cores, throughput (retr MB/s, delete-churn msg/s) is capped by the client; when client and "
    "server together stay well under 2 cores (server cores = CPU per message × messages/s), the run was "
    "bound by round trips (each client waits for every reply) and by the other tenants of the machine "
    "(see the load average). Server CPU per operation is the steadier comparison of the servers.",
    "big-mailbox: the mailbox (100,000 messages in cur/) is served by a freshly started server; for Dovecot "
    "its index files are deleted first, and for apopd its `apopd.index`, so the first login builds them "
    "(apopd reads every file whose name carries no `,W=` size). apopd computes everything at login and "
    "STAT is then free; Dovecot logs in fast and computes sizes at STAT. The derived \"login+STAT\" row "
    "compares the whole cost. The \"after restart (index kept)\" rows restart each server again after those "
    "sessions and more than apopd's 2 s settle time, keeping every index file (apopd's `apopd.index`, "
    "Dovecot's index, cache and uidlist): the first login+STAT of a server start on an unchanged mailbox.",
    "idle: memory summed over the server's processes (Dovecot: master and every child, one `pop3` process "
    "per session). PSS shares each shared page among its users; RSS counts it in every process. "
    "While the sessions are held, a fresh client (not one of them) connects, logs in with APOP, RETRs a "
    "1 KiB message and QUITs, again and again (the probe rows; QUIT not timed).",
    f"idle {MANY} (`idle [many]`): apopd only, one mailbox per session, sessions spread over "
    f"{env.get('IDLE_SOURCES', '?')} source addresses (127.0.1.x), held by {env.get('CLIENT_PROCS', '?')} "
    f"pop3-load process(es) against {env.get('APOPD_SHARDS', '?')} apopd process(es) on one mail root "
    "(more than one when the hard RLIMIT_NOFILE cannot be raised to 6 descriptors per session; memory is "
    "summed over them, and the probe goes to the first). Dovecot runs one process per logged-in "
    "session (~0.5 MiB each here), so 50,000 of them are not sensible on this 24 GiB machine: Dovecot's idle "
    "figure is the one at the smaller size above.",
    f"preauth-flood: {FLOOD}, each reading the greeting and then saying nothing; apopd runs with "
    f"`max_connections = {env.get('FLOOD_MAX_CONNECTIONS', '?')}` so the flood exceeds it, Dovecot with the "
    "same config as the other scenarios. While the flood is held the probe logs in and RETRs; \"refused\" "
    "connections got `-ERR` instead of a greeting, \"closed later\" ones were greeted and then dropped by "
    "the server (evicted to admit someone, or timed out).",
    "delete-churn: both servers get new mail by tmp→new renames from the client, so the ratio compares the "
    "same thing. The extra apopd-only rows deliver through `apopd deliver` (a process and two fsyncs per "
    "message); that scenario has no Dovecot counterpart here (its equivalent would be dovecot-lda), so "
    "it is not compared.",
    "Work files were on the filesystem named under Machine; on tmpfs fsync is free and unlinks are cheap.",
]:
    w(f"- {note}")
w("")
w("## Raw results and exact commands")
w("")
w("Every pop3-load JSON line, tagged with server and run. The `cmd` is the exact invocation "
  "(the binaries live in `$CARGO_TARGET_DIR/release`, data in a temp dir).")
w("")
w("```")
for r in rows:
    w(json.dumps(r, ensure_ascii=False))
w("```")
w("")
with open(env["OUT"], "w") as f:
    f.write("\n".join(lines))
