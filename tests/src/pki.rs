//! A test PKI made with the openssl CLI: CAs and server certificates signed by them, for the
//! agent's API over TLS and for replays to https targets.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use crate::run_ok;

/// Runs `openssl ARGS` in `dir`, failing with its stderr.
pub fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    run_ok(Command::new("openssl").current_dir(dir).args(args))?;
    Ok(())
}

/// `openssl req` arguments that make a new P-256 key (unencrypted, into `key`), then `rest`.
pub fn new_key_request<'a>(key: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        key,
    ];
    args.extend_from_slice(rest);
    args
}

/// A CA (`NAME.crt`, `NAME.key`) made with the openssl CLI in `dir`.
pub fn make_ca(dir: &Path, name: &str) -> Result<PathBuf> {
    let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
    let subject = format!("/CN=capture test {name}");
    let rest = ["-x509", "-out", &crt, "-days", "2", "-subj", &subject];
    openssl(dir, &new_key_request(&key, &rest))?;
    Ok(dir.join(crt))
}

/// A server certificate for `san` (an openssl subjectAltName value, e.g.
/// `IP:10.0.0.2,DNS:name.test`) signed by CA `ca`, with subject CN=`cn` and serial `serial`:
/// (certificate PEM, key PEM); also written to `CN.crt` and `CN.key` in `dir`.
pub fn make_server_cert(
    dir: &Path,
    ca: &str,
    san: &str,
    cn: &str,
    serial: &str,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let ext = dir.join(format!("{cn}.ext"));
    std::fs::write(
        &ext,
        format!(
            "subjectAltName={san}\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
        ),
    )?;
    let (key, csr, crt) = (
        format!("{cn}.key"),
        format!("{cn}.csr"),
        format!("{cn}.crt"),
    );
    let subject = format!("/CN={cn}");
    openssl(
        dir,
        &new_key_request(&key, &["-out", &csr, "-subj", &subject]),
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-set_serial",
            serial,
            "-days",
            "2",
            "-out",
            &crt,
            "-extfile",
            &ext.display().to_string(),
        ],
    )?;
    Ok((std::fs::read(dir.join(crt))?, std::fs::read(dir.join(key))?))
}
