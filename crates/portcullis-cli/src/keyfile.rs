//! The session key file: one `id:base64` key per line, current key first, mode 0600.

use std::io::Write;
use std::path::Path;

use portcullis::session::{Key, KeyRing};

pub fn default_key_id() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("k{secs}")
}

/// Reads the key ring from `path`, generating a first key if the file does not exist.
pub fn load_or_create(path: &Path) -> Result<KeyRing, String> {
    if !path.exists() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        write_private(
            path,
            &format!("{}\n", Key::generate_spec(&default_key_id())),
        )?;
        tracing::info!(path = %path.display(), "generated a new session key file");
    }
    read(path)
}

pub fn read(path: &Path) -> Result<KeyRing, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
    let keys = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| Key::parse(l).map_err(|e| format!("{}: {e}", path.display())))
        .collect::<Result<Vec<_>, _>>()?;
    KeyRing::new(keys)
}

/// Prepends a new key; keeps at most `keep` keys when given.
pub fn rotate(path: &Path, keep: Option<usize>) -> Result<String, String> {
    read(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut id = default_key_id();
    while text.lines().any(|l| l.starts_with(&format!("{id}:"))) {
        id.push('x');
    }
    let mut lines = vec![Key::generate_spec(&id)];
    lines.extend(
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned),
    );
    if let Some(k) = keep {
        lines.truncate(k.max(1));
    }
    write_private(path, &(lines.join("\n") + "\n"))?;
    Ok(id)
}

fn write_private(path: &Path, content: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(&tmp)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    f.write_all(content.as_bytes()).map_err(|e| e.to_string())?;
    f.sync_all().map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
}

/// The gateway's DPoP key (a private JWK): read from `file.path`, or generated there with
/// `file.alg` (mode 0600) when the file is missing and may be generated.
pub fn load_or_create_dpop(
    file: &crate::config::DpopKeyFile,
) -> Result<portcullis_token::DpopKey, String> {
    let path = &file.path;
    if !path.exists() && file.generate {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let key =
            portcullis_token::DpopKey::generate(file.alg).map_err(|e| format!("DPoP key: {e}"))?;
        write_private(path, &format!("{}\n", key.private_jwk().expose_secret()))?;
        tracing::info!(path = %path.display(), jkt = key.thumbprint(), "generated a new DPoP key file");
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read DPoP key file {}: {e}", path.display()))?;
    portcullis_token::DpopKey::from_jwk(&text).map_err(|e| format!("{}: {e}", path.display()))
}
