//! Unpack and layout tests on image layouts built here, byte by byte.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::*;

/// One tar entry of a test layer.
enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32, u64),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_mode(0o777);
        match e {
            E::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).expect("dir");
            }
            E::File(p, data, mode, uid) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_uid(*uid);
                h.set_gid(*uid);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).expect("file");
            }
            E::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, p, target).expect("symlink");
            }
            E::Hardlink(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                b.append_link(&mut h, p, target).expect("hardlink");
            }
        }
    }
    b.into_inner().expect("tar")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gz");
    e.finish().expect("gz")
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", layout::hex(&Sha256::digest(data)))
}

fn put_blob(dir: &Path, data: &[u8]) -> String {
    let d = digest(data);
    let p = dir.join("blobs/sha256").join(&d[7..]);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, data).expect("blob");
    d
}

/// Writes an image layout with these layers (already compressed or not) and config.
fn make_image(dir: &Path, layers: &[Vec<u8>], config: &str, tag: &str) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("oci-layout");
    let cfg = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{config},"rootfs":{{"type":"layers","diff_ids":[]}}}}"#
    );
    let cfg_d = put_blob(dir, cfg.as_bytes());
    let layer_descs: Vec<String> = layers
        .iter()
        .map(|l| {
            let d = put_blob(dir, l);
            let mt = if l.starts_with(&[0x1f, 0x8b]) { "tar+gzip" } else { "tar" };
            format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.{mt}","digest":"{d}","size":{}}}"#, l.len())
        })
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cfg_d}","size":{}}},"layers":[{}]}}"#,
        cfg.len(),
        layer_descs.join(",")
    );
    let m_d = put_blob(dir, manifest.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{m_d}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}}}]}}"#,
        manifest.len()
    );
    std::fs::write(dir.join("index.json"), index).expect("index");
}

fn open(dir: &Path) -> Result<Image, ImageError> {
    Image::open(&ImageRef {
        dir: dir.to_path_buf(),
        tag: None,
    })
}

#[test]
fn unpacks_layers_with_modes_owners_links_and_reads_the_config() {
    let t = tempfile::tempdir().expect("tmp");
    let img = t.path().join("img");
    let l1 = layer(&[
        E::Dir("bin", 0o755),
        E::File("bin/busybox", b"BB", 0o4755, 0),
        E::Symlink("bin/sh", "busybox"),
        E::Dir("home/u", 0o700),
        E::File("home/u/f", b"mine", 0o640, 1234),
    ]);
    let l2 = gzip(&layer(&[
        E::Hardlink("bin/bb2", "bin/busybox"),
        E::File("etc/motd", b"hi", 0o644, 0),
    ]));
    make_image(
        &img,
        &[l1, l2],
        r#"{"Env":["PATH=/bin","A=1"],"Cmd":["sh"],"Entrypoint":["/bin/busybox"],"WorkingDir":"/home/u","User":"1234:1234"}"#,
        "latest",
    );
    let image = open(&img).expect("open");
    assert_eq!(image.config.cmd, Some(vec!["sh".to_string()]));
    assert_eq!(
        image.config.entrypoint,
        Some(vec!["/bin/busybox".to_string()])
    );
    assert_eq!(
        image.config.env,
        Some(vec!["PATH=/bin".to_string(), "A=1".to_string()])
    );
    assert_eq!(image.config.working_dir.as_deref(), Some("/home/u"));
    assert_eq!(image.config.user.as_deref(), Some("1234:1234"));
    let root = t.path().join("rootfs");
    image.unpack(&root).expect("unpack");
    let bb = std::fs::metadata(root.join("bin/busybox")).expect("busybox");
    assert_eq!(bb.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).expect("link"),
        Path::new("busybox")
    );
    let hl = std::fs::metadata(root.join("bin/bb2")).expect("hardlink");
    assert_eq!(hl.ino(), bb.ino(), "hard link shares the inode");
    let f = std::fs::metadata(root.join("home/u/f")).expect("f");
    if nix::unistd::geteuid().is_root() {
        assert_eq!((f.uid(), f.gid()), (1234, 1234));
    }
    assert_eq!(f.permissions().mode() & 0o777, 0o640);
    assert_eq!(std::fs::read(root.join("etc/motd")).expect("motd"), b"hi");
}

