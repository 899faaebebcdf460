//! IPv4/IPv6 CIDR blocks for `ipBlock` peers.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IP network (`10.0.0.0/8`, `2001:db8::/64`). Host bits are ignored (masked off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    v6: bool,
    bits: u128,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in the block. An IPv4 address never lies in an IPv6 block and vice versa.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (v6, bits) = ip_bits(ip);
        v6 == self.v6 && (bits & mask(self.v6, self.prefix)) == self.bits
    }
}

fn ip_bits(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

fn mask(v6: bool, prefix: u8) -> u128 {
    let width: u32 = if v6 { 128 } else { 32 };
    let prefix = u32::from(prefix).min(width);
    if prefix == 0 {
        return 0;
    }
    let top = u128::MAX << (128 - prefix);
    if v6 {
        top
    } else {
        top >> 96
    }
}

/// Error of [`Cidr::from_str`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrParseError(pub String);

impl fmt::Display for CidrParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid CIDR {:?}", self.0)
    }
}

impl std::error::Error for CidrParseError {}

impl FromStr for Cidr {
    type Err = CidrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrParseError(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(err)?;
        let ip: IpAddr = addr.parse().map_err(|_| err())?;
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        let (v6, bits) = ip_bits(ip);
        if prefix > if v6 { 128 } else { 32 } {
            return Err(err());
        }
        Ok(Cidr {
            v6,
            bits: bits & mask(v6, prefix),
            prefix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().expect("valid cidr")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("valid ip")
    }

    #[test]
    fn v4() {
        assert!(c("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!c("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(c("10.1.2.3/32").contains(ip("10.1.2.3")));
        assert!(!c("10.1.2.3/32").contains(ip("10.1.2.4")));
        assert!(c("0.0.0.0/0").contains(ip("192.168.1.1")));
        assert!(!c("0.0.0.0/0").contains(ip("::1")));
        assert!(
            c("10.1.2.3/16").contains(ip("10.1.99.1")),
            "host bits are masked"
        );
    }

    #[test]
    fn v6() {
        assert!(c("2001:db8::/32").contains(ip("2001:db8:1::5")));
        assert!(!c("2001:db8::/32").contains(ip("2001:db9::1")));
        assert!(c("::/0").contains(ip("fe80::1")));
        assert!(c("fd00::1/128").contains(ip("fd00::1")));
        assert!(!c("fd00::1/128").contains(ip("fd00::2")));
        assert!(!c("::/0").contains(ip("1.2.3.4")));
    }

    #[test]
    fn invalid() {
        for s in [
            "10.0.0.0",
            "10.0.0.0/33",
            "::/129",
            "x/8",
            "10.0.0.0/-1",
            "",
        ] {
            assert!(s.parse::<Cidr>().is_err(), "{s}");
        }
    }
}
