//! Building blocks of crafted packets, shared by the BPF_PROG_TEST_RUN fuzzer
//! (`tests/fuzz.rs`) and the hostile-frame test through the namespace
//! topology (`tests/hostile.rs`).

/// splitmix64: small, seedable, good enough to pick mutations.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP message of this type and code around `body`, checksummed as ICMPv4.
pub fn icmp(ty: u8, code: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0, 0, 0, 5, 0xdc];
    m.extend_from_slice(body);
    let c = inet_checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

pub const TPID_CTAG: u16 = 0x8100;
pub const TPID_STAG: u16 = 0x88a8;

/// `frame` with these (TPID, TCI) tags inserted after the MACs, outermost first.
pub fn with_vlan_tags(frame: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    for (tpid, tci) in tags {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&tci.to_be_bytes());
    }
    out.extend_from_slice(&frame[12..]);
    out
}

/// The VLAN tags of a frame (4 bytes each, outermost first), its EtherType and
/// the offset of what follows, or `None` if a tag is cut short.
pub fn l2_split(frame: &[u8]) -> Option<(Vec<[u8; 4]>, u16, usize)> {
    let mut tags = Vec::new();
    let mut at = 12;
    loop {
        let ty = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
        if ty != TPID_CTAG && ty != TPID_STAG {
            return Some((tags, ty, at + 2));
        }
        tags.push(frame.get(at..at + 4)?.try_into().ok()?);
        at += 4;
    }
}

/// The IP packet in `bytes` (from its first byte) as long as its header says,
/// if the header is there and the length fits.
pub fn ip_packet(bytes: &[u8]) -> Option<&[u8]> {
    let len = match bytes.first()? >> 4 {
        4 => u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]) as usize,
        6 => 40 + u16::from_be_bytes([*bytes.get(4)?, *bytes.get(5)?]) as usize,
        _ => return None,
    };
    bytes.get(..len)
}
