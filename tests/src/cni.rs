//! The CNI network of a CRI test's containerd: Debian's bridge + host-local plugins
//! (`/usr/lib/cni`), a bridge and a /24 unique to the test process, IPAM state in the
//! test's own dir. Dropping it deletes the bridge (CNI leaves it behind by design).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where Debian's containernetworking-plugins installs the plugins.
pub const CNI_BIN: &str = "/usr/lib/cni";

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct CniNet {
    pub name: String,
    pub bridge: String,
    /// `10.213.N.0/24`: the pods' addresses; the bridge (gateway) is `.1`.
    pub subnet: String,
    pub gateway: String,
    pub conf_dir: PathBuf,
}

/// The bridge and host-local plugins, or why the test cannot run.
pub fn prerequisites() -> Result<(), String> {
    let missing: Vec<&str> = ["bridge", "host-local", "loopback"]
        .into_iter()
        .filter(|p| !Path::new(CNI_BIN).join(p).exists())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("missing CNI plugins {missing:?} in {CNI_BIN} (apt-get install containernetworking-plugins)"))
    }
}

impl CniNet {
    /// Writes the network config into `dir/cni-conf` (IPAM state in `dir/cni-ipam`).
    /// The third octet comes from the process id and a counter: 10.213.0.0/16 is not
    /// used on these machines (`ip route`), and two concurrent tests get two subnets.
    pub fn create(dir: &Path) -> CniNet {
        let n = (std::process::id() + NEXT.fetch_add(1, Ordering::SeqCst) * 37) % 250 + 2;
        let name = format!("hull-test-{n}");
        let bridge = format!("hullbr{n}");
        let subnet = format!("10.213.{n}.0/24");
        let gateway = format!("10.213.{n}.1");
        let conf_dir = dir.join("cni-conf");
        std::fs::create_dir_all(&conf_dir).expect("cni conf dir");
        let conf = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": name,
            "plugins": [{
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet, "gateway": gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": dir.join("cni-ipam").display().to_string(),
                }
            }]
        });
        std::fs::write(conf_dir.join("10-hull-test.conflist"), conf.to_string()).expect("cni conf");
        CniNet {
            name,
            bridge,
            subnet,
            gateway,
            conf_dir,
        }
    }
}

impl Drop for CniNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}
