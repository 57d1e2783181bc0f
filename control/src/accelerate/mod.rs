//! The kernel shortcut for a sidecar's local hops (`ringmesh init --accelerate`).
//!
//! Two of a sidecar's hops never leave the machine: the application to its sidecar, and the
//! sidecar to the application on the other side. On those, TCP/IP is pure cost: segments,
//! checksums, ACKs and loopback softirqs to move bytes between two sockets of one pod. Three
//! small BPF programs (control/bpf/, one file each) take it out, as Merbridge and Cilium do:
//! - `connect.c` (cgroup `connect4`/`connect6`) marks the sockets that may be one end of such
//!   a hop: the application calling out, the sidecar calling loopback;
//! - `sockops.c` pairs the two ends of one connection when its handshake completes, by the two
//!   initial sequence numbers (NAT leaves them alone; addresses do not match across the
//!   nftables redirect), and enters both in a sockhash;
//! - `msg.c` (`sk_msg`, on that sockhash) puts what one end sends on the other end's receive
//!   queue.
//!
//! [`load`] attaches them to one workload's cgroup and pins them where only root can reach;
//! [`probe`] is how a running proxy learns whether its own connections are shortcut.

pub mod load;
pub mod probe;
