//! The harness itself works: login, list and quit against the demo over TCP.

mod common;
use common::*;

#[tokio::test]
async fn demo_login_and_stat() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    assert!(c.login("alice", ALICE_PASSWORD).await.starts_with("+OK alice's maildrop has 5 messages"));
    assert_eq!(c.cmd("STAT").await, "+OK 5 3038");
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    assert!(c.closed().await);
}

#[test]
fn separate_process_serves() {
    let fixture = Fixture::new("");
    let process = ServerProcess::spawn(&fixture.config_path);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut c = Client::connect(process.addr).await;
        assert!(c.apop("alice", ALICE_APOP_SECRET).await.starts_with("+OK"));
    });
}
