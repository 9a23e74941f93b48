//! `apopd lab init DIR`: a self-contained lab server in DIR.
//!
//! DIR gets `apopd.toml` (relative paths, so DIR can be moved), `users` (argon2id hashes),
//! `apop-secrets`, `accounts` (what the handout prints), `lab.toml`, a maildir per account
//! with a welcome message under `mail/`, an empty `transcripts/`, and the handout. Secrets
//! and the handout are mode 0600. An existing, non-empty DIR is refused unless `add_groups`,
//! which adds groups after the existing ones and rewrites the handout.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use ipnet::IpNet;

use super::{
    ACCOUNTS_FILE, Account, CONFIG_FILE, LAB_FILE, LANGUAGES, Lab, MAX_GROUPS, MAX_MEMBERS, WELCOME_HEADER,
    account_name, handout, read_accounts, words, write_private,
};
use crate::auth::{password, users};
use crate::store::{MailRoot, Policy};

/// The POP3 port of a lab: 110 needs root, and a lab runs as the teacher.
pub const DEFAULT_PORT: u16 = 1110;
/// The mail domain of lab accounts when none is given (`.test` is reserved, RFC 2606).
pub const DEFAULT_DOMAIN: &str = "lab.test";

/// What `lab init` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// The lab directory.
    pub dir: PathBuf,
    /// Groups to create (with `add_groups`: to add).
    pub groups: u32,
    /// Accounts per group.
    pub members: u32,
    /// Where the server listens (default `0.0.0.0:1110`).
    pub listen: Option<SocketAddr>,
    /// The classroom network (default: loopback only).
    pub network: Option<IpNet>,
    /// The handout's language.
    pub language: String,
    /// The mail domain (default `lab.test`).
    pub domain: Option<String>,
    /// The host name or address on the handout (default: guessed).
    pub server: Option<String>,
    /// DIR is an existing lab: add groups to it.
    pub add_groups: bool,
}

/// What was made, for the message `lab init` prints.
#[derive(Debug)]
pub struct Made {
    /// The lab's settings.
    pub lab: Lab,
    /// The accounts created now.
    pub new_accounts: Vec<String>,
}

/// Create the lab (or add groups to it).
pub fn init(options: &Options) -> anyhow::Result<Made> {
    ensure!(options.groups >= 1, "--groups: at least 1");
    let dir = &options.dir;
    let (lab, first_new_group) = if options.add_groups {
        let mut lab = Lab::load(dir).context("--add-groups needs a lab made by `apopd lab init`")?;
        let first = lab.groups + 1;
        lab.groups += options.groups;
        (lab, first)
    } else {
        refuse_existing(dir)?;
        (new_lab(options)?, 1)
    };
    ensure!(
        lab.groups <= MAX_GROUPS,
        "--groups: at most {MAX_GROUPS} groups in one lab (account names have two digits)"
    );
    ensure!((1..=MAX_MEMBERS).contains(&lab.members), "--members: 1 to {MAX_MEMBERS}");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    if !options.add_groups {
        write_private(&dir.join(CONFIG_FILE), config_text(&lab, options.listen).as_bytes())?;
        std::fs::DirBuilder::new().mode(0o700).create(dir.join("transcripts")).context("cannot create transcripts/")?;
    }
    let mut accounts = if options.add_groups { read_accounts(dir)? } else { Vec::new() };
    let mut new_accounts = Vec::new();
    for group in first_new_group..=lab.groups {
        for member in 0..lab.members {
            let name = account_name(group, member);
            ensure!(!accounts.iter().any(|a: &Account| a.name == name), "account {name} exists already");
            accounts.push(Account { name: name.clone(), password: words::generate()?, secret: words::generate()? });
            new_accounts.push(name);
        }
    }
    write_credentials(dir, &accounts, &new_accounts)?;
    let root = MailRoot::new(&dir.join("mail/{user}").to_string_lossy())?.with_policy(Policy::default());
    for name in &new_accounts {
        let location = root.locate(name).with_context(|| format!("invalid account name {name}"))?;
        let message = welcome_message(&lab, name);
        crate::store::deliver::deliver(
            &location,
            root.policy(),
            &crate::config::default_hostname(),
            &mut message.as_bytes(),
        )
        .with_context(|| format!("cannot put the welcome message into {name}'s maildir"))?;
    }
    write_private(&dir.join(LAB_FILE), toml::to_string(&lab).context("cannot write lab.toml")?.as_bytes())?;
    let (markdown, html) = handout::render(&lab, &accounts);
    write_private(&dir.join("handout.md"), markdown.as_bytes())?;
    write_private(&dir.join("handout.html"), html.as_bytes())?;
    Ok(Made { lab, new_accounts })
}

/// A new DIR must not exist or be empty: a lab is never overwritten.
fn refuse_existing(dir: &Path) -> anyhow::Result<()> {
    let empty = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    ensure!(empty, "{} exists and is not empty; to add groups to the lab in it, use --add-groups", dir.display());
    Ok(())
}

