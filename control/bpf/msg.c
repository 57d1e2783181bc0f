/* A paired socket sends: hand the bytes to the other end's receive queue (BPF_F_INGRESS), as
 * if TCP had delivered them, without segments, checksums, ACKs or loopback softirqs.
 *
 * The choice is made at a socket's first message and kept: if the other end was not paired
 * yet (the client's first bytes racing the server's handshake), that first message goes
 * through TCP and so must every later one, or the peer would read them out of order. Once
 * shortcut, a socket stays shortcut; if its peer has gone (closed), the bytes go to TCP,
 * which answers as it would for any closed peer.
 */
#include "shortcut.h"

SEC("sk_msg")
int ringmesh_msg(struct sk_msg_md *msg)
{
	struct bpf_sock *sk = msg->sk;
	if (!sk)
		return SK_PASS;
	struct end_state *state = bpf_sk_storage_get(&ringmesh_state, sk, 0, 0);
	if (!state || state->verdict == VERDICT_TCP)
		return SK_PASS;
	struct end_key peer = state->self;
	peer.end = peer.end == END_CLIENT ? END_SERVER : END_CLIENT;
	long redirected = bpf_msg_redirect_hash(msg, &ringmesh_ends, &peer, BPF_F_INGRESS);
	if (state->verdict == VERDICT_UNDECIDED)
		state->verdict = redirected == SK_PASS ? VERDICT_SHORTCUT : VERDICT_TCP;
	return SK_PASS;
}
