package pods

import (
	"context"

	"github.com/bridle-sh/bridle/daemon/identity"
)

// Identities is an identity source that knows agent pods: with the static
// source, a workload whose cgroup is an agent pod's, or below one (a
// container's), is spiffe://<trust domain>/ns/<namespace>/sa/<service
// account>, source static. Every other workload, and every workload when
// the source is SPIRE, is asked of the source underneath unchanged: SPIRE
// attests pods itself (its k8s workload attestor, by pid with
// identity.spire.attest pid).
type Identities struct {
	identity.Provider
	index    *Index
	override bool
}

// NewIdentities wraps base.
func NewIdentities(base identity.Provider, index *Index) *Identities {
	return &Identities{Provider: base, index: index, override: base.Status().Source == identity.Static}
}

func (s *Identities) pod(cgroup string) (identity.Identity, bool) {
	if !s.override {
		return identity.Identity{}, false
	}
	p, ok := s.index.ByCgroup(cgroup)
	if !ok || p.Identity == "" {
		return identity.Identity{}, false
	}
	return identity.Identity{ID: p.Identity, Source: identity.Static}, true
}

// Identify returns the pod's identity for a pod's workload.
func (s *Identities) Identify(ctx context.Context, w identity.Workload) (identity.Identity, error) {
	if id, ok := s.pod(w.Cgroup); ok {
		return id, nil
	}
	return s.Provider.Identify(ctx, w)
}

// Known returns the pod's identity for a pod's workload.
func (s *Identities) Known(cgroup string) identity.Identity {
	if id, ok := s.pod(cgroup); ok {
		return id
	}
	return s.Provider.Known(cgroup)
}
