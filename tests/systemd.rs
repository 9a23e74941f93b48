//! systemd integration and privilege drop, with the real binary: socket activation
//! (LISTEN_FDS), sd_notify READY/STOPPING, and dropping root to `run_as_user`.

mod common;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Start `apopd serve` as systemd would: `listener` as fd 3, LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES
/// set for the child itself, and NOTIFY_SOCKET pointing at `notify`.
fn spawn_activated(
    fixture: &Fixture,
    listener: &TcpListener,
    name: &str,
    notify: &std::path::Path,
) -> std::process::Child {
    let fd = listener.as_raw_fd();
    let mut command = Command::new("sh");
    command
        .arg("-c")
        // exec keeps the shell's pid, so LISTEN_PID=$$ names the server.
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=\"$1\" exec \"$0\" serve --config \"$2\"")
        .arg(env!("CARGO_BIN_EXE_apopd"))
        .arg(name)
        .arg(&fixture.config_path)
        .env("NOTIFY_SOCKET", notify)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            use nix::fcntl::{FcntlArg, FdFlag, fcntl};
            use std::os::fd::BorrowedFd;
            let listener = BorrowedFd::borrow_raw(fd);
            if fd != 3 {
                // The new descriptor must outlive this closure: it is the child's fd 3.
                std::mem::forget(nix::unistd::dup2_raw(listener, 3)?);
            }
            fcntl(BorrowedFd::borrow_raw(3), FcntlArg::F_SETFD(FdFlag::empty()))?;
            Ok(())
        });
    }
    command.spawn().expect("spawn apopd")
}

fn notify_socket() -> (tempfile::TempDir, std::path::PathBuf, UnixDatagram) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    (dir, path, socket)
}

fn receive(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification within 30 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn stop(child: &mut std::process::Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
}

#[test]
fn socket_activation_and_readiness() {
    // The config's own listen address is never bound: only the passed socket is used.
    let fixture = Fixture::new("listen = [\"127.0.0.1:9\"]");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (_dir, notify, socket) = notify_socket();
    let mut child = spawn_activated(&fixture, &listener, "pop3", &notify);
    drop(listener);
    assert_eq!(receive(&socket), "READY=1\n");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut c = Client::connect(addr).await;
        assert!(c.apop("alice", ALICE_APOP_SECRET).await.starts_with("+OK alice's maildrop has 5 messages"));
        assert!(c.cmd("QUIT").await.starts_with("+OK"));
    });

    stop(&mut child);
    assert_eq!(receive(&socket), "STOPPING=1\n");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn activated_pop3s_socket_speaks_tls() {
    let fixture = Fixture::new("tls_cert = \"tls/cert.pem\"\ntls_key = \"tls/key.pem\"");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (_dir, notify, socket) = notify_socket();
    let mut child = spawn_activated(&fixture, &listener, "pop3s", &notify);
    drop(listener);
    assert_eq!(receive(&socket), "READY=1\n");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut c = Client::start(tls_handshake(tcp).await).await;
        assert!(c.login("bob", BOB_PASSWORD).await.starts_with("+OK bob's maildrop has 2 messages"));
    });
    stop(&mut child);
    assert!(child.wait().unwrap().success());
}

#[test]
fn activated_pop3_proxy_socket_wants_a_proxy_header() {
    let fixture = Fixture::new("proxy_trusted_networks = [\"127.0.0.1/32\"]");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (_dir, notify, socket) = notify_socket();
    let mut child = spawn_activated(&fixture, &listener, "pop3-proxy", &notify);
    drop(listener);
    assert_eq!(receive(&socket), "READY=1\n");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use tokio::io::AsyncWriteExt;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 4242 110\r\n").await.unwrap();
        let mut c = Client::start(tcp).await;
        // 192.0.2.7 is not loopback and not in plaintext_auth_networks: USER is refused, which
        // the real peer (127.0.0.1) would have been allowed.
        assert!(c.cmd("USER bob").await.starts_with("-ERR"), "the header's client address is used");
        // Without a header the socket gives no greeting.
        let mut bare = tokio::net::TcpStream::connect(addr).await.unwrap();
        bare.write_all(b"CAPA\r\n").await.unwrap();
        let mut got = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(10), tokio::io::AsyncReadExt::read_to_end(&mut bare, &mut got))
                .await;
        assert!(got.is_empty(), "{got:?}");
    });
    stop(&mut child);
    assert!(child.wait().unwrap().success());
}

#[test]
fn root_drops_to_run_as_user() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:").map(|v| v.split_whitespace().next().unwrap_or("").to_owned()))
        .unwrap();
    if uid != "0" {
        eprintln!("skipped: dropping privileges can only be tested as root (running as uid {uid})");
        return;
    }
    let fixture = Fixture::new("run_as_user = \"nobody\"");
    let server = ServerProcess::spawn(&fixture.config_path);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let ids = |key: &str| {
        status.lines().find_map(|l| l.strip_prefix(key)).unwrap().split_whitespace().collect::<Vec<_>>().join(" ")
    };
    assert_eq!(ids("Uid:"), "65534 65534 65534 65534", "real, effective, saved and fs uid all nobody");
    assert_eq!(ids("Gid:"), "65534 65534 65534 65534");
    assert_eq!(ids("Groups:"), "65534");

    let unknown = Fixture::new("run_as_user = \"no-such-user-apopd\"");
    let out = Command::new(env!("CARGO_BIN_EXE_apopd"))
        .args(["serve", "--config"])
        .arg(&unknown.config_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("run_as_user: no such user \"no-such-user-apopd\""));
}
