package loader

// The BPF objects are generated from bpf/*.c with a pinned clang (Debian's
// clang-19) and committed, so building Bridle needs no C toolchain. `make
// generate` runs these; CI regenerates them and fails on any difference.
// Shared Go types are generated once, from the net object.

//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror" -target bpfel -strip llvm-strip-19 -type bridle_event -type bridle_workload -type bridle_task -type bridle_net4_key -type bridle_net6_key -type bridle_ports -type bridle_port_range -type bridle_exec_key -type bridle_unix_key -type bridle_verdict -type bridle_action -type bridle_proto -type bridle_reason -type bridle_enforcement -type bridle_workload_flags -type bridle_listen_key -type bridle_exec_flags -type bridle_budget_key -type bridle_budget -type bridle_limits -type bridle_resolver_flags -type bridle_resolver -type bridle_sockaddr -type bridle_dns_peer_key -type bridle_dns_peer -type bridle_learn4_key -type bridle_learn6_key -type bridle_learned -type bridle_grant net ../bpf/net.c -- -I../bpf/include -I../bpf
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror" -target bpfel -strip llvm-strip-19 unix ../bpf/unix.c -- -I../bpf/include -I../bpf
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror" -target bpfel -strip llvm-strip-19 listen ../bpf/listen.c -- -I../bpf/include -I../bpf
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror" -target bpfel -strip llvm-strip-19 dns ../bpf/dns.c -- -I../bpf/include -I../bpf
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror" -target bpfel -strip llvm-strip-19 sockopt ../bpf/sockopt.c -- -I../bpf/include -I../bpf
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror" -target bpfel -strip llvm-strip-19 execlsm ../bpf/exec_lsm.c -- -I../bpf/include -I../bpf
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror" -target bpfel -strip llvm-strip-19 execkill ../bpf/exec_kill.c -- -I../bpf/include -I../bpf
