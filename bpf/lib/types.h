/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Makes the compiler emit BTF for every shared type, including enums only
 * used as plain values, so bpf2go can generate their Go definitions.
 */
#pragma once

#include "bridle.h"

const struct bridle_event *bridle_unused_event __attribute__((unused));
const struct bridle_unix_key *bridle_unused_unix __attribute__((unused));
const struct bridle_exec_key *bridle_unused_exec __attribute__((unused));
const struct bridle_net4_key *bridle_unused_net4 __attribute__((unused));
const struct bridle_net6_key *bridle_unused_net6 __attribute__((unused));
const struct bridle_listen_key *bridle_unused_listen __attribute__((unused));
const struct bridle_task *bridle_unused_task __attribute__((unused));
const struct bridle_workload *bridle_unused_workload __attribute__((unused));
const enum bridle_verdict *bridle_unused_verdict __attribute__((unused));
const enum bridle_action *bridle_unused_action __attribute__((unused));
const enum bridle_proto *bridle_unused_proto __attribute__((unused));
const enum bridle_reason *bridle_unused_reason __attribute__((unused));
const enum bridle_enforcement *bridle_unused_enforcement __attribute__((unused));
const enum bridle_workload_flags *bridle_unused_flags __attribute__((unused));
const enum bridle_exec_flags *bridle_unused_exec_flags __attribute__((unused));
const struct bridle_budget_key *bridle_unused_budget_key __attribute__((unused));
const struct bridle_budget *bridle_unused_budget __attribute__((unused));
const enum bridle_limits *bridle_unused_limits __attribute__((unused));
const enum bridle_resolver_flags *bridle_unused_resolver_flags __attribute__((unused));
const struct bridle_resolver *bridle_unused_resolver __attribute__((unused));
const struct bridle_sockaddr *bridle_unused_sockaddr __attribute__((unused));
const struct bridle_dns_peer_key *bridle_unused_dns_peer_key __attribute__((unused));
const struct bridle_dns_peer *bridle_unused_dns_peer __attribute__((unused));
const struct bridle_learn4_key *bridle_unused_learn4_key __attribute__((unused));
const struct bridle_learn6_key *bridle_unused_learn6_key __attribute__((unused));
const struct bridle_learned *bridle_unused_learned __attribute__((unused));
