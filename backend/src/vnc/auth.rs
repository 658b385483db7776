//! VNC authentication (RFC 6143 section 7.2.2): the client encrypts a 16-byte challenge with
//! DES, keyed by the password. It is weak (8 characters, DES, no encryption of the session
//! afterwards): beyond loopback it keeps out the casual, and the README says to tunnel.

use des::cipher::generic_array::GenericArray;
use des::cipher::{BlockEncrypt, KeyInit};
use des::Des;

/// The password as VNC uses it: its first 8 bytes, zero-padded.
#[derive(Clone)]
pub struct Password([u8; 8]);

/// Why a password file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("reading {0}: {1}")]
    Read(std::path::PathBuf, std::io::Error),
    #[error("{0} holds no password (its first line is empty)")]
    Empty(std::path::PathBuf),
}

impl Password {
    /// The first line of `path`. VNC uses at most 8 bytes of it; the caller is told how
    /// many bytes were given.
    pub fn from_file(path: &std::path::Path) -> Result<(Password, usize), PasswordError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| PasswordError::Read(path.into(), e))?;
        let line = text.lines().next().unwrap_or("");
        if line.is_empty() {
            return Err(PasswordError::Empty(path.into()));
        }
        Ok((Password::new(line.as_bytes()), line.len()))
    }

    pub fn new(bytes: &[u8]) -> Password {
        let mut p = [0u8; 8];
        for (d, s) in p.iter_mut().zip(bytes) {
            *d = *s;
        }
        Password(p)
    }

    /// What a client that knows the password answers to `challenge`.
    pub fn response(&self, challenge: &[u8; 16]) -> [u8; 16] {
        // VNC's quirk: each key byte is used with its bits in reverse order.
        let key: Vec<u8> = self.0.iter().map(|b| b.reverse_bits()).collect();
        let des = Des::new(GenericArray::from_slice(&key));
        let mut out = *challenge;
        for block in out.chunks_exact_mut(8) {
            des.encrypt_block(GenericArray::from_mut_slice(block));
        }
        out
    }

    /// True when `answer` is the right response, compared in constant time.
    pub fn check(&self, challenge: &[u8; 16], answer: &[u8; 16]) -> bool {
        let want = self.response(challenge);
        want.iter()
            .zip(answer)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// 16 random bytes from the kernel.
pub fn challenge() -> std::io::Result<[u8; 16]> {
    let mut c = [0u8; 16];
    let mut got = 0;
    while got < c.len() {
        let rest = &mut c[got..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`, a live buffer.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += n as usize;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_follow_vnc_des_rules() {
        // Interoperability with real clients is tested end to end (guest-tests); here the
        // shape of the answer and the 8-byte rule.
        let p = Password::new(b"password");
        let zero = [0u8; 16];
        let r = p.response(&zero);
        assert_eq!(&r[..8], &r[8..], "ECB: equal blocks encrypt equally");
        assert!(p.check(&zero, &r));
        assert!(!Password::new(b"passwore").check(&zero, &r));
        // Only 8 bytes count.
        assert!(Password::new(b"password-and-more").check(&zero, &r));
        // A known answer: VNC password files hold the password DES-encrypted the same way
        // with a fixed key; TigerVNC's `echo secret | vncpasswd -f` writes these 8 bytes.
        let fixed = Password::new(&[23, 82, 107, 6, 35, 78, 88, 7]);
        let mut block = [0u8; 16];
        block[..6].copy_from_slice(b"secret");
        assert_eq!(
            fixed.response(&block)[..8],
            [0x2e, 0x2d, 0xbf, 0x57, 0x6e, 0xb0, 0x6c, 0x9e]
        );
        let c = challenge().unwrap();
        assert_ne!(c, challenge().unwrap());
    }
}
