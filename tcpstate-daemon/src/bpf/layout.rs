//! Where the kernel programs find what they read in `struct sock`, from this kernel's BTF.
//! The programs have no CO-RE relocations (Rust eBPF has none), so the offsets go to them as
//! a load-time global (`SOCKET_LAYOUT`); the verifier then checks every read against the same
//! BTF.

use tcpstate_common::{AddressLayout, SocketLayout};

use super::btf::{BtfError, KIND_STRUCT, KernelBtf};

impl KernelBtf {
    /// Where the program finds what it reads in `struct sock`.
    pub fn socket_layout(&self) -> Result<SocketLayout, BtfError> {
        let (sock, common, common_type) = self.sock_common()?;
        let common_field = |name, size| self.common_field(common, common_type, name, size);
        let sock_field = |name: &'static str, size: u32| {
            self.int_field(sock, name, size)
                .ok_or(BtfError::MissingField("struct sock", name))
        };
        Ok(SocketLayout {
            family: common_field("skc_family", 2)?,
            local_port: common_field("skc_num", 2)?,
            remote_port: common_field("skc_dport", 2)?,
            state: common_field("skc_state", 1)?,
            flags: common_field("skc_flags", 8)?,
            protocol: sock_field("sk_protocol", 2)?,
            error: sock_field("sk_err", 4)?,
            net: self
                .net_pointer(common_type)
                .map(|offset| common + offset)?,
            net_inode: self.net_inode()?,
            cookie: self.cookie(common_type).map(|offset| common + offset)?,
            // Read only with workload attribution on (see `owner_cgroup`).
            owner_cgroup: 0,
            cgroup_node: 0,
            node_id: 0,
            _padding: 0,
        })
    }

    /// Where the event stream finds the addresses in `struct sock`.
    pub fn address_layout(&self) -> Result<AddressLayout, BtfError> {
        let (_, common, common_type) = self.sock_common()?;
        let v4 = |name| self.common_field(common, common_type, name, 4);
        Ok(AddressLayout {
            local: v4("skc_rcv_saddr")?,
            remote: v4("skc_daddr")?,
            // A kernel without IPv6 has no v6 fields, and no IPv6 socket to read them of.
            local_v6: self.v6_address(common_type, "skc_v6_rcv_saddr", common),
            remote_v6: self.v6_address(common_type, "skc_v6_daddr", common),
            source_port: self.source_port()?,
        })
    }

    /// Offset in `struct tcp_sock` of `inet_sport`: `tcp_sock.inet_conn.icsk_inet.inet_sport`.
    fn source_port(&self) -> Result<u32, BtfError> {
        let mut offset = 0;
        let mut container = self
            .id(KIND_STRUCT, "tcp_sock")
            .ok_or(BtfError::MissingField(
                "struct tcp_sock",
                "(the struct itself)",
            ))?;
        for (owner, member) in [
            ("struct tcp_sock", "inet_conn"),
            ("struct inet_connection_sock", "icsk_inet"),
        ] {
            let (at, member_type) = self
                .member_offset(container, member)
                .ok_or(BtfError::MissingField(owner, member))?;
            offset += at;
            container = member_type;
        }
        let port = self
            .int_field(container, "inet_sport", 2)
            .ok_or(BtfError::MissingField("struct inet_sock", "inet_sport"))?;
        Ok(offset + port)
    }

    /// `struct sock`'s type id, and the offset and type of its `__sk_common`.
    fn sock_common(&self) -> Result<(u32, u32, u32), BtfError> {
        let sock = self
            .id(KIND_STRUCT, "sock")
            .ok_or(BtfError::MissingField("struct sock", "(the struct itself)"))?;
        let (common, common_type) = self
            .member_offset(sock, "__sk_common")
            .ok_or(BtfError::MissingField("struct sock", "__sk_common"))?;
        Ok((sock, common, common_type))
    }

    /// Offset in `struct sock` of the `size`-byte integer `name` of `struct sock_common` (at
    /// `common`, of type `common_type`).
    fn common_field(
        &self,
        common: u32,
        common_type: u32,
        name: &'static str,
        size: u32,
    ) -> Result<u32, BtfError> {
        self.int_field(common_type, name, size)
            .map(|offset| common + offset)
            .ok_or(BtfError::MissingField("struct sock_common", name))
    }

    /// Offset in `struct sock` of the `struct in6_addr` member `name` of `struct sock_common`
    /// (at `common`), if the kernel has it (CONFIG_IPV6); 0 otherwise.
    fn v6_address(&self, common_type: u32, name: &str, common: u32) -> u32 {
        self.member_offset(common_type, name)
            .map_or(0, |(offset, _)| common + offset)
    }

    /// `layout` with the offsets that lead from a socket to its owner's cgroup id: `sock`'s
    /// `sk_cgrp_data.cgroup`, the group's `kn`, the node's `id` (Linux 5.15+ layout).
    pub fn with_owner_cgroup(&self, layout: SocketLayout) -> Result<SocketLayout, BtfError> {
        let sock = self
            .id(KIND_STRUCT, "sock")
            .ok_or(BtfError::MissingField("struct sock", "(the struct itself)"))?;
        let (data, data_type) = self
            .member_offset(sock, "sk_cgrp_data")
            .ok_or(BtfError::MissingField("struct sock", "sk_cgrp_data"))?;
        let (cgroup, _) = self
            .member_offset(data_type, "cgroup")
            .ok_or(BtfError::MissingField("struct sock_cgroup_data", "cgroup"))?;
        let group = self
            .id(KIND_STRUCT, "cgroup")
            .ok_or(BtfError::MissingField(
                "struct cgroup",
                "(the struct itself)",
            ))?;
        let (node, _) = self
            .member_offset(group, "kn")
            .ok_or(BtfError::MissingField("struct cgroup", "kn"))?;
        let kernfs_node = self
            .id(KIND_STRUCT, "kernfs_node")
            .ok_or(BtfError::MissingField(
                "struct kernfs_node",
                "(the struct itself)",
            ))?;
        let id = self
            .int_field(kernfs_node, "id", 8)
            .ok_or(BtfError::MissingField("struct kernfs_node", "id"))?;
        Ok(SocketLayout {
            owner_cgroup: data + cgroup,
            cgroup_node: node,
            node_id: id,
            ..layout
        })
    }

    /// Offset in `struct sock_common` of `skc_cookie.counter`, the socket's cookie.
    fn cookie(&self, common_type: u32) -> Result<u32, BtfError> {
        let (field, atomic) = self
            .member_offset(common_type, "skc_cookie")
            .ok_or(BtfError::MissingField("struct sock_common", "skc_cookie"))?;
        self.int_field(atomic, "counter", 8)
            .map(|counter| field + counter)
            .ok_or(BtfError::MissingField("atomic64_t", "counter"))
    }

    /// Offset in `struct sock_common` of `skc_net.net`, the socket's `struct net *`.
    fn net_pointer(&self, common_type: u32) -> Result<u32, BtfError> {
        let (field, possible_net) = self
            .member_offset(common_type, "skc_net")
            .ok_or(BtfError::MissingField("struct sock_common", "skc_net"))?;
        let (pointer, _) = self
            .member_offset(possible_net, "net")
            .ok_or(BtfError::MissingField("possible_net_t", "net"))?;
        Ok(field + pointer)
    }

    /// Offset in `struct net` of `ns.inum`, the namespace's inode number.
    fn net_inode(&self) -> Result<u32, BtfError> {
        let net = self
            .id(KIND_STRUCT, "net")
            .ok_or(BtfError::MissingField("struct net", "(the struct itself)"))?;
        let (ns, ns_common) = self
            .member_offset(net, "ns")
            .ok_or(BtfError::MissingField("struct net", "ns"))?;
        self.int_field(ns_common, "inum", 4)
            .map(|inum| ns + inum)
            .ok_or(BtfError::MissingField("struct ns_common", "inum"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's layout, when the test machine has BTF (every machine this project
    /// supports does). The sock_common offsets have been the same since Linux 4.x.
    #[test]
    fn reads_this_kernels_struct_sock() {
        let btf = match KernelBtf::from_sys_fs() {
            Ok(btf) => btf,
            Err(BtfError::Unreadable(_)) => return,
            Err(err) => panic!("{err}"),
        };
        let layout = btf.socket_layout().unwrap();
        assert_eq!(layout.owner_cgroup, 0, "no cgroup reads unless asked");
        let owned = btf.with_owner_cgroup(layout).unwrap();
        assert!(owned.owner_cgroup > layout.protocol && owned.node_id > 0);
        assert_eq!(
            (layout.remote_port, layout.local_port, layout.family),
            (12, 14, 16)
        );
        assert!(layout.protocol > 16);
        // aya finds each program's tracepoint under its kernel id in the BTF of placeholders.
        let tracepoints = crate::bpf::loader::PROGRAMS
            .map(|(_, tracepoint)| (tracepoint, btf.tracepoint_id(tracepoint).unwrap()));
        let blob = crate::bpf::btf::tracepoints_only(&tracepoints);
        let reduced = aya::Btf::parse(&blob, aya::Endianness::default()).unwrap();
        for (tracepoint, id) in tracepoints {
            let typedef = format!("btf_trace_{tracepoint}");
            let kind = aya_obj::btf::BtfKind::Typedef;
            assert_eq!(reduced.id_by_type_name_kind(&typedef, kind).unwrap(), id);
        }
        // include/net/sock.h: skc_daddr then skc_rcv_saddr open struct sock_common.
        let addresses = btf.address_layout().unwrap();
        assert_eq!((addresses.remote, addresses.local), (0, 4));
        assert!(addresses.remote_v6 > 16);
        assert_eq!(addresses.local_v6, addresses.remote_v6 + 16);
        // Past `struct sock`, which `struct tcp_sock` begins with.
        assert!(addresses.source_port > layout.protocol);
        assert!(matches!(
            btf.tracepoint_id("no_such_tracepoint"),
            Err(BtfError::MissingTracepoint(_))
        ));
    }
}
