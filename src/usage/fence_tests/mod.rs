use std::net::{IpAddr, SocketAddr};

use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn cidr(text: &str) -> Cidr {
    Cidr::parse(text).unwrap()
}

#[test]
fn v4_networks_match_their_addresses_only() {
    let net = cidr("10.0.0.0/8");
    assert!(net.contains(ip("10.0.0.0")) && net.contains(ip("10.255.255.255")));
    assert!(!net.contains(ip("11.0.0.0")) && !net.contains(ip("9.255.255.255")));
    let net = cidr("192.168.1.128/25");
    assert!(net.contains(ip("192.168.1.128")) && net.contains(ip("192.168.1.255")));
    assert!(!net.contains(ip("192.168.1.127")));
    // A v4 network never matches a (non-mapped) v6 address, and the other way round.
    assert!(!net.contains(ip("::c0a8:180")));
    assert!(!cidr("::/0").contains(ip("1.2.3.4")));
}

#[test]
fn edge_prefixes() {
    assert!(cidr("0.0.0.0/0").contains(ip("255.255.255.255")) && cidr("0.0.0.0/0").contains(ip("0.0.0.0")));
    assert!(cidr("::/0").contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
    let host = cidr("1.2.3.4/32");
    assert!(host.contains(ip("1.2.3.4")) && !host.contains(ip("1.2.3.5")));
    assert_eq!(cidr("1.2.3.4"), host, "a bare address is a /32");
    let host6 = cidr("2001:db8::1/128");
    assert!(host6.contains(ip("2001:db8::1")) && !host6.contains(ip("2001:db8::2")));
    assert_eq!(cidr("2001:db8::1"), host6);
    let one = cidr("128.0.0.0/1");
    assert!(one.contains(ip("128.0.0.0")) && !one.contains(ip("127.255.255.255")));
    let v6 = cidr("fe80::/10");
    assert!(v6.contains(ip("fe80::1")) && v6.contains(ip("febf:ffff::1")) && !v6.contains(ip("fec0::1")));
}

#[test]
fn mapped_addresses_match_as_ipv4() {
    assert!(cidr("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
    assert!(cidr("169.254.0.0/16").contains(ip("::ffff:169.254.169.254")));
    // A mapped network is its IPv4 network.
    assert_eq!(cidr("::ffff:10.0.0.0/104"), cidr("10.0.0.0/8"));
    assert!(cidr("::ffff:10.0.0.0/104").contains(ip("10.1.2.3")));
    assert!(cidr("::ffff:10.0.0.0/104").contains(ip("::ffff:10.1.2.3")));
}

#[test]
fn malformed_cidrs_are_refused() {
    for bad in
        ["", "10.0.0.0/33", "::/129", "10.0.0.1/8", "10.0.0.0/-1", "10.0.0.0/", "300.0.0.0/8", "fe80::1/10", "x/8"]
    {
        assert!(Cidr::parse(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn rules_parse_cidrs_hosts_and_suffixes() {
    assert_eq!(Rule::parse(" 10.0.0.0/8 ").unwrap(), Rule::Network(cidr("10.0.0.0/8")));
    assert_eq!(Rule::parse("::1").unwrap(), Rule::Network(cidr("::1/128")));
    assert_eq!(Rule::parse("Prometheus.Monitoring.svc.").unwrap(), Rule::Host("prometheus.monitoring.svc".into()));
    assert_eq!(Rule::parse("*.shop.svc").unwrap(), Rule::Suffix("shop.svc".into()));
    assert_eq!(Rule::parse(".shop.svc").unwrap(), Rule::Suffix("shop.svc".into()));
    for bad in ["", " ", "*.", "a..b", "http://x", "a_b.c", "*"] {
        assert!(Rule::parse(bad).is_err(), "{bad:?} accepted");
    }
    let suffix = Rule::parse("*.shop.svc").unwrap();
    assert!(suffix.matches_host("gw.shop.svc") && suffix.matches_host("a.b.shop.svc"));
    assert!(!suffix.matches_host("shop.svc") && !suffix.matches_host("evilshop.svc"));
}

#[test]
fn built_in_ranges_are_denied_by_default() {
    let policy = AddressPolicy::default();
    let cases = [
        ("169.254.169.254", Refusal::LinkLocal),
        ("169.254.0.1", Refusal::LinkLocal),
        ("fe80::1", Refusal::LinkLocal),
        ("::ffff:169.254.169.254", Refusal::LinkLocal),
        ("127.0.0.1", Refusal::Loopback),
        ("127.255.255.254", Refusal::Loopback),
        ("::1", Refusal::Loopback),
        ("::ffff:127.0.0.1", Refusal::Loopback),
        ("0.0.0.0", Refusal::Unspecified),
        ("0.1.2.3", Refusal::Unspecified),
        ("::", Refusal::Unspecified),
        ("::ffff:0.0.0.0", Refusal::Unspecified),
    ];
    for (addr, why) in cases {
        assert_eq!(policy.check_ip(ip(addr)), Err(why), "{addr}");
    }
    for ok in ["10.0.0.1", "192.168.0.1", "8.8.8.8", "2001:db8::1", "169.253.255.255", "169.255.0.0", "128.0.0.1"] {
        assert_eq!(policy.check_ip(ip(ok)), Ok(()), "{ok}");
    }
}

#[test]
fn loopback_flag_opens_loopback_only() {
    let policy = AddressPolicy { allow_loopback: true, ..Default::default() };
    for ok in ["127.0.0.1", "::1", "::ffff:127.0.0.1", "127.1.2.3"] {
        assert_eq!(policy.check("localhost", ip(ok)), Ok(()), "{ok}");
    }
    assert_eq!(policy.check_ip(ip("169.254.169.254")), Err(Refusal::LinkLocal));
    assert_eq!(policy.check_ip(ip("0.0.0.0")), Err(Refusal::Unspecified));
}

#[test]
fn allow_and_deny_lists() {
    // Only the gateway namespace's pods (a pod CIDR) and its services by name; one host carved out.
    let policy = AddressPolicy {
        allow: vec![Rule::parse("10.244.0.0/16").unwrap(), Rule::parse("*.shop.svc.cluster.local").unwrap()],
        deny: vec![Rule::parse("10.244.7.0/24").unwrap(), Rule::parse("admin.shop.svc.cluster.local").unwrap()],
        allow_loopback: false,
    };
    assert_eq!(policy.check("10.244.1.5", ip("10.244.1.5")), Ok(()));
    assert_eq!(policy.check("gw.shop.svc.cluster.local", ip("10.96.0.10")), Ok(()));
    assert_eq!(policy.check("gw.shop.svc.cluster.local.", ip("10.96.0.10")), Ok(()));
    assert_eq!(policy.check("10.244.7.9", ip("10.244.7.9")), Err(Refusal::Denied));
    assert_eq!(policy.check("admin.shop.svc.cluster.local", ip("10.96.0.11")), Err(Refusal::Denied));
    assert_eq!(policy.check("db.other.svc.cluster.local", ip("10.96.0.12")), Err(Refusal::NotAllowed));
    assert_eq!(policy.check("10.0.0.1", ip("10.0.0.1")), Err(Refusal::NotAllowed));
    // An allowed name still cannot reach a built-in range, nor a denied network.
    assert_eq!(policy.check("gw.shop.svc.cluster.local", ip("169.254.169.254")), Err(Refusal::LinkLocal));
    assert_eq!(policy.check("gw.shop.svc.cluster.local", ip("127.0.0.1")), Err(Refusal::Loopback));
    assert_eq!(policy.check("gw.shop.svc.cluster.local", ip("10.244.7.1")), Err(Refusal::Denied));
    // An allow entry cannot re-open link-local.
    let metadata = AddressPolicy { allow: vec![Rule::parse("169.254.169.254").unwrap()], ..Default::default() };
    assert_eq!(metadata.check_ip(ip("169.254.169.254")), Err(Refusal::LinkLocal));
}

#[test]
fn the_filter_keeps_allowed_addresses_and_says_why_when_none_is() {
    let policy = AddressPolicy::default();
    let addrs: Vec<SocketAddr> = vec!["127.0.0.1:0".parse().unwrap(), "10.0.0.1:0".parse().unwrap()];
    // A name that resolves to a mix: only the allowed address is kept, so the client never connects to the other.
    assert_eq!(policy.filter("mixed", addrs.clone()).unwrap(), vec![addrs[1]]);
    assert_eq!(policy.filter("lo", vec![addrs[0]]), Err(Refusal::Loopback));
    assert_eq!(policy.filter("none", Vec::new()), Ok(Vec::new()));
}

#[tokio::test]
async fn the_resolver_refuses_a_name_that_resolves_to_loopback() {
    use reqwest::dns::Resolve;
    let fenced = FencedResolver::new(Arc::new(AddressPolicy::default()));
    let name: reqwest::dns::Name = "localhost".parse().unwrap();
    let err = match fenced.resolve(name).await {
        Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
        Err(err) => err,
    };
    let forbidden = err.downcast_ref::<Forbidden>().expect("a Forbidden error");
    assert_eq!((forbidden.host.as_str(), forbidden.why), ("localhost", Refusal::Loopback));

    let open = FencedResolver::new(Arc::new(AddressPolicy { allow_loopback: true, ..Default::default() }));
    let addrs: Vec<SocketAddr> = open.resolve("localhost".parse().unwrap()).await.unwrap().collect();
    assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
}
