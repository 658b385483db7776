//! Certificates for the TLS tests, made fresh for each: a CA, a server certificate it signs
//! (for `localhost` and 127.0.0.1), and a stranger CA that signed nothing of ours.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A CA and a server certificate it issued, in PEM.
pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// A CA that issued nothing here: a client trusting only it must refuse the server.
    pub stranger_ca_pem: String,
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

impl Pki {
    pub fn new() -> Pki {
        let (ca_pem, issuer) = ca("vhost-gpu test CA");
        let (stranger_ca_pem, _) = ca("a stranger CA");
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "vhost-gpu test server");
        let cert = params.signed_by(&key, &issuer).unwrap();
        Pki {
            ca_pem,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            stranger_ca_pem,
        }
    }

    /// Writes ca.pem, server-cert.pem, server-key.pem and stranger-ca.pem into `dir`; returns
    /// the paths of the certificate and key.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("ca.pem"), &self.ca_pem).unwrap();
        std::fs::write(dir.join("stranger-ca.pem"), &self.stranger_ca_pem).unwrap();
        std::fs::write(dir.join("server-cert.pem"), &self.cert_pem).unwrap();
        std::fs::write(dir.join("server-key.pem"), &self.key_pem).unwrap();
        (dir.join("server-cert.pem"), dir.join("server-key.pem"))
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}
