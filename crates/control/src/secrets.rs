//! Secrets in the data directory, readable by the owner only: the admin credential the CLI uses,
//! the gateway credential (it can only read the routing configuration, so a gateway never holds
//! the admin credential), and the token signing key. All are created on first start and kept.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use sluice_auth::TokenSigner;

fn control_dir(home: &Path) -> anyhow::Result<PathBuf> {
    let dir = home.join("control");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// Where the admin credential lives.
pub fn admin_token_path(home: &Path) -> PathBuf {
    home.join("control").join("admin-token")
}

/// Where the gateway credential lives.
pub fn gateway_token_path(home: &Path) -> PathBuf {
    home.join("control").join("gateway-token")
}

/// Where a running control plane writes its URL, so the CLI finds it without flags.
pub fn control_url_path(home: &Path) -> PathBuf {
    home.join("control").join("url")
}

/// Reads the admin credential for the CLI.
pub fn read_admin_token(home: &Path) -> anyhow::Result<String> {
    read_secret(&admin_token_path(home))
}

/// Reads the gateway credential for `sluice gateway`.
pub fn read_gateway_token(home: &Path) -> anyhow::Result<String> {
    read_secret(&gateway_token_path(home))
}

/// Reads a credential file, trimmed.
pub fn read_secret(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the credential {} (has `sluice control` or `sluice up` run with this data directory?)",
            path.display()
        )
    })?;
    Ok(text.trim().to_owned())
}

/// Writes `contents` to a new owner-only file; never loosens an existing one.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// A credential at `path`, created on first start.
pub(crate) fn credential(home: &Path, path: &Path) -> anyhow::Result<String> {
    control_dir(home)?;
    if !path.exists() {
        write_private(path, sluice_auth::generate_key().as_bytes())?;
    }
    read_secret(path)
}

/// The `which` credential, kept at `path`: read from `given` when set, else created in the data directory on
/// first start. A given one is written to the data directory as well, so the CLI on this host
/// finds it as usual. Too short a given credential is refused: it guards the whole API.
pub(crate) fn given_or_created(home: &Path, path: &Path, given: Option<&Path>, which: &str) -> anyhow::Result<String> {
    let Some(given) = given else { return credential(home, path) };
    let token = read_secret(given)?;
    if token.len() < 32 {
        anyhow::bail!("the {which} credential in {} is shorter than 32 characters", given.display());
    }
    control_dir(home)?;
    write_private(path, token.as_bytes())?;
    Ok(token)
}

/// The gateway credential the control plane of `home` uses (see [`given_or_created`]): what a
/// target hands its replicas before the control plane starts.
pub fn gateway_credential(home: &Path, given: Option<&Path>) -> anyhow::Result<String> {
    given_or_created(home, &gateway_token_path(home), given, "gateway")
}

/// The token signing key, created on first start.
pub(crate) fn signing_key(home: &Path) -> anyhow::Result<TokenSigner> {
    let path = control_dir(home)?.join("token-signing-key");
    if !path.exists() {
        let signer = TokenSigner::generate();
        write_private(&path, hex::encode(signer.seed_bytes()).as_bytes())?;
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let seed = hex::decode(text.trim()).with_context(|| format!("{} is not a hex key", path.display()))?;
    TokenSigner::from_seed_bytes(&seed).with_context(|| format!("{} holds no valid key", path.display()))
}

/// Records the URL of the running control plane for the CLI.
pub fn write_control_url(home: &Path, url: &str) -> anyhow::Result<()> {
    control_dir(home)?;
    std::fs::write(control_url_path(home), url)?;
    Ok(())
}
