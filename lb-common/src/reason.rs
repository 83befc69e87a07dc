//! Why a packet got its action. Each reason has a counter (`REASON_STATS`), and
//! maps to exactly one action, so the counters always add up to the packets seen.

/// What the XDP program returns. Values are the kernel's `XDP_*` codes.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Aborted = 0,
    Drop = 1,
    Pass = 2,
    Tx = 3,
}

impl Action {
    /// The kernel's name for the action, lowercase without the `XDP_` prefix.
    pub const fn label(self) -> &'static str {
        match self {
            Action::Aborted => "aborted",
            Action::Drop => "drop",
            Action::Pass => "pass",
            Action::Tx => "tx",
        }
    }
}

macro_rules! reasons {
    ($(#[$m:meta])* $name:ident { $($(#[doc = $doc:literal])* $variant:ident = $value:literal => $action:ident, $label:literal;)* }) => {
        $(#[$m])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($(#[doc = $doc])* $variant = $value,)* }

        impl $name {
            /// Every reason, in counter-index order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];
            /// Number of counters to reserve.
            pub const COUNT: u32 = [$($value,)*].len() as u32;

            /// The action taken for this reason.
            pub const fn action(self) -> Action {
                match self { $($name::$variant => Action::$action,)* }
            }

            /// Each reason's action as the program returns it, by counter
            /// index: one load from a constant table where the `match` of
            /// [`Self::action`] compiles to a dozen instructions per packet.
            pub const ACTION_CODES: [u32; [$($value,)*].len()] = [$(Action::$action as u32,)*];

            /// A stable snake_case label (metrics, stats output).
            pub const fn label(self) -> &'static str {
                match self { $($name::$variant => $label,)* }
            }
        }
    };
}

reasons! {
    /// Outcome of the balancer program for one packet.
    Reason {
        /// Encapsulated toward a backend and sent back out (`XDP_TX`).
        Forwarded = 0 => Tx, "forwarded";
        /// Not IPv4 or IPv6 (ARP, LLDP, ...): not ours.
        NotIp = 1 => Pass, "not_ip";
        /// IP not addressed to a VIP address: the host's own traffic, read no further than its
        /// destination address (so its fragments, malformed headers and other protocols count
        /// here too).
        NoVip = 2 => Pass, "no_vip";
        /// Neither TCP, UDP nor ICMP, to a VIP address (GRE, ESP, ...).
        NotTcpUdp = 3 => Pass, "not_tcp_udp";
        /// Ethernet, VLAN or IP header truncated or inconsistent (too short to hold the
        /// destination address, or to a VIP address); the host stack (which validates again
        /// and drops) decides, since we cannot tell whether it was meant for a VIP.
        MalformedL3 = 4 => Pass, "malformed_l3";
        /// TCP/UDP header to a VIP address truncated: without ports there is no VIP lookup, so the
        /// stack judges it.
        MalformedL4 = 5 => Pass, "malformed_l4";
        /// The VIP's ring slot holds no backend (no backend configured or all removed).
        NoBackend = 6 => Drop, "no_backend";
        /// The ring names a backend id with no entry (should not happen: the agent writes
        /// backends before rings).
        UnknownBackend = 7 => Drop, "unknown_backend";
        /// No tunnel source address of the backend's family is configured.
        NoTunnelSource = 8 => Drop, "no_tunnel_source";
        /// `bpf_xdp_adjust_head` refused to grow the packet, or the result was too short.
        EncapFailed = 9 => Drop, "encap_failed";
        /// An internal map lookup failed (counter or ring index out of range).
        MapError = 10 => Drop, "map_error";
        /// ICMP / ICMPv6 echo request to a VIP address, answered by the LB itself (`lb.icmp_echo = "reply"`).
        IcmpEchoReply = 11 => Tx, "icmp_echo_reply";
        /// ICMP error about a VIP flow (the quoted header, swapped, is a VIP flow): sent to that flow's backend.
        IcmpErrorForwarded = 12 => Tx, "icmp_error_forwarded";
        /// Other ICMP to a VIP address: echo with `icmp_echo = "pass"`, other types, errors quoting no
        /// VIP flow or too short to tell; the host stack judges it.
        IcmpToVip = 13 => Pass, "icmp_to_vip";
        /// Encapsulated it would exceed the interface MTU: answered with ICMP fragmentation-needed /
        /// ICMPv6 packet-too-big carrying the MTU left after the tunnel header (`lb.too_big = "icmp"`).
        TooBigIcmp = 14 => Tx, "too_big_icmp";
        /// Encapsulated it would exceed the interface MTU, and `lb.too_big = "drop"` (or it is an ICMP
        /// error or a fragment, which must not be answered with ICMP).
        TooBigDropped = 15 => Drop, "too_big_dropped";
        /// A fragment to a VIP address whose VIPs do not forward fragments (`fragments = "drop"`, default).
        FragmentDropped = 16 => Drop, "fragment_dropped";
        /// A fragment to a VIP address with `fragments = "forward"`: hashed on addresses only, so every
        /// fragment of a datagram reaches the same backend.
        FragmentForwarded = 17 => Tx, "fragment_forwarded";
        /// TCP/UDP to a VIP address on a port no VIP configures, `lb.unknown_port = "pass"` (default).
        UnknownPortPassed = 18 => Pass, "unknown_port_passed";
        /// TCP/UDP to a VIP address on a port no VIP configures, `lb.unknown_port = "drop"`.
        UnknownPortDropped = 19 => Drop, "unknown_port_dropped";
        /// TTL / hop limit 0 to a VIP address: no valid sender emits it.
        TtlZero = 20 => Drop, "ttl_zero";
        /// More IPv6 extension headers than we skip (`limits::MAX_IPV6_EXT_HEADERS`) before TCP/UDP,
        /// to a VIP address.
        TooManyExtHeaders = 21 => Pass, "too_many_ext_headers";
        /// Destination MAC is multicast or broadcast, to a VIP address: never balanced (its MAC
        /// cannot be the outer source).
        L2Multicast = 22 => Pass, "l2_multicast";
    }
}

reasons! {
    /// Outcome of the decap program for one packet.
    DecapReason {
        /// An IPIP / IP6IP6 / 4in6 / 6in4 packet, or GUE without second-chance data, whose outer
        /// headers were removed.
        Decapsulated = 0 => Pass, "decapsulated";
        /// Not a tunnel packet: passed untouched.
        NotTunnel = 1 => Pass, "not_tunnel";
        /// Truncated or inconsistent headers: passed untouched for the stack to judge.
        Malformed = 2 => Pass, "malformed";
        /// A tunnel packet whose outer header carries options or extension headers we do not strip.
        Unsupported = 3 => Pass, "unsupported";
        /// `bpf_xdp_adjust_head` failed after the packet was recognised.
        AdjustFailed = 4 => Drop, "adjust_failed";
        /// GUE with second-chance data, inner packet a TCP SYN without ACK: a new connection, decapsulated.
        AcceptedSyn = 5 => Pass, "accepted_syn";
        /// GUE with second-chance data, TCP, and a local socket of its 4-tuple that is not a listener
        /// (established, closing, or a request socket in SYN-RECV): decapsulated.
        AcceptedSocket = 6 => Pass, "accepted_socket";
        /// GUE with second-chance data, TCP, only a listener, and `bpf_tcp_check_syncookie` accepted the
        /// ACK: the handshake's last ACK of a SYN-cookie connection, decapsulated.
        AcceptedSyncookie = 7 => Pass, "accepted_syncookie";
        /// GUE with second-chance data sent on by as many backends as it names previous owners
        /// (hops == count: this host is the last one named): decapsulated whatever else is true,
        /// never sent on again.
        AcceptedRedirected = 8 => Pass, "accepted_redirected";
        /// GUE with second-chance data whose inner packet is not TCP, or has no TCP header to judge
        /// by (an IPv4 fragment or short header, IPv6 TCP behind extension headers): decapsulated.
        AcceptedOther = 9 => Pass, "accepted_other";
        /// GUE with second-chance data, TCP without a local connection, and the previous owner to send
        /// it to (`previous[hops]`) has the unspecified address (all zero; the balancer never sends
        /// one): decapsulated; the stack answers RST.
        UnknownNoPrevious = 10 => Pass, "unknown_no_previous";
        /// TCP without a local connection, re-encapsulated in place toward the next previous owner
        /// (`previous[hops]`, then hops + 1) and sent back out of the interface it came in on (its neighbour entry known).
        Redirected = 11 => Tx, "redirected";
        /// TCP without a local connection whose previous owner is not reachable through the interface it
        /// came in on (no route, forwarding off, another interface): decapsulated.
        RedirectFailed = 12 => Pass, "redirect_failed";
        /// UDP to the GUE port that is not GUE as the balancer sends it (version or C bit set, flags
        /// set, inner protocol not 4/41, Hlen not a whole second-chance block, unknown private data, Hlen or
        /// inner header beyond the packet, inner version not the announced one): dropped, since nothing
        /// else listens on that port.
        GueMalformed = 13 => Drop, "gue_malformed";
        /// TCP without a local connection whose previous owner is reached through the interface it came
        /// in on but has no neighbour entry yet (backends rarely talk to each other): the outer header is
        /// rewritten toward it (hops + 1; the LB's source kept, as the stack forwards nothing from its own
        /// addresses) and passed for the kernel to forward, which resolves the neighbour; later packets
        /// are `redirected`.
        RedirectedViaStack = 14 => Pass, "redirected_via_stack";
        /// GUE second-chance data whose `count` is 0, above `MAX_PREVIOUS_OWNERS`, or does not match
        /// `Hlen` (see `second_chance`): dropped, as `gue_malformed` (no sender of ours makes it).
        SecondChanceBadCount = 15 => Drop, "second_chance_bad_count";
        /// GUE second-chance data with `hops` above `count` (sent on more often than it names
        /// previous owners; no sender of ours makes it): dropped.
        SecondChanceHopsBeyondCount = 16 => Drop, "second_chance_hops_beyond_count";
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_dense_indices() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32, "{r:?}");
        }
        for (i, r) in DecapReason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32, "{r:?}");
        }
    }

    #[test]
    fn the_action_table_is_the_match() {
        for r in Reason::ALL {
            assert_eq!(Reason::ACTION_CODES[*r as usize], r.action() as u32, "{}", r.label());
        }
        for r in DecapReason::ALL {
            assert_eq!(DecapReason::ACTION_CODES[*r as usize], r.action() as u32, "{}", r.label());
        }
    }
}
