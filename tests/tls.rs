//! STLS (RFC 2595), POP3S (RFC 8314) and the plaintext-password policy, over real TLS.

mod common;
use common::*;
use tokio::io::AsyncReadExt;

fn caps(lines: &[String]) -> Vec<&str> {
    lines.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn stls_then_login_and_capa_reflects_the_new_state() {
    let server = TestServer::start_with(TLS_CONFIG).await;
    let mut c = server.connect().await;
    let (_, before) = c.multi("CAPA").await;
    assert!(caps(&before).contains(&"STLS"), "{before:?}");
    let mut c = c.starttls().await;
    let (_, after) = c.multi("CAPA").await;
    assert!(!caps(&after).contains(&"STLS"), "{after:?}");
    assert!(caps(&after).contains(&"USER"));
    assert!(caps(&after).contains(&"SASL PLAIN LOGIN"), "{after:?}");
    // No new greeting after the handshake: the next line answers our command. Thunderbird
    // logs in with AUTH PLAIN here.
    let plain = "AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ="; // \0alice\0wonderland
    assert!(c.cmd(plain).await.starts_with("+OK alice's maildrop has 5 messages"));
    let (_, uidls) = c.multi("UIDL").await;
    assert_eq!(uidls.len(), 5);
    assert_eq!(c.cmd("RETR 1").await, "+OK 508 octets");
    assert_eq!(c.body().await.len(), 508);
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    assert!(c.closed().await);
}

#[tokio::test]
async fn stls_is_not_offered_without_a_certificate() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let (_, capa) = c.multi("CAPA").await;
    assert!(!caps(&capa).contains(&"STLS"));
    assert_eq!(c.cmd("STLS").await, "-ERR STLS is not available: no certificate is configured");
    assert_eq!(c.cmd("NOOP").await, "-ERR not logged in yet: use USER/PASS, APOP or AUTH first");
}

#[tokio::test]
async fn stls_twice_is_refused() {
    let server = TestServer::start_with(TLS_CONFIG).await;
    let mut c = server.connect().await.starttls().await;
    assert_eq!(c.cmd("STLS").await, "-ERR already using TLS");
    assert!(c.apop("alice", ALICE_APOP_SECRET).await.starts_with("+OK"));
}

#[tokio::test]
async fn stls_in_transaction_is_refused() {
    let server = TestServer::start_with(TLS_CONFIG).await;
    let mut c = server.connect().await;
    assert!(c.login("bob", BOB_PASSWORD).await.starts_with("+OK"));
    assert_eq!(c.cmd("STLS").await, "-ERR already logged in");
    assert_eq!(c.cmd("STAT").await, "+OK 2 584");
}

#[tokio::test]
async fn input_pipelined_after_stls_is_discarded() {
    let server = TestServer::start_with(TLS_CONFIG).await;
    let mut c = server.connect().await;
    // An attacker in the middle appends a command to the client's STLS.
    c.send_raw(b"STLS\r\nUSER bob\r\n").await;
    assert!(c.line().await.starts_with("+OK"));
    let greeting = c.greeting.clone();
    let tcp = c.into_inner();
    let mut c = Client::<TlsStream>::from_parts(tls_handshake(tcp).await, greeting);
    // Had USER bob survived the handshake, this PASS would log in.
    assert_eq!(c.cmd("PASS builder").await, "-ERR give USER first");
    assert!(c.login("bob", BOB_PASSWORD).await.starts_with("+OK"));
}

#[tokio::test]
async fn pop3s_outlook_like_session() {
    let server = TestServer::start_with(TLS_CONFIG).await;
    let mut c = server.connect_tls().await;
    let (_, capa) = c.multi("CAPA").await;
    assert!(!caps(&capa).contains(&"STLS"), "{capa:?}");
    assert!(c.login("bob", BOB_PASSWORD).await.starts_with("+OK"));
    let (_, uidl) = c.multi("UIDL").await;
    assert_eq!(uidl.len(), 2);
    assert!(c.cmd("RETR 1").await.starts_with("+OK"));
    let body = c.body().await;
    assert_eq!(body, crlf(&std::fs::read(&server.fixture.message_files("bob")[0]).unwrap()));
    assert!(c.cmd("DELE 1").await.starts_with("+OK"));
    assert_eq!(c.cmd("QUIT").await, "+OK apopd signing off (1 message deleted)");
    assert_eq!(server.fixture.message_files("bob").len(), 1);
}

#[tokio::test]
async fn tls_close_sends_close_notify() {
    let server = TestServer::start_with(TLS_CONFIG).await;
    let mut c = server.connect_tls().await;
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    // rustls reports a missing close_notify as an UnexpectedEof error; a clean close reads 0.
    let mut stream = c.into_inner();
    let mut rest = Vec::new();
    let read = stream.read_to_end(&mut rest).await;
    assert!(matches!(read, Ok(0)), "{read:?}");
}

