//! SASL AUTH (RFC 5034) over TCP: PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-256.

mod common;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

const ALL: &str = "sasl_mechanisms = [\"SCRAM-SHA-256\", \"CRAM-MD5\", \"PLAIN\", \"LOGIN\"]";
const FAILED: &str = "-ERR [AUTH] invalid user name or password";

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// The decoded challenge of a `+ …` continuation line.
fn challenge(line: &str) -> Vec<u8> {
    let encoded = line.strip_prefix("+ ").unwrap_or_else(|| panic!("not a continuation: {line}"));
    B64.decode(encoded).expect("challenge is base64")
}

async fn server() -> TestServer {
    TestServer::start_with(ALL).await
}

#[tokio::test]
async fn auth_alone_lists_the_configured_mechanisms() {
    let server = server().await;
    let mut c = server.connect().await;
    let (status, mechanisms) = c.multi("AUTH").await;
    assert!(status.starts_with("+OK"));
    assert_eq!(mechanisms, vec!["SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN"]);
    let (_, capa) = c.multi("CAPA").await;
    assert!(capa.contains(&"SASL SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN".to_owned()), "{capa:?}");
    // The default offers only the password mechanisms.
    let plain_only = TestServer::start().await;
    let (_, mechanisms) = plain_only.connect().await.multi("AUTH").await;
    assert_eq!(mechanisms, vec!["PLAIN", "LOGIN"]);
}

#[tokio::test]
async fn plain_with_and_without_initial_response() {
    let server = server().await;
    let mut c = server.connect().await;
    assert!(c.cmd(&format!("AUTH PLAIN {}", b64(b"\0bob\0builder"))).await.starts_with("+OK bob's maildrop"));

    let mut c = server.connect().await;
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    assert!(c.cmd(&b64(b"alice\0alice\0wonderland")).await.starts_with("+OK alice's maildrop"));
}

#[tokio::test]
async fn plain_failures_look_like_any_failed_login() {
    let server = server().await;
    let mut c = server.connect().await;
    assert_eq!(c.cmd(&format!("AUTH PLAIN {}", b64(b"\0bob\0wrong"))).await, FAILED);
    assert_eq!(c.cmd(&format!("AUTH PLAIN {}", b64(b"\0nobody\0builder"))).await, FAILED);
    // Acting as another user (authzid) is refused.
    assert_eq!(c.cmd(&format!("AUTH PLAIN {}", b64(b"alice\0bob\0builder"))).await, FAILED);
    assert!(c.cmd(&format!("AUTH PLAIN {}", b64(b"bob\0builder"))).await.starts_with("-ERR PLAIN needs"));
    assert!(c.login("bob", BOB_PASSWORD).await.starts_with("+OK"), "session still usable");
}

#[tokio::test]
async fn login_mechanism() {
    let server = server().await;
    let mut c = server.connect().await;
    assert_eq!(challenge(&c.cmd("AUTH LOGIN").await), b"Username:");
    assert_eq!(challenge(&c.cmd(&b64(b"alice")).await), b"Password:");
    assert!(c.cmd(&b64(b"wonderland")).await.starts_with("+OK alice's"));

    let mut c = server.connect().await;
    // Initial response carries the user name (Outlook style).
    assert_eq!(challenge(&c.cmd(&format!("AUTH LOGIN {}", b64(b"bob"))).await), b"Password:");
    assert_eq!(c.cmd(&b64(b"nope")).await, FAILED);
}

fn cram_response(user: &str, secret: &str, challenge: &[u8]) -> String {
    let mut mac = <Hmac<md5::Md5> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(challenge);
    let digest = base16ct::lower::encode_string(&mac.finalize().into_bytes());
    b64(format!("{user} {digest}").as_bytes())
}

