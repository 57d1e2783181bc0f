/* TCP handshakes of workload sockets: pair the two ends of a local connection.
 *
 * The client end (a socket marked by connect.c) finishes its handshake first: it gets the
 * SYN-ACK, and only then sends the ACK that completes the server's. So:
 * - client established: note it as waiting, keyed by its own address and port and the two
 *   sequence numbers (shortcut.h says why those), and enter it in ringmesh_ends;
 * - server established: if a client of this workload has been waiting, for less than
 *   WAIT_NS, with the same key, the two are the ends of one connection: enter the server end
 *   too.
 * A connection from elsewhere (another pod, another host) never finds a waiting client and is
 * left to TCP. The entries leave the map when their sockets close.
 */
#include "shortcut.h"
#include <bpf/bpf_endian.h>

/* Reads a context field with a load of its own: the verifier accepts context loads only at
 * constant offsets, and the compiler would otherwise merge two of them into one load through
 * a chosen pointer. */
#define FIELD(x) ({ __u32 _v = (x); asm volatile("" : "+r"(_v)); _v; })

static __always_inline struct end_key key_of(struct bpf_sock_ops *ops, __u32 end)
{
	struct end_key key = {};
	__u32 v4, w0, w1, w2, w3;
	if (end == END_CLIENT) {
		v4 = FIELD(ops->local_ip4);
		w0 = FIELD(ops->local_ip6[0]);
		w1 = FIELD(ops->local_ip6[1]);
		w2 = FIELD(ops->local_ip6[2]);
		w3 = FIELD(ops->local_ip6[3]);
		key.client_port = FIELD(ops->local_port);	/* host byte order */
		key.client_isn = FIELD(ops->snd_nxt);
		key.server_isn = FIELD(ops->rcv_nxt);
	} else {
		v4 = FIELD(ops->remote_ip4);
		w0 = FIELD(ops->remote_ip6[0]);
		w1 = FIELD(ops->remote_ip6[1]);
		w2 = FIELD(ops->remote_ip6[2]);
		w3 = FIELD(ops->remote_ip6[3]);
		/* The port in network byte order, as 32 bits. */
		key.client_port = bpf_ntohl(FIELD(ops->remote_port));
		key.client_isn = FIELD(ops->rcv_nxt);
		key.server_isn = FIELD(ops->snd_nxt);
	}
	/* An IPv4 address as the key holds it: mapped, ::ffff:a.b.c.d. */
	if (FIELD(ops->family) == 2 /* AF_INET */) {
		w0 = 0;
		w1 = 0;
		w2 = bpf_htonl(0xffff);
		w3 = v4;
	}
	key.client_ip[0] = w0;
	key.client_ip[1] = w1;
	key.client_ip[2] = w2;
	key.client_ip[3] = w3;
	key.netns = bpf_get_netns_cookie(ops);
	key.end = end;
	return key;
}

static __always_inline void client_established(struct bpf_sock_ops *ops)
{
	struct bpf_sock *sk = ops->sk;
	if (!sk)
		return;
	struct end_state *state = bpf_sk_storage_get(&ringmesh_state, sk, 0, 0);
	if (!state || state->candidate == CANDIDATE_NONE)
		return;
	struct end_key key = key_of(ops, END_CLIENT);
	if (bpf_sock_hash_update(ops, &ringmesh_ends, &key, BPF_NOEXIST) != 0)
		return;
	state->self = key;
	__u64 now = bpf_ktime_get_ns();
	bpf_map_update_elem(&ringmesh_waiting, &key, &now, BPF_ANY);
}

static __always_inline void server_established(struct bpf_sock_ops *ops)
{
	struct bpf_sock *sk = ops->sk;
	if (!sk)
		return;
	struct end_key client = key_of(ops, END_SERVER);
	client.end = END_CLIENT;
	__u64 *since = bpf_map_lookup_elem(&ringmesh_waiting, &client);
	if (!since)
		return;
	__u64 waited = bpf_ktime_get_ns() - *since;
	bpf_map_delete_elem(&ringmesh_waiting, &client);
	if (waited > WAIT_NS)
		return;
	struct end_state *state = bpf_sk_storage_get(&ringmesh_state, sk, 0,
						     BPF_SK_STORAGE_GET_F_CREATE);
	if (!state)
		return;
	struct end_key key = client;
	key.end = END_SERVER;
	if (bpf_sock_hash_update(ops, &ringmesh_ends, &key, BPF_NOEXIST) != 0)
		return;
	state->self = key;
	state->verdict = VERDICT_UNDECIDED;
}

SEC("sockops")
int ringmesh_sockops(struct bpf_sock_ops *ops)
{
	switch (ops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		client_established(ops);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		server_established(ops);
		break;
	}
	return 1;
}
