//! Visitor identity without cookies, and address truncation.
//!
//! Visitor id = SipHash-2-4 (128-bit, folded to 64) keyed with a server secret over the
//! property and the strongest identifier available:
//! `user_id`, else `client_id`, else client address + user agent mixed with a salt that
//! rotates every UTC day. The salt is what makes address-derived ids unlinkable across
//! days; once it is deleted (after 48 h) nobody can recompute them.

use std::hash::Hasher;
use std::net::IpAddr;

use siphasher::sip128::{Hasher128, SipHasher24};

/// Which identifier a visitor id was derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource<'a> {
    UserId(&'a str),
    ClientId(&'a str),
    /// Address and user agent, with the salt of the receive day.
    Address {
        ip: IpAddr,
        user_agent: &'a str,
        daily_salt: &'a [u8; 16],
    },
}

/// Computes the visitor id. `secret` is the installation's 16-byte key.
pub fn visitor_id(secret: &[u8; 16], property: &str, source: IdentitySource<'_>) -> u64 {
    let mut h = SipHasher24::new_with_key(secret);
    h.write(property.as_bytes());
    h.write_u8(0xff);
    match source {
        IdentitySource::UserId(u) => {
            h.write_u8(1);
            h.write(u.as_bytes());
        }
        IdentitySource::ClientId(c) => {
            h.write_u8(2);
            h.write(c.as_bytes());
        }
        IdentitySource::Address {
            ip,
            user_agent,
            daily_salt,
        } => {
            h.write_u8(3);
            h.write(daily_salt);
            match ip {
                IpAddr::V4(v4) => h.write(&v4.octets()),
                IpAddr::V6(v6) => h.write(&v6.octets()),
            }
            h.write_u8(0xff);
            h.write(user_agent.as_bytes());
        }
    }
    let v = h.finish128();
    v.h1 ^ v.h2.rotate_left(32)
}

/// The network part of an address kept for geo lookup: IPv4 /24, IPv6 /48.
pub fn truncate_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0).to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_depend_on_property_and_salt() {
        let k = [7u8; 16];
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let a = visitor_id(
            &k,
            "FF-A",
            IdentitySource::Address {
                ip,
                user_agent: "ua",
                daily_salt: &[1; 16],
            },
        );
        let b = visitor_id(
            &k,
            "FF-A",
            IdentitySource::Address {
                ip,
                user_agent: "ua",
                daily_salt: &[2; 16],
            },
        );
        let c = visitor_id(
            &k,
            "FF-B",
            IdentitySource::Address {
                ip,
                user_agent: "ua",
                daily_salt: &[1; 16],
            },
        );
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            visitor_id(&k, "FF-A", IdentitySource::UserId("u")),
            visitor_id(&k, "FF-A", IdentitySource::UserId("u"))
        );
        assert_ne!(
            visitor_id(&k, "FF-A", IdentitySource::UserId("u")),
            visitor_id(&k, "FF-A", IdentitySource::ClientId("u"))
        );
    }

    #[test]
    fn truncation() {
        assert_eq!(truncate_ip("203.0.113.9".parse().unwrap()), "203.0.113.0");
        assert_eq!(
            truncate_ip("2001:db8:abcd:12::1".parse().unwrap()),
            "2001:db8:abcd::"
        );
    }
}
