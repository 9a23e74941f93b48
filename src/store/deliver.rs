//! Safe delivery into a maildir: write into `tmp/`, fsync, rename into `new/`.
//!
//! The maildir crate does exactly this dance (and unlinks the temporary file if anything
//! fails), so a message is either wholly in `new/` or not there at all.

use std::io::{self, Read, Write};
use std::path::Path;

use maildir::Maildir;

/// Store the message read from `input` in the maildir at `dir`; returns its file name in `new/`.
pub fn deliver(dir: &Path, input: &mut impl Read) -> io::Result<String> {
    let maildir = Maildir::from(dir.to_path_buf());
    maildir.create_dirs()?;
    let mut tmp = maildir.open_file_in_tmp().map_err(io::Error::other)?;
    io::copy(input, &mut tmp)?;
    tmp.flush()?;
    let id = maildir.move_tmp_to_new(tmp).map_err(io::Error::other)?;
    // Make the rename itself durable before telling the MTA the mail is safe.
    std::fs::File::open(dir.join("new"))?.sync_all()?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivered_mail_lands_whole_in_new() {
        let dir = tempfile::tempdir().unwrap();
        let id = deliver(dir.path(), &mut &b"Subject: hi\n\nthere\n"[..]).unwrap();
        assert_eq!(std::fs::read(dir.path().join("new").join(&id)).unwrap(), b"Subject: hi\n\nthere\n");
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
