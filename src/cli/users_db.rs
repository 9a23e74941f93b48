//! `apopd user add/passwd/del/list` when the accounts are in PostgreSQL (`[users] backend =
//! "postgres"`): the same prompts and checks as with the users file, on the `pop3_users` table.

use std::process::ExitCode;

use anyhow::{Context, bail};
use apopd::args::UserAction;
use apopd::auth::password;
use apopd::auth::postgres::{Accounts, Postgres};
use apopd::config::Users;

use super::Secrets;

/// Run one `apopd user` action against the database.
pub fn run(action: UserAction, users: &Users) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        match action {
            UserAction::Add { name, apop, .. } => set_credentials(users, &name, apop, true).await,
            UserAction::Passwd { name, apop, .. } => set_credentials(users, &name, apop, false).await,
            UserAction::Del { name, .. } => {
                if !Accounts::connect(users).await?.delete(&name).await? {
                    bail!("no such user {name:?}");
                }
                println!("removed {name} (the maildir is left in place)");
                Ok(ExitCode::SUCCESS)
            }
            UserAction::List { .. } => {
                for account in Accounts::connect(users).await?.list().await? {
                    let methods: Vec<&str> = [(account.password, "password"), (account.apop, "apop")]
                        .into_iter()
                        .filter_map(|(has, method)| has.then_some(method))
                        .collect();
                    println!("{} {}", account.name, methods.join(","));
                }
                Ok(ExitCode::SUCCESS)
            }
            UserAction::Import { .. } => bail!(
                "user import writes the users file; with users.backend = \"postgres\" load the \
                 hashes into pop3_users with SQL (see docs/scaling-postgres.md)"
            ),
        }
    })
}

/// For `apopd deliver`: whether the password query finds `user` (an error means "try later").
pub fn exists(users: &Users, user: &str) -> anyhow::Result<bool> {
    runtime()?.block_on(async { Ok(Postgres::new(users)?.lookup_password(user).await?.is_some()) })
}

/// For `apopd check-config`: connect and run both queries once.
pub fn probe(users: &Users) -> anyhow::Result<()> {
    runtime()?.block_on(async { Ok(Postgres::new(users)?.probe().await?) })
}

/// A small runtime for one command.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")
}

/// `user add` (`adding`) or `user passwd`: read the secrets, hash the password, write the row.
async fn set_credentials(users: &Users, name: &str, with_apop: bool, adding: bool) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        apopd::store::is_valid_user_name(name),
        "invalid user name {name:?}: use 1-64 of A-Z a-z 0-9 . _ @ + - (not starting with a dot)"
    );
    // Connect first: a database that is down fails before anyone types a password.
    let accounts = Accounts::connect(users).await?;
    let mut input = Secrets::from_stdin();
    let password = input.next_confirmed("Password: ")?;
    anyhow::ensure!(!password.is_empty(), "empty password");
    let secret = if with_apop { Some(input.next_confirmed("APOP secret: ")?) } else { None };
    anyhow::ensure!(secret.as_ref().is_none_or(|s| !s.is_empty()), "empty APOP secret");
    let hash = password::hash(password.as_bytes()).map_err(anyhow::Error::msg)?;
    if adding {
        if !accounts.add(name, &hash, secret.as_deref()).await? {
            bail!("user {name:?} exists; use `apopd user passwd`");
        }
        println!("added {name}");
    } else {
        if !accounts.set(name, &hash, secret.as_deref()).await? {
            bail!("no such user {name:?}; use `apopd user add`");
        }
        println!("updated {name}");
    }
    Ok(ExitCode::SUCCESS)
}
