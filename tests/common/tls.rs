//! A self-signed certificate for `localhost`, written to a temporary directory, for gateways
//! that listen with TLS in tests.

use std::path::PathBuf;

pub struct TestCert {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// The certificate as PEM (it is its own CA).
    pub pem: String,
    _dir: tempfile::TempDir,
}

impl TestCert {
    pub fn localhost() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
        std::fs::write(&key_path, cert.key_pair.serialize_pem()).expect("write key");
        TestCert { cert_path, key_path, pem: cert.cert.pem(), _dir: dir }
    }

    /// `tls: { cert, key [, extra] }` for the `server` section.
    pub fn listen_yaml(&self, extra: &str) -> String {
        let sep = if extra.is_empty() { "" } else { ", " };
        format!("tls: {{ cert: \"{}\", key: \"{}\"{sep}{extra} }}", self.cert_path.display(), self.key_path.display())
    }

    /// The certificate as a CA clients trust.
    pub fn ca(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(self.pem.as_bytes()).expect("CA")
    }
}
