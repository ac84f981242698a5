//! Shared-secret authentication: reading the secret, comparing it.
//!
//! When the server has a secret, every native connection must send AUTH
//! with it before anything but HELLO is answered (docs/PROTOCOL.md, "AUTH").
//! The original protocol has no way to authenticate, so its clients are
//! refused unless the operator allows them explicitly.

use std::path::Path;

/// Shortest secret accepted: 16 bytes is 128 bits when random.
pub const SECRET_LEN_MIN: usize = 16;

/// Longest secret: its length is a u8 on the wire. An AUTH carrying it fits
/// every valid `frame_size_max` (`AUTH_SIZE_MAX`).
pub const SECRET_LEN_MAX: usize = 255;

/// Where the daemon and the client tools look for the secret's file when
/// no `--auth-secret-file` is given.
pub const SECRET_FILE_ENV: &str = "DISTLOCKD_AUTH_SECRET_FILE";

/// Secret bytes that never show in debug output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Secret {
    fn from(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<secret of {} bytes>", self.0.len())
    }
}

#[cfg(feature = "server")]
/// The server's authentication settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    secret: Secret,
    /// Serve the original protocol without authentication.
    pub allow_legacy: bool,
}

#[cfg(feature = "server")]
impl Auth {
    /// Checks the secret's length; the error names the bound.
    pub fn new(secret: Vec<u8>, allow_legacy: bool) -> Result<Auth, String> {
        check_secret_len(secret.len())?;
        Ok(Auth {
            secret: Secret(secret),
            allow_legacy,
        })
    }

    /// Whether `given` is the secret, in time that depends only on the
    /// secret's length, never on where the bytes first differ.
    pub fn accepts(&self, given: &[u8]) -> bool {
        secrets_match(&self.secret.0, given)
    }
}

fn check_secret_len(len: usize) -> Result<(), String> {
    if (SECRET_LEN_MIN..=SECRET_LEN_MAX).contains(&len) {
        Ok(())
    } else {
        Err(format!(
            "the auth secret is {len} bytes; use {SECRET_LEN_MIN} to {SECRET_LEN_MAX} bytes, for example from `head -c 32 /dev/urandom | base64`"
        ))
    }
}

#[cfg(feature = "server")]
/// Constant-time comparison: every byte of `expected` is compared, and
/// the result is read only at the end.
pub fn secrets_match(expected: &[u8], given: &[u8]) -> bool {
    let mut diff = expected.len() ^ given.len();
    for (i, &byte) in expected.iter().enumerate() {
        let other = given.get(i).copied().unwrap_or(!byte);
        diff |= usize::from(byte ^ other);
    }
    std::hint::black_box(diff) == 0
}

/// Reads a secret file: its bytes without the trailing line break and
/// white space. Errors name the file and what to do. Returns a warning to
/// log when the file can be read by group or others.
pub fn read_secret_file(path: &Path) -> Result<(Vec<u8>, Option<String>), String> {
    let shown = path.display();
    let mut bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read the auth secret file {shown}: {e}"))?;
    while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
        bytes.pop();
    }
    check_secret_len(bytes.len()).map_err(|e| format!("{shown}: {e}"))?;
    let warning = group_or_world_readable(path).then(|| {
        format!("the auth secret file {shown} can be read by other users; run `chmod 600 {shown}`")
    });
    Ok((bytes, warning))
}

#[cfg(unix)]
fn group_or_world_readable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o044 != 0)
}

#[cfg(not(unix))]
fn group_or_world_readable(_: &Path) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(feature = "server")]
    fn only_the_exact_secret_matches() {
        let auth = Auth::new(b"0123456789abcdef".to_vec(), false).unwrap();
        assert!(auth.accepts(b"0123456789abcdef"));
        assert!(!format!("{auth:?}").contains("0123"), "{auth:?}");
        for wrong in [
            &b""[..],
            b"0123456789abcde",
            b"0123456789abcdeF",
            b"0123456789abcdef0",
            b"x123456789abcdef",
        ] {
            assert!(!auth.accepts(wrong), "{wrong:?}");
        }
        // A given secret that differs only past the expected length, or
        // whose length differs by a multiple of 256, still fails.
        let long = [b"0123456789abcdef".as_slice(), &[0u8; 256]].concat();
        assert!(!auth.accepts(&long));
    }

    #[test]
    #[cfg(feature = "server")]
    fn secret_length_is_bounded() {
        assert!(Auth::new(vec![b'a'; SECRET_LEN_MIN - 1], false).is_err());
        assert!(Auth::new(vec![b'a'; SECRET_LEN_MAX + 1], false).is_err());
        assert!(Auth::new(vec![b'a'; SECRET_LEN_MIN], false).is_ok());
        let err = Auth::new(vec![b'a'; 3], false).unwrap_err();
        assert!(
            err.contains("3 bytes") && err.contains("16 to 255"),
            "{err}"
        );
    }

    #[test]
    fn secret_files_are_trimmed_and_checked() {
        let dir = std::env::temp_dir().join(format!("distlockd-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, "0123456789abcdef\n").unwrap();
        let (secret, _) = read_secret_file(&path).unwrap();
        assert_eq!(secret, b"0123456789abcdef");
        std::fs::write(&path, "short\n").unwrap();
        let err = read_secret_file(&path).unwrap_err();
        assert!(err.contains("5 bytes"), "{err}");
        let missing = read_secret_file(&dir.join("missing")).unwrap_err();
        assert!(
            missing.contains("cannot read the auth secret file"),
            "{missing}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
