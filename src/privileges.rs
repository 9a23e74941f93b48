//! Dropping root after the privileged work (binding ports 110/995, reading the TLS key).

use anyhow::{Context, bail};
use nix::unistd::{Gid, Group, Uid, User, geteuid, setgid, setgroups, setuid};

/// Become `user` (and `group`, default the user's primary group) when running as root.
///
/// Without `user`, running as root is allowed (containers, the demo) but logged loudly.
pub fn drop_to(user: Option<&str>, group: Option<&str>) -> anyhow::Result<()> {
    let Some(name) = user else {
        if geteuid().is_root() {
            tracing::warn!("running as root: set run_as_user so a compromise of apopd is not a compromise of the host");
        }
        return Ok(());
    };
    let account = User::from_name(name)
        .with_context(|| format!("run_as_user: cannot look up {name:?}"))?
        .with_context(|| format!("run_as_user: no such user {name:?}"))?;
    if !geteuid().is_root() {
        if geteuid() != account.uid {
            tracing::warn!(run_as_user = name, "not started as root, so staying the current user");
        }
        return Ok(());
    }
    let gid: Gid = match group {
        Some(g) => {
            Group::from_name(g)
                .with_context(|| format!("run_as_group: cannot look up {g:?}"))?
                .with_context(|| format!("run_as_group: no such group {g:?}"))?
                .gid
        }
        None => account.gid,
    };
    // Order matters: groups first, while we may still change them.
    setgroups(&[gid]).context("setgroups")?;
    setgid(gid).context("setgid")?;
    setuid(account.uid).context("setuid")?;
    if setuid(Uid::from_raw(0)).is_ok() {
        bail!("dropped to {name:?} but could regain root: refusing to run");
    }
    tracing::info!(user = name, uid = account.uid.as_raw(), gid = gid.as_raw(), "dropped root privileges");
    Ok(())
}