#[tokio::test]
async fn plaintext_passwords_refused_on_untrusted_unencrypted_connection() {
    let fixture = Fixture::new(&format!("{TLS_CONFIG}\nsasl_mechanisms = [\"PLAIN\", \"LOGIN\", \"CRAM-MD5\"]"));
    let mut c = Client::start(session_from(&fixture, "198.51.100.7:40000")).await;
    let (_, capa) = c.multi("CAPA").await;
    let capa = caps(&capa);
    assert!(!capa.contains(&"USER"), "{capa:?}");
    assert!(capa.contains(&"SASL CRAM-MD5"), "{capa:?}");
    assert!(capa.contains(&"STLS"));
    let refused = "-ERR [AUTH] plaintext passwords are not accepted on this unencrypted connection; \
                   use STLS or APOP or CRAM-MD5";
    assert_eq!(c.cmd("USER alice").await, refused);
    assert_eq!(c.cmd("AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=").await, refused);
    assert_eq!(c.cmd("AUTH LOGIN").await, refused);
    let (_, mechanisms) = c.multi("AUTH").await;
    assert_eq!(mechanisms, vec!["CRAM-MD5"]);
    // APOP never sends the secret, so it is fine here.
    assert!(c.apop("alice", ALICE_APOP_SECRET).await.starts_with("+OK"));
}

#[tokio::test]
async fn configured_networks_may_use_plaintext() {
    let fixture = Fixture::new("plaintext_auth_networks = [\"198.51.100.0/24\"]");
    let mut lab = Client::start(session_from(&fixture, "198.51.100.7:40000")).await;
    assert!(lab.login("bob", BOB_PASSWORD).await.starts_with("+OK"));
    let mut outside = Client::start(session_from(&fixture, "203.0.113.9:40000")).await;
    assert!(outside.cmd("USER bob").await.starts_with("-ERR [AUTH]"));
}

#[tokio::test]
async fn untrusted_client_may_use_plaintext_after_stls() {
    let fixture = Fixture::new(TLS_CONFIG);
    let mut c = Client::start(session_from(&fixture, "198.51.100.7:40000")).await;
    assert_eq!(c.cmd("STLS").await, "+OK begin TLS negotiation");
    let greeting = c.greeting.clone();
    let connector = tokio_rustls::TlsConnector::from(tls_client_config());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, c.into_inner()).await.unwrap();
    let mut c = Client::from_parts(stream, greeting);
    let (_, capa) = c.multi("CAPA").await;
    assert!(caps(&capa).contains(&"USER"));
    assert!(c.login("alice", ALICE_PASSWORD).await.starts_with("+OK"));
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections_only() {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use std::process::Command;

    let fixture = Fixture::new(TLS_CONFIG);
    let server = ServerProcess::spawn(&fixture.config_path);
    let tls_addr = server.tls_addr.unwrap();
    // A second CA and a localhost certificate it signed, to reload into the server.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let new_cert = CertificateDer::from(leaf.der().to_vec());

    // Trust both the demo CA and the new one.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(std::path::Path::new(FIXTURES).join("tls/ca.pem")).unwrap()).unwrap();
    roots.add(CertificateDer::from(ca_cert.der().to_vec())).unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        connector.connect(name, tcp).await.unwrap()
    };

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let before = connect().await;
        let old_leaf = before.get_ref().1.peer_certificates().unwrap()[0].clone();
        let mut before = Client::start(before).await;
        assert!(before.login("alice", ALICE_PASSWORD).await.starts_with("+OK"));

        std::fs::write(fixture.dir.path().join("tls/cert.pem"), leaf.pem()).unwrap();
        std::fs::write(fixture.dir.path().join("tls/key.pem"), leaf_key.serialize_pem()).unwrap();
        assert!(Command::new("kill").args(["-HUP", &server.child.id().to_string()]).status().unwrap().success());

        // New connections get the new certificate once the reload has happened (bounded wait).
        let mut reloaded = false;
        for _ in 0..100 {
            let stream = connect().await;
            if stream.get_ref().1.peer_certificates().unwrap()[0] == new_cert {
                reloaded = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(reloaded, "SIGHUP did not switch the certificate");
        assert_ne!(old_leaf, new_cert);
        // The session opened before the reload goes on undisturbed.
        assert_eq!(before.cmd("STAT").await, "+OK 5 3038");
        assert!(before.cmd("QUIT").await.starts_with("+OK"));
    });
}
