//! Template keys and the template store, without a VM (the restore itself is proven
//! with hull-vmm: tests/tests/hull_vmm_backend.rs on this host's /dev/kvm, and with
//! Linux in the nested bed, tests/tests/nested.rs).

use super::*;

struct Files {
    dir: tempfile::TempDir,
    config: Config,
    spec: SandboxSpec,
}

fn files() -> Files {
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = dir.path().join("vmlinux");
    let initrd = dir.path().join("initramfs.cpio");
    let vmm = dir.path().join("hull-vmm");
    for (p, text) in [(&kernel, "kernel"), (&initrd, "initrd"), (&vmm, "vmm")] {
        std::fs::write(p, text).expect("file");
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&vmm, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut config = Config::default();
    config.guest.kernel = kernel;
    config.guest.initrd = initrd;
    config.hypervisor.hull_vmm = vmm;
    config.template.dir = Some(dir.path().join("templates"));
    let mut spec = crate::run::prepare::sandbox_spec(&config, None, None, false);
    spec.scratch_disk = true;
    Files { dir, config, spec }
}

#[test]
fn a_key_changes_with_everything_the_template_depends_on() {
    let f = files();
    let key = TemplateKey::new(&f.config, &f.spec).expect("key");
    assert_eq!(key.digest().len(), 32);
    assert_eq!(
        TemplateKey::new(&f.config, &f.spec).expect("key").digest(),
        key.digest(),
        "the same inputs give the same template"
    );
    let changed =
        |spec: &SandboxSpec, config: &Config| TemplateKey::new(config, spec).expect("key").digest();
    let mut spec = f.spec.clone();
    spec.vcpus += 1;
    assert_ne!(changed(&spec, &f.config), key.digest(), "vcpus");
    let mut spec = f.spec.clone();
    spec.memory_mib += 64;
    assert_ne!(changed(&spec, &f.config), key.digest(), "memory");
    let mut spec = f.spec.clone();
    spec.scratch_disk = false;
    assert_ne!(changed(&spec, &f.config), key.digest(), "scratch disk");
    let mut spec = f.spec.clone();
    spec.kernel_params = "quiet".into();
    assert_ne!(changed(&spec, &f.config), key.digest(), "command line");
    let mut config = f.config.clone();
    config.rootfs.scratch_size_mib += 1;
    assert_ne!(changed(&f.spec, &config), key.digest(), "scratch size");
    let policy = f.dir.path().join("policy.toml");
    std::fs::write(&policy, "name = \"p\"\n").expect("policy");
    let mut config = f.config.clone();
    config.policy.file = Some(policy);
    assert_ne!(changed(&f.spec, &config), key.digest(), "policy");
    // A rebuilt initramfs (other content, other size and mtime) is another template.
    std::thread::sleep(std::time::Duration::from_millis(10));
    std::fs::write(&f.config.guest.initrd, "a rebuilt initrd").expect("initrd");
    assert_ne!(changed(&f.spec, &f.config), key.digest(), "initrd");
}

#[test]
fn a_missing_kernel_is_named() {
    let mut f = files();
    f.spec.kernel = f.dir.path().join("gone");
    let err = TemplateKey::new(&f.config, &f.spec).expect_err("no kernel");
    assert!(err.to_string().contains("gone"), "{err}");
}

/// A template as a build leaves it: the snapshot dir (here two stand-in files) and
/// the record, written last.
fn fake_template(store: &TemplateStore, key: &TemplateKey) -> String {
    let digest = key.digest();
    let dir = store.snapshot_dir(&digest);
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("state.json"), "{}").expect("state");
    let memory = std::fs::File::create(dir.join("memory")).expect("memory");
    memory
        .set_len(u64::from(key.memory_mib) << 20)
        .expect("sparse memory file");
    write_record(store, &digest, key);
    digest
}

/// `D.json` for `key` under `digest`.
fn write_record(store: &TemplateStore, digest: &str, key: &TemplateKey) {
    let record = TemplateRecord {
        key: key.clone(),
        created: 1,
        build_seconds: 0.5,
    };
    std::fs::write(
        store.record_path(digest),
        serde_json::to_vec(&record).expect("json"),
    )
    .expect("record");
}

