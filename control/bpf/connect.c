/* connect(2) of a workload socket: mark the sockets that may become one end of a shortcut.
 *
 * Only here is the caller known (a sock_ops program runs in softirq, on behalf of nobody):
 * - the application (any uid but the proxy's) calling a non-loopback address: nftables
 *   redirects that connection to the sidecar's outbound port;
 * - the sidecar (the proxy's uid) calling a loopback address: the inbound hop, from the
 *   sidecar to the application on its original port.
 * Everything else (the sidecar calling other pods, the application calling loopback) is
 * left as it is. A mark alone changes nothing: sockops.c pairs marked sockets only with a
 * socket of the same workload holding the other end of the same connection.
 *
 * The connect is always allowed (return 1): this program only observes.
 */
#include "shortcut.h"
#include <bpf/bpf_endian.h>

/* Set by the loader (`ringmesh init --accelerate --proxy-uid`). */
const volatile __u32 proxy_uid = 0;

static __always_inline void mark(struct bpf_sock_addr *ctx, int loopback)
{
	__u32 uid = (__u32)bpf_get_current_uid_gid();
	__u32 candidate;

	if (uid != proxy_uid && !loopback)
		candidate = CANDIDATE_APP_OUT;
	else if (uid == proxy_uid && loopback)
		candidate = CANDIDATE_PROXY_IN;
	else
		return;
	if (ctx->type != 1 /* SOCK_STREAM */ || !ctx->sk)
		return;
	struct end_state *state = bpf_sk_storage_get(&ringmesh_state, ctx->sk, 0,
						     BPF_SK_STORAGE_GET_F_CREATE);
	if (state) {
		state->candidate = candidate;
		state->verdict = VERDICT_UNDECIDED;
	}
}

SEC("cgroup/connect4")
int ringmesh_connect4(struct bpf_sock_addr *ctx)
{
	/* 127.0.0.0/8; user_ip4 is in network byte order. */
	mark(ctx, bpf_ntohl(ctx->user_ip4) >> 24 == 127);
	return 1;
}

SEC("cgroup/connect6")
int ringmesh_connect6(struct bpf_sock_addr *ctx)
{
	/* ::1, or an IPv4 loopback address mapped (::ffff:127.x.y.z) on a dual-stack socket. */
	__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2];
	__u32 w3 = ctx->user_ip6[3];
	int v6_loopback = w0 == 0 && w1 == 0 && w2 == 0 && w3 == bpf_htonl(1);
	int v4_loopback = w0 == 0 && w1 == 0 && w2 == bpf_htonl(0xffff) && bpf_ntohl(w3) >> 24 == 127;
	mark(ctx, v6_loopback || v4_loopback);
	return 1;
}
