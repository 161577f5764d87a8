"""Authentication and authorisation of the gRPC control plane (docs/security.md).

- policy: what every RPC needs (PUBLIC, USER, ADMIN);
- peercred: Unix socket peers' credentials (SO_PEERCRED, SO_PEERGROUPS);
- relay: the public Unix socket, relayed to gRPC with the peer's identity;
- tokens: bearer tokens (hashes in a 0600 file) and the `rustaid token` command's store;
- tls: TLS server credentials for TCP listeners;
- manager: Auth, which the daemon owns, and the decision for each call;
- interceptor: the gRPC server interceptor.
"""