#[test]
fn the_store_opens_only_complete_templates_of_the_exact_key() {
    let f = files();
    let store = TemplateStore::new(&f.config);
    assert_eq!(store.dir(), f.dir.path().join("templates"));
    let key = TemplateKey::new(&f.config, &f.spec).expect("key");
    assert!(store.open(&key).expect("open").is_none(), "none yet");
    assert!(store.list().expect("list").is_empty());

    let digest = fake_template(&store, &key);
    let files = store.open(&key).expect("open").expect("complete");
    assert_eq!(files.dir, store.snapshot_dir(&digest));
    let listed = store.list().expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].digest, digest);
    assert_eq!(
        listed[0].record.as_ref().map(|r| r.key.vcpus),
        Some(key.vcpus)
    );

    // A memory file of another size (truncated): removed, to be rebuilt.
    let memory = std::fs::OpenOptions::new()
        .write(true)
        .open(store.snapshot_dir(&digest).join("memory"))
        .expect("memory");
    memory.set_len(4096).expect("truncate");
    assert!(store.open(&key).expect("open").is_none());
    assert!(
        !store.snapshot_dir(&digest).exists(),
        "the damaged template is gone"
    );
    let digest = fake_template(&store, &key);

    // Without its record a template is incomplete: listed as such, never opened.
    std::fs::remove_file(store.record_path(&digest)).expect("rm record");
    assert!(store.open(&key).expect("open").is_none());
    assert!(store.list().expect("list")[0].record.is_none());

    // A record for another key under this digest (tampered, or a collision): removed.
    let digest = fake_template(&store, &key);
    let mut other = key.clone();
    other.vcpus += 7;
    write_record(&store, &digest, &other);
    assert!(store.open(&key).expect("open").is_none());
    assert!(
        !store.snapshot_dir(&digest).exists(),
        "the wrong template is gone"
    );

    // A corrupt record: the template is rebuilt, not used.
    let digest = fake_template(&store, &key);
    std::fs::write(store.record_path(&digest), "{not json").expect("record");
    assert!(store.open(&key).expect("open").is_none());
    assert!(!store.record_path(&digest).exists());
}

#[test]
fn remove_takes_a_digest_and_names_what_is_not_there() {
    let f = files();
    let store = TemplateStore::new(&f.config);
    let key = TemplateKey::new(&f.config, &f.spec).expect("key");
    let digest = fake_template(&store, &key);
    for bad in ["", "../etc", "zz"] {
        assert!(
            matches!(store.remove(bad), Err(TemplateError::NotFound(_))),
            "{bad:?}"
        );
    }
    store.remove(&digest).expect("remove");
    assert!(!store.snapshot_dir(&digest).exists() && !store.record_path(&digest).exists());
    assert!(matches!(
        store.remove(&digest),
        Err(TemplateError::NotFound(_))
    ));
    // Partial snapshots a killed build left go before the next build.
    let partial = store.dir().join(format!("{digest}.partial-123"));
    std::fs::create_dir_all(&partial).expect("partial");
    store.remove_partials(&digest);
    assert!(!partial.exists());
}

#[tokio::test]
async fn templates_off_or_impossible_mean_a_cold_boot() {
    let f = files();
    // Off (the default): nothing is looked at.
    assert!(!Config::default().template.enabled);
    assert!(for_sandbox(&f.config, &f.spec).await.is_none());
    // On, but with a network interface: not covered yet, the log says so.
    let mut config = f.config.clone();
    config.template.enabled = true;
    config.hypervisor.backend = crate::config::BackendChoice::HullVmm;
    let mut spec = f.spec.clone();
    spec.nics.push(crate::hypervisor::net::NetDevice {
        tap_fd: 99,
        mac: "02:00:00:00:00:01".into(),
    });
    assert!(matches!(
        check_templatable(&config, &spec),
        Err(TemplateError::Network(1)) | Err(TemplateError::Select(_))
    ));
    assert!(for_sandbox(&config, &spec).await.is_none());
    // QEMU: templates need hull-vmm.
    config.hypervisor.backend = crate::config::BackendChoice::Qemu;
    assert!(matches!(
        check_templatable(&config, &f.spec),
        Err(TemplateError::Backend(_))
    ));
}
