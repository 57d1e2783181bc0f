/* What the three shortcut programs share: the maps, pinned by name in the workload's own
 * directory under /sys/fs/bpf/ringmesh/, so the programs, loaded from three objects, see the
 * same maps, and `ringmesh init --remove` finds them to unpin.
 *
 * The idea (Merbridge's and Cilium's, made exact): when both ends of a TCP connection are
 * sockets of the workload (the application and its sidecar), what one end sends can be put
 * straight on the other end's receive queue, skipping TCP/IP altogether.
 *
 * Pairing the two ends cannot go by the four addresses: the outbound hop is redirected by
 * nftables, so the application's socket names the service it called while the sidecar's names
 * its own port. What both ends agree on is the client's own address and port (the server sees
 * it as its peer; a remote host cannot pose as one of the pod's own addresses, which the
 * kernel drops as martian) and the two initial sequence numbers, which NAT leaves alone: the
 * client end sees (snd_nxt, rcv_nxt) = (its ISN + 1, the server's ISN + 1), the server end
 * the same two numbers the other way round. A peer choosing one ISN (a remote server answering
 * the application) still cannot choose the client's address.
 */
#ifndef RINGMESH_SHORTCUT_H
#define RINGMESH_SHORTCUT_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* One end of a local connection. */
struct end_key {
	__u32 client_ip[4];	/* the client's own address, IPv4 as ::ffff:a.b.c.d */
	__u32 client_port;	/* and port, host byte order */
	__u32 client_isn;	/* the client's initial sequence number + 1 */
	__u32 server_isn;	/* the server's, + 1 */
	__u32 end;		/* END_CLIENT or END_SERVER */
	__u64 netns;		/* network namespace cookie: no pairing across namespaces */
};

#define END_CLIENT 0
#define END_SERVER 1

/* Per socket, in socket-local storage (freed with the socket). */
struct end_state {
	struct end_key self;	/* where this socket is in ends */
	__u32 candidate;	/* CANDIDATE_*: set at connect() */
	__u32 verdict;		/* VERDICT_*: decided at the first message */
};

/* Why a socket is a candidate, decided in connect() where the caller's uid is known. */
#define CANDIDATE_NONE 0
#define CANDIDATE_APP_OUT 1	/* the application calling out: nftables sends it to the sidecar */
#define CANDIDATE_PROXY_IN 2	/* the sidecar calling the application over loopback */

/* Whether a socket's sends go to its peer's receive queue or through TCP. Decided once, at
 * its first message, and never changed: if a first message went through TCP, later ones
 * must too, or the peer would read them out of order. */
#define VERDICT_UNDECIDED 0
#define VERDICT_SHORTCUT 1
#define VERDICT_TCP 2

/* Every paired socket, by end; sk_msg (msg.c) is attached to this map. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct end_key);
	__type(value, __u32);	/* a socket (as user space sees it, an fd) */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ringmesh_ends SEC(".maps");

/* Client ends waiting for their server end's handshake to finish (microseconds), with the
 * time they started waiting: a server end pairs only within WAIT_NS. An LRU bounds it:
 * connections whose server is not a workload socket are forgotten. */
#define WAIT_NS 1000000000ULL
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct end_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ringmesh_waiting SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct end_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ringmesh_state SEC(".maps");

char LICENSE[] SEC("license") = "GPL";

#endif