#[tokio::test]
async fn cram_md5() {
    let server = server().await;
    let mut c = server.connect().await;
    let ch = challenge(&c.cmd("AUTH CRAM-MD5").await);
    let text = String::from_utf8(ch.clone()).unwrap();
    assert!(text.starts_with('<') && text.ends_with('>') && text.contains('@'), "{text}");
    assert!(c.cmd(&cram_response("alice", ALICE_APOP_SECRET, &ch)).await.starts_with("+OK alice's"));

    let mut c = server.connect().await;
    let ch = challenge(&c.cmd("AUTH CRAM-MD5").await);
    assert_eq!(c.cmd(&cram_response("alice", "wrong", &ch)).await, FAILED);
    // bob has no server-known secret: even his password cannot work.
    let ch = challenge(&c.cmd("AUTH CRAM-MD5").await);
    assert_eq!(c.cmd(&cram_response("bob", BOB_PASSWORD, &ch)).await, FAILED);
    // CRAM-MD5 has no initial response.
    assert!(c.cmd("AUTH CRAM-MD5 AAAA").await.starts_with("-ERR"));
}

/// A SCRAM-SHA-256 client (RFC 5802) for the test.
async fn scram_login(c: &mut Client, user: &str, password: &str, initial: bool) -> String {
    let client_nonce = "fyko+d2lbbFgONRv9qkxdawL";
    let bare = format!("n={user},r={client_nonce}");
    let first = b64(format!("n,,{bare}").as_bytes());
    let reply = if initial {
        c.cmd(&format!("AUTH SCRAM-SHA-256 {first}")).await
    } else {
        assert_eq!(c.cmd("AUTH SCRAM-SHA-256").await, "+ ");
        c.cmd(&first).await
    };
    let server_first = String::from_utf8(challenge(&reply)).unwrap();
    let mut fields = server_first.split(',');
    let nonce = fields.next().unwrap().strip_prefix("r=").unwrap().to_owned();
    let salt = B64.decode(fields.next().unwrap().strip_prefix("s=").unwrap()).unwrap();
    let rounds: u32 = fields.next().unwrap().strip_prefix("i=").unwrap().parse().unwrap();
    assert!(nonce.starts_with(client_nonce));
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, rounds, &mut salted);
    let hmac = |key: &[u8], data: &[u8]| {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    };
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(&client_key);
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let signature = hmac(&stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = client_key.iter().zip(signature).map(|(k, s)| k ^ s).collect();
    let reply = c.cmd(&b64(format!("{without_proof},p={}", b64(&proof)).as_bytes())).await;
    if !reply.starts_with("+ ") {
        return reply;
    }
    let server_final = String::from_utf8(challenge(&reply)).unwrap();
    let expected = hmac(&hmac(&salted, b"Server Key"), auth_message.as_bytes());
    assert_eq!(server_final, format!("v={}", b64(&expected)), "server signature");
    c.cmd("").await
}

#[tokio::test]
async fn scram_sha_256() {
    let server = server().await;
    let mut c = server.connect().await;
    assert!(scram_login(&mut c, "alice", ALICE_APOP_SECRET, false).await.starts_with("+OK alice's"));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    let mut c = server.connect().await;
    assert!(scram_login(&mut c, "alice", ALICE_APOP_SECRET, true).await.starts_with("+OK alice's"));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    let mut c = server.connect().await;
    assert_eq!(scram_login(&mut c, "alice", "wrong", true).await, FAILED);
    assert_eq!(scram_login(&mut c, "nobody", "wrong", true).await, FAILED);
}

#[tokio::test]
async fn cancel_bad_base64_and_overlong_responses() {
    let server = server().await;
    let mut c = server.connect().await;
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    assert_eq!(c.cmd("*").await, "-ERR authentication cancelled");
    assert_eq!(c.cmd("AUTH LOGIN").await, format!("+ {}", b64(b"Username:")));
    assert_eq!(c.cmd("!!not base64!!").await, "-ERR response is not valid base64; authentication aborted");
    assert_eq!(c.cmd("AUTH PLAIN !!!").await, "-ERR initial response is not valid base64");
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    assert_eq!(c.cmd(&"A".repeat(5000)).await, "-ERR line too long (limit: 2048 octets)");
    assert_eq!(c.cmd("AUTH KERBEROS_V4").await, "-ERR unsupported SASL mechanism; AUTH alone lists them");
    // After all that, the session still works.
    assert!(c.cmd(&format!("AUTH PLAIN {}", b64(b"\0bob\0builder"))).await.starts_with("+OK"));
    assert_eq!(c.cmd("AUTH").await, "-ERR already logged in");
}
