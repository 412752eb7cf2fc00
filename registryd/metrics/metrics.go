// Package metrics defines every Prometheus metric registryd exports, registered in one
// place on a dedicated registry rather than the process-wide default.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds registryd's collectors and the registry they are registered on.
type Metrics struct {
	Registry *prometheus.Registry
	// HTTPRequests counts client requests by method, kind and status code.
	HTTPRequests *prometheus.CounterVec
	// HTTPResponseBytes counts response body bytes written to clients by kind.
	HTTPResponseBytes *prometheus.CounterVec

	// CacheHits and CacheMisses count lookups by kind (blob, manifest, tag).
	CacheHits   *prometheus.CounterVec
	CacheMisses *prometheus.CounterVec
	// StaleServed counts tags and tag lists served from the last known answer rather than a
	// fresh one, by kind: timeout (the revalidation had no answer within
	// cache.stale_after), error (the upstream failed), negative (the upstream's
	// failure is remembered, it was not asked) and peer (the answer is another
	// master's, this one had none).
	StaleServed *prometheus.CounterVec
	// NegativeFailures counts tag and manifest requests failed at once with an
	// upstream failure remembered by the negative cache.
	NegativeFailures prometheus.Counter
	// PeerLookups counts tag and manifest lookups asked of peers, by kind (tag,
	// manifest) and result (ok, unknown, error).
	PeerLookups *prometheus.CounterVec
	// UpstreamRequests counts requests to upstreams by upstream host, kind (blob,
	// manifest, tag, ping, token) and status code ("error" for transport errors).
	UpstreamRequests *prometheus.CounterVec
	// UpstreamBytes counts blob and manifest body bytes received from each upstream.
	UpstreamBytes *prometheus.CounterVec
	// PeerFills counts blob fills asked of a peer, by peer and result (ok, error, or
	// upstream: the peer passed on its upstream's failure, which is not its own).
	PeerFills *prometheus.CounterVec
	// PeerRequests counts blob requests served to peers.
	PeerRequests prometheus.Counter
	// FillsInFlight is the number of blob fills running now.
	FillsInFlight prometheus.Gauge
	// FillDuration is the time from a fill's start to its commit, by source
	// (upstream, peer) and result (ok, error).
	FillDuration *prometheus.HistogramVec
	// FillResumes counts fills resumed with a Range request after a cut stream.
	FillResumes prometheus.Counter
	// VerifyFailures counts digest mismatches, by where (fill, store).
	VerifyFailures *prometheus.CounterVec
	// Evictions and EvictedBytes count removed blobs and manifests by reason (size, ttl,
	// space).
	Evictions    *prometheus.CounterVec
	EvictedBytes *prometheus.CounterVec
	// StoreBytes is the size of the cached content.
	StoreBytes prometheus.Gauge
	// BlobHashes counts stored blobs hashed whole by the store's readers and the
	// scrub, by how the read ended (ok, mismatch); SharedVerified counts reads on
	// shared storage that trusted another master's hash (a verified record) instead.
	BlobHashes     *prometheus.CounterVec
	SharedVerified prometheus.Counter
	// SharedPublishes counts writes of this master's state on shared storage (its
	// recent accesses and removals), by result (ok, error).
	SharedPublishes *prometheus.CounterVec
	// Evictor is 1 while this master is the one that evicts on shared storage.
	Evictor prometheus.Gauge
	// EvictPending is the removals planned and waiting out storage.evict_grace.
	EvictPending prometheus.Gauge
	// EvictCancelled counts planned removals dropped on shared storage because some
	// master used, referenced or pinned the content during the grace.
	EvictCancelled prometheus.Counter
	// FillsAdopted counts fills from the owner peer that used the owner's copy on
	// shared storage instead of uploading their own.
	FillsAdopted prometheus.Counter
	// StorageWritable is 1 while the store can take new content, 0 while a filesystem
	// is below storage.min_free or the last write failed for lack of space.
	StorageWritable prometheus.Gauge
	// SpoolBytes is the size of the spool files, which count in max_bytes.
	SpoolBytes prometheus.Gauge
	// PassThrough counts blob responses streamed from the source without caching, for
	// lack of space, by result (ok, error).
	PassThrough *prometheus.CounterVec
	// ScrubbedBytes counts the stored bytes the background scrub re-hashed.
	ScrubbedBytes prometheus.Counter
	// PinSources is how many sources (nodes) hold a pin lease; PinLeasesLapsed
	// counts the leases that lapsed because their source did not report again.
	PinSources      prometheus.Gauge
	PinLeasesLapsed prometheus.Counter
	// PinForwards counts the batches of pin leases sent to peers, by result (ok,
	// error).
	PinForwards *prometheus.CounterVec
	// ScrubBadBlobs counts stored blobs the scrub found not to match their digest
	// (and removed).
	ScrubBadBlobs prometheus.Counter
	// IndexWrites counts writes of the store's index, by result (ok, error);
	// IndexWrittenBytes their bytes and IndexWriteDuration their time (the snapshot,
	// the encoding and the write).
	IndexWrites        *prometheus.CounterVec
	IndexWrittenBytes  prometheus.Counter
	IndexWriteDuration prometheus.Histogram
	// IndexRebuilding is 1 while the index is being rebuilt from storage in the
	// background (after an unclean stop), 0 otherwise.
	IndexRebuilding prometheus.Gauge
	// EvictPlanDuration is the time an eviction run takes to plan, and
	// EvictLockDuration the part of it that holds the store's lock (the snapshot of
	// the index that the plan is made from).
	EvictPlanDuration prometheus.Histogram
	EvictLockDuration prometheus.Histogram
}

