//! Start-up checks, the command line, and sealing-key rotation under a running service.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use ambishare_owner::{Error, ServeConfig};
use ambishare_rpc::KeyClient;
use ambishare_shared::Tier;
use common::*;

fn owner_cmd(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ambishare-owner"));
    cmd.env("AMBISHARE_OWNER_HOME", home).env("RUST_LOG", "warn");
    for (k, _) in std::env::vars() {
        if k.starts_with("AMBISHARE_OWNER_") && k != "AMBISHARE_OWNER_HOME" {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_files_readable_by_others_are_refused_at_start_up() {
    use std::os::unix::fs::PermissionsExt;
    within(async {
        let owner = TestOwner::init();
        let keys = owner.home.key_files().unwrap();
        assert_eq!(keys.len(), 6, "signing, sealing and four TLS keys");
        for key in keys {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let err = ambishare_owner::serve(ServeConfig::new(owner.home.root()), listener, async {}).await.unwrap_err();
            assert!(
                matches!(&err, Error::Shared(ambishare_shared::Error::LoosePermissions { path, .. }) if Path::new(path) == key),
                "{} accepted: {err}",
                key.display()
            );
            assert!(ambishare_owner::admin::AdminOps::open_offline(&owner.home).is_err());
            assert!(ambishare_owner::rotate_sealing_key(&owner.home).is_err());
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        // The command line says what to do.
        let key = owner.home.tls("server.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = owner_cmd(owner.home.root()).args(["serve", "--listen", "127.0.0.1:0"]).output().unwrap();
        assert!(!out.status.success());
        assert!(text(&out).contains("chmod 600"), "{}", text(&out));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line_init_publish_grant_revoke_audit() {
    within(async {
        init_runtime();
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let out = owner_cmd(&home).arg("init").args(["--san", "keys.example"]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let owner_id = String::from_utf8(out.stdout.clone()).unwrap().trim().to_owned();
        assert_eq!(owner_id.len(), 32);
        let again = owner_cmd(&home).arg("init").output().unwrap();
        assert!(!again.status.success());
        assert!(text(&again).contains("refusing to overwrite"), "{}", text(&again));

        // Settings from owner.toml; the flag wins over the file.
        let registry = TestRegistry::start().await;
        std::fs::write(
            home.join("owner.toml"),
            format!(
                "registry = \"{}\"\nmodel = \"{}\"\ndevice = \"cpu\"\nbatch = 99\n",
                registry.url,
                tiny_model().display()
            ),
        )
        .unwrap();
        let images = write_pngs(&dir.path().join("images"), 2, 9);
        // No node running: the command says what to do.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let out = owner_cmd(&home)
            .args(["publish", "--dataset", "cli", "--quiet", "--owner", &format!("https://{closed}")])
            .arg(dir.path().join("images"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(text(&out).contains("ambishare-owner serve") && text(&out).contains("--offline"), "{}", text(&out));
        let out = owner_cmd(&home)
            .args(["publish", "--offline", "--dataset", "cli", "--batch", "1", "--quiet", "--ids-out"])
            .arg(dir.path().join("ids.tsv"))
            .arg(dir.path().join("images"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("published 2"), "{}", text(&out));
        let ids = std::fs::read_to_string(dir.path().join("ids.tsv")).unwrap();
        let listed: Vec<(&str, &str)> = ids.lines().map(|l| l.split_once('\t').unwrap()).collect();
        assert_eq!(listed.len(), 2, "{ids}");
        for ((id, file), image) in listed.iter().zip(&images) {
            assert!(id.parse::<ambishare_shared::EntryId>().is_ok());
            assert_eq!(Path::new(file), image);
        }

        // Offline admin: grant from a CSR, list, revoke, audit.
        let (csr, _key) = ambishare_rpc::make_csr("cli-lab").unwrap();
        std::fs::write(dir.path().join("cli-lab.csr"), csr).unwrap();
        let cert = dir.path().join("out/cli-lab.pem");
        std::fs::create_dir_all(cert.parent().unwrap()).unwrap();
        let out = owner_cmd(&home)
            .args(["grant", "--offline", "--party", "cli-lab", "--dataset", "cli", "--tier", "preview"])
            .args(["--expires", "30d", "--csr"])
            .arg(dir.path().join("cli-lab.csr"))
            .arg("--out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        assert!(std::fs::read_to_string(&cert).unwrap().contains("BEGIN CERTIFICATE"));
        let ca = std::fs::read_to_string(dir.path().join("out/cli-lab-server-ca.pem")).unwrap();
        assert_eq!(ca, std::fs::read_to_string(home.join("tls/server-ca.pem")).unwrap());

        let out = owner_cmd(&home).args(["grants", "--offline"]).output().unwrap();
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(listing.contains("cli-lab") && listing.contains("preview") && listing.contains("active"), "{listing}");
        let out = owner_cmd(&home).args(["revoke", "--offline", "--party", "cli-lab"]).output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("revoked 1"), "{}", text(&out));
        let out = owner_cmd(&home).args(["audit", "--offline", "--limit", "10"]).output().unwrap();
        let log = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(log.contains("Grant") && log.contains("Revoke"), "{log}");

        // The admin commands reach a running node over mTLS with the admin certificate.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let node = tokio::spawn(ambishare_owner::serve(ServeConfig::new(&home), listener, async {
            let _ = stopped.await;
        }));
        let mut cmd = owner_cmd(&home);
        cmd.args(["grants", "--owner", &url]);
        let grants = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap();
        assert!(grants.status.success(), "{}", text(&grants));
        assert!(String::from_utf8_lossy(&grants.stdout).contains("revoked"), "{}", text(&grants));
        let offline = owner_cmd(&home).args(["grants", "--offline"]).output().unwrap();
        assert!(!offline.status.success(), "the store is held by serve");

        // Publishing goes through the node too; relative paths are resolved here and reported as given.
        let more = write_pngs(&dir.path().join("more"), 2, 10);
        let mut cmd = owner_cmd(&home);
        cmd.current_dir(dir.path()).args([
            "publish",
            "--dataset",
            "cli",
            "--owner",
            &url,
            "--quiet",
            "--ids-out",
            "more.tsv",
            "more",
            "images",
        ]);
        let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("published 2, re-sent 0"), "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("skipped 2"), "{}", text(&out));
        let ids = std::fs::read_to_string(dir.path().join("more.tsv")).unwrap();
        let listed: Vec<&str> = ids.lines().map(|l| l.split_once('\t').unwrap().1).collect();
        let expected: Vec<String> =
            images.iter().chain(&more).map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string()).collect();
        assert_eq!(listed, expected, "{ids}");
        stop.send(()).unwrap();
        node.await.unwrap().unwrap();
        drop(images);
        registry.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_survive_sealing_key_rotation() {
    within(async {
        init_runtime();
        let dir = tempfile::tempdir().unwrap();
        let registry = TestRegistry::start().await;
        let owner = TestOwner::init();
        let files = write_pngs(dir.path(), 3, 5);
        assert_eq!(owner.publish(&registry, "rot", files.clone()).await.published, 3);
        let ids: Vec<_> = files.iter().map(|f| owner.entry_of("rot", f)).collect();

        let node = owner.serve().await;
        let mut admin = node.admin(&owner).await;
        let lab = enroll(&mut admin, "lab", "rot", Tier::Full, None).await;
        let before: Vec<_> = KeyClient::connect(&node.url, lab.clone())
            .await
            .unwrap()
            .get_keys(&ids)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, k)| k.unwrap())
            .collect();
        node.stop().await;

        let old = std::fs::read_to_string(owner.home.sealing_current()).unwrap();
        let summary = ambishare_owner::rotate_sealing_key(&owner.home).unwrap();
        // Format v3 entries keep no key each: the master secret alone is re-sealed.
        assert_eq!((summary.resealed, summary.master_resealed), (0, true));
        assert_ne!(summary.new_key, old.trim());
        assert_eq!(std::fs::read_dir(owner.home.sealing_dir()).unwrap().count(), 2, "new key and `current`");

        let node = owner.serve().await;
        let after: Vec<_> = KeyClient::connect(&node.url, lab)
            .await
            .unwrap()
            .get_keys(&ids)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, k)| k.unwrap())
            .collect();
        assert_eq!(before, after);
        node.stop().await;
        registry.stop().await;
    })
    .await;
}