fn new_lab(options: &Options) -> anyhow::Result<Lab> {
    ensure!(
        LANGUAGES.contains(&options.language.as_str()),
        "--language: {:?} is not one of {}",
        options.language,
        LANGUAGES.join(", ")
    );
    let loopback = ipnet::Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).context("the loopback network")?;
    let network = options.network.unwrap_or(IpNet::V4(loopback));
    let listen = options.listen.unwrap_or(SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)));
    let server = match &options.server {
        Some(server) => server.clone(),
        None => guess_server(listen, network),
    };
    let domain = options.domain.clone().unwrap_or_else(|| DEFAULT_DOMAIN.to_owned());
    ensure!(
        !domain.is_empty() && domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'),
        "--domain: {domain:?} is not a domain name"
    );
    Ok(Lab {
        groups: options.groups,
        members: options.members,
        language: options.language.clone(),
        server,
        port: listen.port(),
        domain,
        network,
    })
}

/// What the handout calls the server: the listen address if it is one, else this machine's
/// address in the classroom network, else its host name.
fn guess_server(listen: SocketAddr, network: IpNet) -> String {
    if !listen.ip().is_unspecified() {
        return listen.ip().to_string();
    }
    let in_network = nix::ifaddrs::getifaddrs().ok().and_then(|mut addrs| {
        addrs.find_map(|ifaddr| {
            let ip = IpAddr::V4(ifaddr.address?.as_sockaddr_in()?.ip());
            (network.contains(&ip) && !ip.is_loopback()).then_some(ip)
        })
    });
    match in_network {
        Some(ip) => ip.to_string(),
        None if network.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)) => "127.0.0.1".to_owned(),
        None => crate::config::default_hostname(),
    }
}

/// The server's config: relative paths, so the lab directory can be moved.
fn config_text(lab: &Lab, listen: Option<SocketAddr>) -> String {
    let listen = listen.unwrap_or(SocketAddr::from(([0, 0, 0, 0], lab.port)));
    format!(
        "# A POP3 lab made by `apopd lab init`: run it with `apopd serve --config {CONFIG_FILE}`.\n\
         # Paths are relative to this file. See docs/lab.md and docs/configuration.md.\n\
         listen = [\"{listen}\"]\n\
         mail_root = \"mail/{{user}}\"\n\
         users_file = \"users\"\n\
         apop_secrets_file = \"apop-secrets\"\n\
         # Students type USER/PASS in the clear from the classroom network (no TLS in the lab).\n\
         plaintext_auth_networks = [\"{network}\"]\n\
         # One group's typos must not lock out a classroom behind one NAT address.\n\
         lab_networks = [\"{network}\"]\n\
         # What each session did, for `apopd lab report` (no passwords, secrets or mail).\n\
         transcript_dir = \"transcripts\"\n\
         # Replies in the students' language (they may switch with LANG), and -ERR texts that\n\
         # explain the mistake (never anything about credentials).\n\
         language = \"{language}\"\n\
         lab_hints = true\n",
        network = lab.network,
        language = lab.language,
    )
}

fn write_credentials(dir: &Path, accounts: &[Account], new_accounts: &[String]) -> anyhow::Result<()> {
    let mut listed = users::Entries::new();
    let mut secrets = users::read_entries(&dir.join("apop-secrets"), true)?;
    let mut hashes = users::read_entries(&dir.join("users"), true)?;
    for account in accounts {
        listed.insert(account.name.clone(), format!("{}:{}", account.password, account.secret));
        if new_accounts.contains(&account.name) {
            secrets.insert(account.name.clone(), account.secret.clone());
            hashes
                .insert(account.name.clone(), password::hash(account.password.as_bytes()).map_err(anyhow::Error::msg)?);
        }
    }
    users::write_entries(&dir.join("users"), &hashes, &[])?;
    users::write_entries(&dir.join("apop-secrets"), &secrets, &[])?;
    users::write_entries(&dir.join(ACCOUNTS_FILE), &listed, &[])?;
    Ok(())
}

/// The welcome message: plain UTF-8 text, marked so the report can tell it from real mail.
fn welcome_message(lab: &Lab, user: &str) -> String {
    let body = handout::welcome(&lab.language, user).replace('\n', "\r\n");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let date = rfc5322_date(now.as_secs());
    format!(
        "From: POP3 lab <lab@{domain}>\r\n\
         To: {user}@{domain}\r\n\
         Subject: Welcome to the POP3 lab, {user}\r\n\
         Date: {date}\r\n\
         {WELCOME_HEADER}\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         {body}",
        domain = lab.domain,
    )
}

/// `Tue, 01 Dec 2026 09:45:00 +0000` for seconds since the epoch.
fn rfc5322_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (date, time) = crate::transcript::utc(secs);
    let mut parts = date.split('-').map(|p| p.parse::<usize>().unwrap_or(1));
    let (year, month, day) = (parts.next().unwrap_or(1970), parts.next().unwrap_or(1), parts.next().unwrap_or(1));
    let weekday = DAYS[(secs / 86_400 % 7) as usize];
    format!("{weekday}, {day:02} {} {year} {time} +0000", MONTHS[(month + 11) % 12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(1_796_118_300), "Tue, 01 Dec 2026 09:45:00 +0000");
    }
}
