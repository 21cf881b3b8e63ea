//! `scripts/install.sh` into a temporary `DESTDIR`: binary, units, config and a 0600 secrets
//! file land where the unit expects them, an existing config and secrets file are kept (the
//! secrets file's mode is put back to 0600), and the installed config passes `--check`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn install(dest: &Path) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_mcas-gateway")).parent().unwrap();
    let out = Command::new(Path::new(root).join("scripts/install.sh"))
        .env("DESTDIR", dest)
        .env("BIN_DIR", bin_dir)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "install.sh failed:\n{text}");
    text
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777
}

#[test]
fn install_sh_puts_everything_in_place_under_destdir() {
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path();
    install(d);
    let bin = d.join("usr/local/bin/mcas-gateway");
    assert_eq!(mode(&bin), 0o755);
    let unit = d.join("etc/systemd/system/mcas-gateway.service");
    assert_eq!(mode(&unit), 0o644);
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains("ExecStart=/usr/local/bin/mcas-gateway --config /etc/mcas/gateway.yaml"), "{text}");
    assert!(d.join("etc/systemd/system/mcas-telegram.service").exists());
    assert_eq!(mode(&d.join("etc/mcas/gateway.env")), 0o600);
    assert!(d.join("usr/local/share/doc/mcas/operations.md").exists());
    let config = d.join("etc/mcas/gateway.yaml");
    let check = Command::new(&bin).args(["--config", config.to_str().unwrap(), "--check"]).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));

    // A second run keeps the operator's config and secrets, and tightens a loosened mode.
    std::fs::write(&config, "# mine\n").unwrap();
    let env = d.join("etc/mcas/gateway.env");
    std::fs::write(&env, "ALICE_KEY=secret-value\n").unwrap();
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = install(d);
    assert!(!out.contains("secret-value"));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "# mine\n");
    assert_eq!(std::fs::read_to_string(&env).unwrap(), "ALICE_KEY=secret-value\n");
    assert_eq!(mode(&env), 0o600);
}

#[test]
fn install_sh_writes_another_prefix_into_the_units() {
    let dest = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_mcas-gateway")).parent().unwrap();
    let out = Command::new(Path::new(root).join("scripts/install.sh"))
        .env("DESTDIR", dest.path())
        .env("BIN_DIR", bin_dir)
        .env("PREFIX", "/opt/mcas")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dest.path().join("opt/mcas/bin/mcas-gateway").exists());
    let unit = std::fs::read_to_string(dest.path().join("etc/systemd/system/mcas-gateway.service")).unwrap();
    assert!(unit.contains("ExecReload=/opt/mcas/bin/mcas-gateway --config /etc/mcas/gateway.yaml --upgrade --daemon"));
    assert!(!unit.lines().filter(|l| l.starts_with("Exec")).any(|l| l.contains("/usr/local")), "{unit}");
}
