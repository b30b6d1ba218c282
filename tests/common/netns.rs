//! Stand-in gateway pods for the EndpointSlice tests. EndpointSlices refuse loopback addresses, and tests on these
//! machines may send traffic only to loopback or to hosts in network namespaces the test itself creates: so each
//! stand-in pod is a network namespace joined to the host by a veth pair on a private /30, created here and removed
//! on drop. Its exporter is served by the test process itself, from a socket bound inside the namespace. Needs root
//! and iproute2's `ip`; without them the test fails saying so.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};

/// Stand-in pods made by this process so far (each gets its own /30).
static MADE: AtomicU8 = AtomicU8::new(0);

/// A network namespace with one address, reachable from the host.
pub struct PodNet {
    name: String,
    /// The pod's address (the host side is the one before it).
    pub addr: Ipv4Addr,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!("`ip` (iproute2) is needed to create the stand-in pods' network namespaces: {e}. Install it with `apt-get install iproute2`, and run the tests as root")
    });
    assert!(
        out.status.success(),
        "ip {}: {} (these tests need root)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PodNet {
    /// A new namespace `kwp<pid>-<n>` with address 10.213.<pid>.<4n+2>/30, its host side at <4n+1>.
    pub fn create() -> PodNet {
        let n = MADE.fetch_add(1, Ordering::SeqCst);
        assert!(n < 63, "at most 63 stand-in pods per test process");
        let pid = std::process::id();
        let octet = u8::try_from(pid % 250).expect("fits");
        let (host, addr) = (Ipv4Addr::new(10, 213, octet, 4 * n + 1), Ipv4Addr::new(10, 213, octet, 4 * n + 2));
        let name = format!("kwp{}-{n}", pid % 100_000);
        let (h, p) = (format!("kwh{}{n}", pid % 100_000), format!("kwn{}{n}", pid % 100_000));
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let pod = PodNet { name: name.clone(), addr };
        ip(&["link", "add", &h, "type", "veth", "peer", "name", &p]);
        ip(&["link", "set", &p, "netns", &name]);
        ip(&["addr", "add", &format!("{host}/30"), "dev", &h]);
        ip(&["link", "set", &h, "up"]);
        ip(&["netns", "exec", &name, "ip", "addr", "add", &format!("{addr}/30"), "dev", &p]);
        ip(&["netns", "exec", &name, "ip", "link", "set", &p, "up"]);
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        pod
    }

    /// A listening socket on `port` of the pod's address, bound from inside its namespace (a socket stays in the
    /// namespace it was made in, whichever thread serves it later).
    pub fn listen(&self, port: u16) -> std::net::TcpListener {
        let path = format!("/run/netns/{}", self.name);
        let addr = self.addr;
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&ns),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap_or_else(|e| panic!("setns into {path}: {e}"));
            std::net::TcpListener::bind((addr, port)).unwrap_or_else(|e| panic!("bind {addr}:{port} in {path}: {e}"))
        })
        .join()
        .expect("the binding thread")
    }
}

impl Drop for PodNet {
    /// Deleting the namespace deletes its end of the veth pair, and with it the host's end.
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}