#[test]
fn whiteouts_and_opaque_dirs_remove_lower_layer_content_only() {
    let t = tempfile::tempdir().expect("tmp");
    let img = t.path().join("img");
    let l1 = layer(&[
        E::File("a/x", b"x", 0o644, 0),
        E::File("a/y", b"y", 0o644, 0),
        E::File("b/z", b"z", 0o644, 0),
        E::File("keep", b"k", 0o644, 0),
        E::File("gone", b"g", 0o644, 0),
    ]);
    // The opaque marker after a new entry of the same layer must not remove it.
    let l2 = layer(&[
        E::File("a/new", b"n", 0o644, 0),
        E::File("a/.wh..wh..opq", b"", 0o644, 0),
        E::File(".wh.b", b"", 0o644, 0),
        E::File(".wh.gone", b"", 0o644, 0),
        E::File(".wh.never-existed", b"", 0o644, 0),
    ]);
    make_image(&img, &[l1, l2], "{}", "latest");
    let root = t.path().join("rootfs");
    open(&img).expect("open").unpack(&root).expect("unpack");
    let mut a: Vec<String> = std::fs::read_dir(root.join("a"))
        .expect("a")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    a.sort();
    assert_eq!(a, ["new"]);
    assert!(!root.join("b").exists());
    assert!(!root.join("gone").exists());
    assert!(root.join("keep").exists());
    assert!(!root.join(".wh.b").exists() && !root.join("a/.wh..wh..opq").exists());
}

#[test]
fn a_symlink_from_a_lower_layer_cannot_redirect_writes_out_of_the_rootfs() {
    let t = tempfile::tempdir().expect("tmp");
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).expect("outside");
    std::fs::write(outside.join("victim"), b"original").expect("victim");
    let target = outside.to_str().expect("utf8");
    let victim = outside.join("victim");
    let victim = victim.to_str().expect("utf8");

    // 1. a file under a symlinked directory
    let img = t.path().join("img1");
    let l1 = layer(&[E::Symlink("evil", target)]);
    let l2 = layer(&[E::File("evil/pwned", b"owned", 0o644, 0)]);
    make_image(&img, &[l1, l2], "{}", "latest");
    let err = open(&img)
        .expect("open")
        .unpack(&t.path().join("r1"))
        .expect_err("must refuse");
    assert!(matches!(err, ImageError::Layer { .. }), "{err}");
    assert!(!outside.join("pwned").exists(), "wrote outside the rootfs");

    // 2. a regular file over a symlink to a host file replaces the link
    let img = t.path().join("img2");
    let l1 = layer(&[E::Symlink("link", victim)]);
    let l2 = layer(&[E::File("link", b"new", 0o644, 0)]);
    make_image(&img, &[l1, l2], "{}", "latest");
    let r2 = t.path().join("r2");
    open(&img).expect("open").unpack(&r2).expect("unpack");
    assert_eq!(std::fs::read(r2.join("link")).expect("link"), b"new");
    assert_eq!(
        std::fs::read(outside.join("victim")).expect("victim"),
        b"original"
    );

    // 3. a whiteout through a symlinked directory removes nothing outside
    let img = t.path().join("img3");
    let l1 = layer(&[E::Symlink("evil", target)]);
    let l2 = layer(&[E::File("evil/.wh.victim", b"", 0o644, 0)]);
    make_image(&img, &[l1, l2], "{}", "latest");
    let err = open(&img)
        .expect("open")
        .unpack(&t.path().join("r3"))
        .expect_err("must refuse");
    assert!(err.to_string().contains("outside"), "{err}");
    assert!(
        outside.join("victim").exists(),
        "a whiteout removed a host file"
    );

    // 4. a hard link to a host file
    let img = t.path().join("img4");
    let l1 = layer(&[E::Symlink("evil", target)]);
    let l2 = layer(&[E::Hardlink("h", "evil/victim")]);
    make_image(&img, &[l1, l2], "{}", "latest");
    let r4 = t.path().join("r4");
    let res = open(&img).expect("open").unpack(&r4);
    assert!(res.is_err(), "hard link to a host file was made");
    assert!(!r4.join("h").exists());

    // 5. `..` in an entry name
    let img = t.path().join("img5");
    let mut raw = layer(&[E::File("xx/escape", b"x", 0o644, 0)]);
    // Rewrite the name in the header (tar::Builder refuses `..`) and fix the checksum.
    raw[..9].copy_from_slice(b"../escape");
    let mut h = tar::Header::new_old();
    h.as_mut_bytes().copy_from_slice(&raw[..512]);
    h.set_cksum();
    raw[..512].copy_from_slice(h.as_bytes());
    make_image(&img, &[raw], "{}", "latest");
    let res = open(&img)
        .expect("open")
        .unpack(&t.path().join("r5").join("root"));
    assert!(res.is_err(), "a `..` entry was accepted");
    assert!(!t.path().join("r5/escape").exists());
}

