//! Builds the freestanding test guests in `vmm/tests/guests/` with GNU as/ld/objcopy.
//! Shared (via `#[path]`) by the integration tests, the loader unit tests and the bench.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Paths of the built guests.
#[derive(Debug, Clone)]
pub struct Guests {
    /// Real mode, prints then debug-exit 0x10 (raw16).
    pub real16_exit: PathBuf,
    /// Real mode, prints then i8042 reset (raw16).
    pub real16_reset: PathBuf,
    /// ELF with a PVH note.
    pub pvh_elf: PathBuf,
    /// bzImage-style (setup header + 64-bit payload).
    pub bzimage: PathBuf,
    /// ELF without PVH note (64-bit boot protocol at e_entry).
    pub elf64: PathBuf,
    /// A small initrd whose content the guests print.
    pub initrd: PathBuf,
}

pub const INITRD_TEXT: &[u8] = b"INITRD-OK 0123456789\n";

/// The guest sources. Found from the including crate's manifest dir through the
/// workspace root, so other crates of the workspace (the runtime's backend tests) can
/// `#[path]`-include this file too.
///
/// The manifest dir is the one `cargo test` gives at run time: a test binary reused
/// from a shared target dir was maybe built in another checkout, whose compile-time
/// path may be gone.
fn src_dir() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.join("../vmm/tests/guests")
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| {
        format!(
            "cannot run {:?}: {e} (GNU binutils needed)",
            cmd.get_program()
        )
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Assembles and links every guest into `out` (created).
pub fn build_guests(out: &Path) -> Result<Guests, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let src = src_dir();
    let s = |name: &str| src.join(name);
    let o = |name: &str| out.join(name);

    for (action, name) in [(1, "real16-exit"), (2, "real16-reset")] {
        run(Command::new("as")
            .args(["--32", "--defsym", &format!("ACTION={action}"), "-o"])
            .arg(o(&format!("{name}.o")))
            .arg(s("real16.S")))?;
        run(Command::new("ld")
            .args(["-m", "elf_i386", "-Ttext=0x7c00", "-e", "_start", "-o"])
            .arg(o(&format!("{name}.elf")))
            .arg(o(&format!("{name}.o"))))?;
        run(Command::new("objcopy")
            .args(["-O", "binary"])
            .arg(o(&format!("{name}.elf")))
            .arg(o(&format!("{name}.bin"))))?;
    }
    for name in ["common64", "virtio64", "pvh", "bzimage"] {
        run(Command::new("as")
            .args(["--64", "-o"])
            .arg(o(&format!("{name}.o")))
            .arg(s(&format!("{name}.S"))))?;
    }
    let link = |script: &str, first: &str, output: &str| {
        run(Command::new("ld")
            .args(["-m", "elf_x86_64", "--no-warn-rwx-segments", "-T"])
            .arg(s(script))
            .arg("-o")
            .arg(o(output))
            .arg(o(first))
            .arg(o("common64.o"))
            .arg(o("virtio64.o")))
    };
    link("pvh.ld", "pvh.o", "pvh.elf")?;
    link("elf64.ld", "bzimage.o", "elf64.elf")?;
    link("bzimage.ld", "bzimage.o", "bzimage.elf")?;
    run(Command::new("objcopy")
        .args(["-O", "binary"])
        .arg(o("bzimage.elf"))
        .arg(o("bzimage.bin")))?;
    std::fs::write(o("initrd.txt"), INITRD_TEXT).map_err(|e| e.to_string())?;
    Ok(Guests {
        real16_exit: o("real16-exit.bin"),
        real16_reset: o("real16-reset.bin"),
        pvh_elf: o("pvh.elf"),
        bzimage: o("bzimage.bin"),
        elf64: o("elf64.elf"),
        initrd: o("initrd.txt"),
    })
}
