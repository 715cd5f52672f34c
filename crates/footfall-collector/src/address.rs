//! The client's address behind proxies.

use std::net::IpAddr;

use http::HeaderMap;

/// A `server.trusted_proxies` entry: an address (`10.0.0.7`) or a network
/// (`10.0.0.0/8`, `fd00::/8`).
pub fn parse_proxy(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(Into::into))
}

/// The client address. From a peer that is not a trusted proxy, the peer's. From a
/// trusted proxy, the right-most address of `X-Forwarded-For` (else of `Forwarded`'s
/// `for=`) that is not itself a trusted proxy: each proxy appends the address it was
/// reached from, so entries to the left of that one were written by the client and
/// prove nothing — a client cannot choose its address by sending the header. When every
/// entry is a trusted proxy, the left-most; an entry that is not an address ends the
/// walk at the proxy that passed it on.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let xff: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let chain: Vec<Option<IpAddr>> = if !xff.is_empty() {
        xff.iter().map(|v| v.parse().ok()).collect()
    } else {
        headers
            .get_all("forwarded")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|element| {
                element.split(';').map(str::trim).find_map(|p| {
                    p.get(..4)
                        .filter(|k| k.eq_ignore_ascii_case("for="))
                        .map(|_| &p[4..])
                })
            })
            .map(forwarded_node)
            .collect()
    };
    let mut client = peer;
    for hop in chain.iter().rev() {
        match hop {
            Some(ip) if is_trusted(ip) => client = *ip,
            Some(ip) => return *ip,
            None => return client,
        }
    }
    client
}

/// The address of a `Forwarded` node (`192.0.2.1`, `"[2001:db8::1]:4711"`, …).
fn forwarded_node(f: &str) -> Option<IpAddr> {
    let f = f.trim_matches('"');
    let f = match f.strip_prefix('[') {
        Some(x) => x.split(']').next().unwrap_or(x),
        None => f,
    };
    f.parse()
        .ok()
        .or_else(|| f.rsplit_once(':').and_then(|(h, _)| h.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_address_behind_trusted_proxies_only() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.7, 10.0.0.1".parse().unwrap());
        let trusted = vec![
            parse_proxy("127.0.0.1").unwrap(),
            parse_proxy("10.0.0.0/8").unwrap(),
        ];
        let proxy: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let stranger: std::net::IpAddr = "198.51.100.1".parse().unwrap();
        // Two trusted proxies (10.0.0.1 appended by the outer one): the client is left of them.
        assert_eq!(client_ip(proxy, &h, &trusted).to_string(), "203.0.113.7");
        // A forged entry: the client sent `X-Forwarded-For: 6.6.6.6`, nginx appended the
        // address it was reached from. The forged address changes nothing.
        let mut forged = HeaderMap::new();
        forged.insert("x-forwarded-for", "6.6.6.6, 198.51.100.9".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &forged, &trusted).to_string(),
            "198.51.100.9"
        );
        forged.insert(
            "x-forwarded-for",
            "6.6.6.6, 10.0.0.3, 198.51.100.9".parse().unwrap(),
        );
        assert_eq!(
            client_ip(proxy, &forged, &trusted).to_string(),
            "198.51.100.9",
            "a trusted-looking forged entry left of the client is not reached"
        );
        // The header split over two lines reads as one list.
        let mut two = HeaderMap::new();
        two.append("x-forwarded-for", "6.6.6.6".parse().unwrap());
        two.append("x-forwarded-for", "198.51.100.10".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &two, &trusted).to_string(),
            "198.51.100.10"
        );
        // Garbage right of the client: the proxy that passed it on is what is known.
        let mut junk = HeaderMap::new();
        junk.insert("x-forwarded-for", "198.51.100.11, unknown".parse().unwrap());
        assert_eq!(client_ip(proxy, &junk, &trusted), proxy);
        assert_eq!(
            client_ip(stranger, &h, &trusted),
            stranger,
            "untrusted peers cannot choose an address"
        );
        let mut f = HeaderMap::new();
        f.insert(
            "forwarded",
            "for=\"[2001:db8::1]:4711\";proto=https".parse().unwrap(),
        );
        assert_eq!(client_ip(proxy, &f, &trusted).to_string(), "2001:db8::1");
    }
}
