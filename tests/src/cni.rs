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
    /// A dual-stack network's IPv6 side: `fd77:0:0:N::/64`, the bridge `::1`.
    pub subnet6: Option<String>,
    pub gateway6: Option<String>,
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
        CniNet::make(dir, false)
    }

    /// The same with an IPv6 range beside the IPv4 one (pods get both addresses, and
    /// both default routes).
    pub fn create_dual_stack(dir: &Path) -> CniNet {
        CniNet::make(dir, true)
    }

    fn make(dir: &Path, dual_stack: bool) -> CniNet {
        let n = (std::process::id() + NEXT.fetch_add(1, Ordering::SeqCst) * 37) % 250 + 2;
        let name = format!("hull-test-{n}");
        let bridge = format!("hullbr{n}");
        let subnet = format!("10.213.{n}.0/24");
        let gateway = format!("10.213.{n}.1");
        let (subnet6, gateway6) = if dual_stack {
            (
                Some(format!("fd77:0:0:{n}::/64")),
                Some(format!("fd77:0:0:{n}::1")),
            )
        } else {
            (None, None)
        };
        let mut ranges = vec![serde_json::json!([{"subnet": subnet, "gateway": gateway}])];
        let mut routes = vec![serde_json::json!({"dst": "0.0.0.0/0"})];
        if let (Some(s6), Some(g6)) = (&subnet6, &gateway6) {
            ranges.push(serde_json::json!([{"subnet": s6, "gateway": g6}]));
            routes.push(serde_json::json!({"dst": "::/0"}));
        }
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
                    "ranges": ranges,
                    "routes": routes,
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
            subnet6,
            gateway6,
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