#[test]
fn errors_name_the_missing_dir_blob_or_bad_digest() {
    let t = tempfile::tempdir().expect("tmp");
    let missing = t.path().join("nope");
    let err = open(&missing).expect_err("missing");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );

    let img = t.path().join("img");
    let l1 = layer(&[E::File("f", b"data", 0o644, 0)]);
    let d = digest(&l1);
    make_image(&img, &[l1], "{}", "latest");
    let blob = img.join("blobs/sha256").join(&d[7..]);

    std::fs::write(&blob, b"tampered").expect("tamper");
    let err = open(&img)
        .expect("open")
        .unpack(&t.path().join("r"))
        .expect_err("corrupt");
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&d), "{err}");

    std::fs::remove_file(&blob).expect("rm");
    let err = open(&img).expect_err("missing blob");
    assert!(matches!(err, ImageError::MissingBlob { .. }), "{err}");
    assert!(err.to_string().contains(&d), "{err}");

    let not_layout = t.path().join("plain");
    std::fs::create_dir(&not_layout).expect("mkdir");
    let err = open(&not_layout).expect_err("not a layout");
    assert!(err.to_string().contains("oci-layout"), "{err}");
}

#[test]
fn manifests_are_picked_by_tag() {
    let t = tempfile::tempdir().expect("tmp");
    let img = t.path().join("img");
    make_image(&img, &[layer(&[])], r#"{"Cmd":["sh"]}"#, "v1");
    let by_tag = Image::open(&ImageRef {
        dir: img.clone(),
        tag: Some("v1".into()),
    })
    .expect("v1");
    assert_eq!(by_tag.config.cmd, Some(vec!["sh".to_string()]));
    assert!(
        open(&img).is_ok(),
        "the only manifest is taken without a tag"
    );
    let err = Image::open(&ImageRef {
        dir: img,
        tag: Some("v2".into()),
    })
    .expect_err("v2");
    assert!(
        err.to_string().contains("v2") && err.to_string().contains("v1"),
        "{err}"
    );
}

#[test]
fn image_refs() {
    let cache = Path::new("/var/cache/hull");
    assert_eq!(
        ImageRef::parse("demo", cache),
        ImageRef {
            dir: cache.join("images/demo"),
            tag: None
        }
    );
    assert_eq!(
        ImageRef::parse("demo:v1", cache),
        ImageRef {
            dir: cache.join("images/demo"),
            tag: Some("v1".into())
        }
    );
    assert_eq!(
        ImageRef::parse("/x/y", cache),
        ImageRef {
            dir: "/x/y".into(),
            tag: None
        }
    );
    assert_eq!(
        ImageRef::parse("./lay:latest", cache),
        ImageRef {
            dir: "./lay".into(),
            tag: Some("latest".into())
        }
    );
}
