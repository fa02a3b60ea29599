/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Port lists as rules hold them. */
#pragma once

#include "bridle.h"

static __always_inline int port_allowed(const struct bridle_ports *p, __u16 port)
{
	__u32 n = p->count;
	for (int i = 0; i < BRIDLE_MAX_PORT_RANGES; i++) {
		if (i >= n)
			break;
		if (port >= p->ranges[i].first && port <= p->ranges[i].last)
			return 1;
	}
	return 0;
}
