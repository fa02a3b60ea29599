package dns

import (
	"container/list"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// cacheKey is a canonical name and a query type.
type cacheKey struct {
	name  string
	qtype uint16
}

// cached is an upstream answer, already cut down to what the resolver
// hands out (see keepChain), and when it was stored and goes stale.
type cached struct {
	msg             *dns.Msg
	stored, expires time.Time
}

// cache holds answers shared by every task: an answer depends on the name
// only, and who may see it is decided per query before the cache is read.
// The least recently used entry makes way for a new one.
type cache struct {
	mu    sync.Mutex
	size  int
	order *list.List // of *cacheItem, most recent first
	items map[cacheKey]*list.Element
}

type cacheItem struct {
	key cacheKey
	val cached
}

func newCache(size int) *cache {
	return &cache{size: size, order: list.New(), items: make(map[cacheKey]*list.Element)}
}

// get returns a copy of the answer for k if it is still fresh at now.
func (c *cache) get(k cacheKey, now time.Time) (cached, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.items[k]
	if !ok {
		return cached{}, false
	}
	it := e.Value.(*cacheItem)
	if !now.Before(it.val.expires) {
		c.order.Remove(e)
		delete(c.items, k)
		return cached{}, false
	}
	c.order.MoveToFront(e)
	v := it.val
	v.msg = v.msg.Copy()
	return v, true
}

func (c *cache) put(k cacheKey, v cached) {
	v.msg = v.msg.Copy()
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[k]; ok {
		e.Value.(*cacheItem).val = v
		c.order.MoveToFront(e)
		return
	}
	c.items[k] = c.order.PushFront(&cacheItem{key: k, val: v})
	for c.order.Len() > c.size {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.items, last.Value.(*cacheItem).key)
	}
}
