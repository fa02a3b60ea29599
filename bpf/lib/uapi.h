/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Numbers of the kernel's user-space interface that more than one program
 * uses. vmlinux.h carries the kernel's types but none of its #defines, so
 * they are written out here, once.
 */
#pragma once

/* What a cgroup socket or packet program returns. */
#define CGROUP_REFUSE 0
#define CGROUP_ALLOW 1

#define EPERM 1

/* Address families (<linux/socket.h>). */
#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define AF_NETLINK 16

/* Socket types (<linux/net.h>). */
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define SOCK_RAW 3

/* Protocols (<linux/in.h>). */
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ICMPV6 58
#define IPPROTO_MPTCP 262

/* skb->protocol values, in network byte order there (<linux/if_ether.h>). */
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