// New creates the metrics and registers them, with the Go and process collectors, on
// a new registry.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		HTTPRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopless_registryd_http_requests_total",
			Help: "Client HTTP requests by method, kind (manifest, blob, tags, base, health, other) and status code.",
		}, []string{"method", "kind", "code"}),
		HTTPResponseBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopless_registryd_http_response_bytes_total",
			Help: "Response body bytes written to clients by kind.",
		}, []string{"kind"}),
	}
	m.CacheHits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hopless_registryd_cache_hits_total", Help: "Lookups served from the cache, by kind (blob, manifest, tag, tag-list).",
	}, []string{"kind"})
	m.CacheMisses = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hopless_registryd_cache_misses_total", Help: "Lookups not in the cache, by kind (blob, manifest, tag, tag-list).",
	}, []string{"kind"})
	m.StaleServed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hopless_registryd_stale_served_total",
		Help: "Tags and tag lists served from the last known answer, by kind (timeout, error, negative, peer).",
	}, []string{"kind"})
	for _, kind := range []string{"timeout", "error", "negative", "peer"} {
		m.StaleServed.WithLabelValues(kind)
	}
	m.NegativeFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "hopless_registryd_negative_cache_failures_total",
		Help: "Tag and manifest requests failed at once with a remembered upstream failure.",
	})
	m.PeerLookups = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hopless_registryd_peer_lookups_total",
		Help: "Tag and manifest lookups asked of peers, by kind (tag, manifest) and result (ok, unknown, error).",
	}, []string{"kind", "result"})
	m.UpstreamRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hopless_registryd_upstream_requests_total", Help: "Requests to upstreams by upstream, kind and status code.",
	}, []string{"upstream", "kind", "code"})
	m.UpstreamBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hopless_registryd_upstream_bytes_total", Help: "Body bytes received from each upstream.",
	}, []string{"upstream"})
	m.PeerFills = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hopless_registryd_peer_fills_total", Help: "Blob fills asked of the owner peer, by peer and result.",
	}, []string{"peer", "result"})
	m.PeerRequests = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "hopless_registryd_peer_requests_served_total", Help: "Blob requests served to peers.",
	})
	m.FillsInFlight = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "hopless_registryd_fills_in_flight", Help: "Blob fills running now.",
	})
	m.FillDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "hopless_registryd_fill_duration_seconds", Help: "Time from a blob fill's start to its commit.",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
	}, []string{"source", "result"})
	m.FillResumes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "hopless_registryd_fill_resumes_total", Help: "Fills resumed with a Range request after a cut stream.",
	})
	m.VerifyFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hopless_registryd_verify_failures_total", Help: "Digest mismatches, by where they were found (fill, store).",
	}, []string{"where"})
	m.Evictions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hopless_registryd_evictions_total", Help: "Blobs and manifests removed, by reason (size, ttl, space).",
	}, []string{"reason"})
	m.EvictedBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hopless_registryd_evicted_bytes_total", Help: "Bytes removed, by reason (size, ttl, space).",
	}, []string{"reason"})
	m.StoreBytes = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "hopless_registryd_store_bytes", Help: "Bytes of cached content.",
	})
	m.StorageWritable = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "hopless_registryd_storage_writable", Help: "1 while the store can take new content, 0 while it cannot for lack of space.",
	})
	m.StorageWritable.Set(1)
	m.SpoolBytes = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "hopless_registryd_spool_bytes", Help: "Bytes of spool files (fills in progress and leftovers), counted in max_bytes.",
	})
	m.PassThrough = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hopless_registryd_blob_passthrough_total", Help: "Blob responses streamed from the source without caching, for lack of space, by result.",
	}, []string{"result"})
	m.ScrubbedBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "hopless_registryd_scrubbed_bytes_total", Help: "Stored bytes re-hashed by the background scrub.",
	})
	m.ScrubBadBlobs = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "hopless_registryd_scrub_bad_blobs_total", Help: "Stored blobs the background scrub found corrupt and removed.",
	})
	m.PinSources = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "hopless_registryd_pin_sources", Help: "Sources (nodes) that hold a pin lease.",
	})
	m.PinLeasesLapsed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "hopless_registryd_pin_leases_lapsed_total", Help: "Pin leases that lapsed because their source did not report again within api.pin_ttl.",
	})
	m.PinForwards = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hopless_registryd_pin_forwards_total", Help: "Batches of pin leases sent to peers, by result.",
	}, []string{"result"})
	m.IndexWrites = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hopless_registryd_index_writes_total", Help: "Writes of the store's index, by result (ok, error).",
	}, []string{"result"})
	for _, result := range []string{"ok", "error"} {
		m.IndexWrites.WithLabelValues(result)
	}
	m.IndexWrittenBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "hopless_registryd_index_written_bytes_total", Help: "Bytes of the store's index written.",
	})
	m.IndexWriteDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "hopless_registryd_index_write_duration_seconds", Help: "Time to snapshot, encode and write the store's index.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
	})
	m.IndexRebuilding = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "hopless_registryd_index_rebuilding", Help: "1 while the store's index is being rebuilt from storage in the background.",
	})
	m.EvictPlanDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "hopless_registryd_evict_plan_duration_seconds", Help: "Time an eviction run takes to plan, the snapshot of the index included.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
	})
	m.BlobHashes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hopless_registryd_blob_hashes_total", Help: "Stored blobs hashed whole by readers and the scrub, by result (ok, mismatch).",
	}, []string{"result"})
	m.SharedVerified = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "hopless_registryd_shared_verified_total", Help: "Blob reads on shared storage that trusted another master's recorded hash.",
	})
	m.SharedPublishes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hopless_registryd_shared_publishes_total", Help: "Writes of this master's recent accesses and removals on shared storage, by result.",
	}, []string{"result"})
	m.Evictor = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "hopless_registryd_evictor", Help: "1 while this master is the one that evicts on shared storage.",
	})
	m.EvictPending = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "hopless_registryd_evict_pending", Help: "Planned removals waiting out storage.evict_grace on shared storage.",
	})
	m.EvictCancelled = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "hopless_registryd_evict_cancelled_total", Help: "Planned removals dropped because a master used, referenced or pinned the content during the grace.",
	})
	m.FillsAdopted = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "hopless_registryd_fills_adopted_total", Help: "Fills from the owner peer that used the owner's copy on shared storage instead of uploading.",
	})
	m.EvictLockDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "hopless_registryd_evict_lock_duration_seconds", Help: "Time an eviction run's planning holds the store's lock.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
	})
	m.Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.HTTPRequests, m.HTTPResponseBytes,
		m.CacheHits, m.CacheMisses, m.StaleServed, m.NegativeFailures, m.PeerLookups,
		m.UpstreamRequests, m.UpstreamBytes,
		m.PeerFills, m.PeerRequests,
		m.FillsInFlight, m.FillDuration, m.FillResumes, m.VerifyFailures,
		m.Evictions, m.EvictedBytes, m.StoreBytes,
		m.StorageWritable, m.SpoolBytes, m.PassThrough,
		m.ScrubbedBytes, m.ScrubBadBlobs,
		m.PinSources, m.PinLeasesLapsed, m.PinForwards,
		m.IndexWrites, m.IndexWrittenBytes, m.IndexWriteDuration, m.IndexRebuilding,
		m.EvictPlanDuration, m.EvictLockDuration,
		m.BlobHashes, m.SharedVerified, m.SharedPublishes, m.Evictor, m.EvictPending, m.EvictCancelled, m.FillsAdopted,
	)
	return m
}

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}
