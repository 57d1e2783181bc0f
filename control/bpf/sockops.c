/* TCP handshakes of workload sockets: pair the two ends of a local connection.
 *
 * The client end (a socket marked by connect.c) finishes its handshake first: it gets the
 * SYN-ACK, and only then sends the ACK that completes the server's. So:
 * - client established: note it as waiting, keyed by the two sequence numbers, and enter it
 *   in ringmesh_ends;
 * - server established: if a client of this workload is waiting with the same numbers, the
 *   two are the ends of one connection: enter the server end too.
 * A connection from elsewhere (another pod, another host) never finds a waiting client and is
 * left to TCP. The entries leave the map when their sockets close.
 */
#include "shortcut.h"

static __always_inline struct end_key key_of(struct bpf_sock_ops *ops, __u32 end)
{
	struct end_key key = {};
	if (end == END_CLIENT) {
		key.client_isn = ops->snd_nxt;
		key.server_isn = ops->rcv_nxt;
	} else {
		key.client_isn = ops->rcv_nxt;
		key.server_isn = ops->snd_nxt;
	}
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
	__u8 one = 1;
	bpf_map_update_elem(&ringmesh_waiting, &key, &one, BPF_ANY);
}

static __always_inline void server_established(struct bpf_sock_ops *ops)
{
	struct bpf_sock *sk = ops->sk;
	if (!sk)
		return;
	struct end_key client = key_of(ops, END_SERVER);
	client.end = END_CLIENT;
	if (!bpf_map_lookup_elem(&ringmesh_waiting, &client))
		return;
	bpf_map_delete_elem(&ringmesh_waiting, &client);
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
