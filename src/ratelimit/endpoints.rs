//! A scrape source's endpoints from a Service: the ready endpoints its EndpointSlices list, followed through a watch
//! of the EndpointSlices in the controller's scope (the cache is filled as they change; each poll reads it), as URLs
//! to scrape. Pure apart from the cache it reads.

use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::api::ratelimit::ScrapeService;

/// The label an EndpointSlice carries with the name of its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Most endpoints one source reads, as for `usage.scrape.urls`.
pub const MAX_ENDPOINTS: usize = 64;

/// The URLs of the ready endpoints of Service `svc` in namespace `ns`, sorted, at most [`MAX_ENDPOINTS`]. An
/// endpoint counts unless its `ready` condition is `false` (unknown counts as ready, as the API asks); one with
/// no address of its slice's port is left out, as are FQDN slices.
pub fn urls<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>, ns: &str, svc: &ScrapeService) -> Vec<String> {
    let scheme = svc.scheme.as_deref().unwrap_or("http");
    let path = svc.path.as_deref().unwrap_or("/metrics");
    let mut out: Vec<String> = slices
        .into_iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(ns))
        .filter(|s| s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) == Some(&svc.name))
        .filter(|s| s.address_type == "IPv4" || s.address_type == "IPv6")
        .flat_map(|s| {
            let port = port_of(s, &svc.port);
            let ipv6 = s.address_type == "IPv6";
            s.endpoints.iter().filter_map(move |e| {
                let ready = e.conditions.as_ref().and_then(|c| c.ready) != Some(false);
                let address = e.addresses.first().filter(|_| ready)?;
                let host = if ipv6 { format!("[{address}]") } else { address.clone() };
                Some(format!("{scheme}://{host}:{}{path}", port?))
            })
        })
        .collect();
    out.sort();
    out.dedup();
    out.truncate(MAX_ENDPOINTS);
    out
}

/// The number of the slice's port named `port`, or numbered `port`.
fn port_of(slice: &EndpointSlice, port: &str) -> Option<i32> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let by_name = ports.iter().find(|p| p.name.as_deref() == Some(port)).and_then(|p| p.port);
    by_name.or_else(|| {
        let number: i32 = port.parse().ok()?;
        ports.iter().find(|p| p.port == Some(number)).map(|_| number)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(ns: &str, svc: &str, family: &str, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{svc}-x"), "namespace": ns, "labels": {SERVICE_NAME_LABEL: svc}},
            "addressType": family,
            "ports": [{"name": "metrics", "port": 9100, "protocol": "TCP"}],
            "endpoints": endpoints,
        }))
        .expect("slice")
    }

    fn svc(port: &str) -> ScrapeService {
        ScrapeService { name: "gw".into(), port: port.into(), path: None, scheme: None }
    }

    #[test]
    fn ready_endpoints_of_the_service_become_urls() {
        let slices = [
            slice(
                "ns",
                "gw",
                "IPv4",
                serde_json::json!([
                    {"addresses": ["10.0.0.2"], "conditions": {"ready": true}},
                    {"addresses": ["10.0.0.3"]},
                    {"addresses": ["10.0.0.4"], "conditions": {"ready": false}},
                ]),
            ),
            slice("ns", "gw", "IPv6", serde_json::json!([{"addresses": ["fd00::5"]}])),
            slice("other", "gw", "IPv4", serde_json::json!([{"addresses": ["10.9.9.9"]}])),
            slice("ns", "db", "IPv4", serde_json::json!([{"addresses": ["10.8.8.8"]}])),
        ];
        let want = ["http://10.0.0.2:9100/metrics", "http://10.0.0.3:9100/metrics", "http://[fd00::5]:9100/metrics"];
        assert_eq!(urls(&slices, "ns", &svc("metrics")), want);
        assert_eq!(urls(&slices, "ns", &svc("9100")), want, "by number");
        assert!(urls(&slices, "ns", &svc("admin")).is_empty(), "no such port");
        let https =
            ScrapeService { path: Some("/stats/prometheus".into()), scheme: Some("https".into()), ..svc("metrics") };
        assert_eq!(urls(&slices[..1], "ns", &https)[0], "https://10.0.0.2:9100/stats/prometheus");
    }
}
