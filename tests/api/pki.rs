//! Certificates the tests make for themselves (rcgen): certificate authorities and the
//! certificates they sign, as PEM.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
};

/// A new CA named `name`: its certificate (PEM) and what signs with it.
pub fn authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// A certificate signed by `issuer` with exactly `subject` (in DER order) and the DNS `names`:
/// the certificate and its key, as PEM.
pub fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    subject: &[(DnType, &str)],
    names: Vec<String>,
) -> (String, String) {
    let mut params = CertificateParams::new(names).unwrap();
    // rcgen's default subject has a common name of its own.
    params.distinguished_name = DistinguishedName::new();
    for (kind, value) in subject {
        params.distinguished_name.push(kind.clone(), *value);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}
