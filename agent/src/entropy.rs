//! Fresh randomness for a VM restored from a snapshot: every clone of one template
//! starts with the same entropy pool and CRNG state, so the host's bytes are mixed in
//! (credited, as RNDADDENTROPY does) and the CRNG is reseeded from the pool at once
//! (RNDRESEEDCRNG), before anything in the clone draws a random number that must be
//! its own.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)` (Linux 4.17 and later).
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// `struct rand_pool_info` followed by its buffer, as one allocation.
fn rand_pool_info(bytes: &[u8]) -> Vec<u32> {
    let words = bytes.len().div_ceil(4);
    let mut info = vec![0u32; 2 + words];
    info[0] = (bytes.len() * 8) as u32; // entropy_count, in bits
    info[1] = bytes.len() as u32; // buf_size, in bytes
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        info[2 + i] = u32::from_ne_bytes(w);
    }
    info
}

/// Adds `bytes` to the kernel's entropy pool, credited, and reseeds the CRNG.
pub fn add_and_reseed(bytes: &[u8]) -> std::io::Result<()> {
    let random = OpenOptions::new().write(true).open("/dev/urandom")?;
    let info = rand_pool_info(bytes);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buf_size (info[1]) bytes of
    // buffer follow its two ints; `info` holds exactly that many (rounded up to whole
    // words) and outlives the call. The fd is open for writing, as the ioctl needs.
    let added = unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) };
    if added < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let reseeded = unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) };
    if reseeded < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_info_counts_bits_and_bytes_and_carries_every_byte() {
        let bytes: Vec<u8> = (1..=33).collect();
        let info = rand_pool_info(&bytes);
        assert_eq!(info[0], 33 * 8);
        assert_eq!(info[1], 33);
        assert_eq!(info.len(), 2 + 9);
        assert_eq!(info[2].to_ne_bytes(), [1, 2, 3, 4]);
        assert_eq!(info[10].to_ne_bytes(), [33, 0, 0, 0]);
    }

    /// On the host (root): the kernel takes the ioctls.
    #[test]
    fn the_kernel_takes_the_entropy_and_reseeds() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            println!("SKIP the_kernel_takes_the_entropy_and_reseeds: needs root (CAP_SYS_ADMIN)");
            return;
        }
        add_and_reseed(&[0x5a; 64]).expect("RNDADDENTROPY and RNDRESEEDCRNG");
    }
}
