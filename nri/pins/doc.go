// Package pins is the node side of registryd's pins: it keeps the set of images that
// the node's containers use and reports it to the masters with PUT /hopless/v1/pins,
// so that their caches never evict an image in use (registryd/README.md, "Pins:
// leases per node").
//
// The NRI plugin calls Set, Remove and Replace from its handlers; they only update
// memory and never wait for the network. Run sends the distinct digests in use,
// a short debounce after a change, and again every third of the lease the master
// answered, to one master at a time: a master sends the lease on to its peers, so
// one successful report suffices. Failures are retried with exponential backoff
// and jitter on the next master. A container reported without a digest is
// pending: its image is resolved in the background through Config.Resolve, with
// backoff, and pinned once resolved.
//
// Memory is bounded: at most Config.MaxContainers containers are tracked (the
// least recently added one gives way to a new one) and at most MaxImages digests
// are sent, those of the most recently added containers. Both are logged once
// when they first bite.
//
// Run does not remove the pins when it ends: a plugin that restarts reports again
// well before the lease lapses, and a node that is gone loses its pins when it does.
package pins
