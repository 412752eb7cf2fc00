// Package balance is the weighted, health-checked balancer that our containerd build
// puts under the docker resolver of one image host. containerd talks to a single
// virtual host; the Balancer is its http.RoundTripper and sends every request
// straight to one of the master registries, rewriting only the scheme and host
// (path, query and headers are kept; the Host header becomes the master's).
//
// Its rule is that a failure stays where it happens: a node is never worse off than
// behind the NGINX stream hop it replaces, which ejects nothing for an HTTP answer.
// Picking, health and the request race are kept apart: pick (endpoint.go) chooses,
// the endpoint state records health, and race (balance.go) runs one request.
//
// # Picking: smooth weighted round robin
//
// Each request goes to the endpoint chosen by nginx's smooth weighted round robin
// (SWRR) over the endpoints in rotation. SWRR is deterministic: weights 3:1:1 give
// exactly three, one and one of every five requests, interleaved rather than in
// bursts. That is what an operator who sets weights expects and what tests can
// assert. Power-of-two-choices was rejected: a node has only a few requests in
// flight, so outstanding counts are mostly 0 or 1 and P2C degenerates into a random
// pick; it sees one node's load, not the master's. Endpoints that a hedge overtook
// (suspect) or whose body was too slow in the last seconds are picked only when no
// other endpoint may take the request. With PreferLocal a healthy local endpoint
// takes every request.
//
// # Failure classes and ejection (as Envoy's outlier detection)
//
// Local-origin failures count against an endpoint: a connect or TLS error, no
// response headers within ResponseHeader, a body that stalls, breaks, falls below
// the throughput floor or fails its digest, and a failed active check. Answers do
// not count: a 4xx never does, and a 5xx that registryd marks with the
// upstream-error header (internal/upstreamerr: the upstream failed, not the master)
// is returned to containerd as *UpstreamError after one more endpoint was asked.
// A 5xx of the master's own counts separately, as Envoy's consecutive_5xx.
//
// An endpoint is ejected after ConsecutiveFailures local-origin failures in a row,
// or Consecutive5xx own 5xx in a row (any answer resets both), for a backoff of 1 s
// doubling to 30 s with ±20 % jitter. At most MaxEjectionPercent of the endpoints are
// ejected at once (one always may be). A failed active check marks an endpoint
// unhealthy at once, not capped: a frozen master goes out within one check.
//
// While Run performs active checks (below), an ejected endpoint comes back only
// through a passing check once its backoff has passed: real requests are never the
// trial. Without Run, an ejected endpoint is half-open after its backoff and exactly
// one real request is its trial.
//
// # Active checks: often only when they matter
//
// A check is GET /v2/, bounded by HealthTimeout, 200 or 401 passing. A thousand
// nodes checking three masters every second would put 1000 checks/s on each master
// for news that mostly nobody uses, so each endpoint has its own schedule:
//
//   - The balancer is active while a request is in flight (bodies included) or one
//     started or ended within the last HealthInterval. Then, and whatever the
//     balancer does while an endpoint is out of rotation (unhealthy or ejected:
//     checks are how it comes back), the endpoint is checked every 0.9 to 1
//     HealthInterval: never later, so that a check, bounded by HealthTimeout,
//     finds a frozen master within HealthInterval plus HealthTimeout.
//   - A real request that got any HTTP answer from the endpoint (a 4xx or 5xx too:
//     an answer is not a broken master) after its check was planned stands for
//     that check: it is skipped and moved to one period after the answer.
//   - While the balancer is idle, an endpoint in rotation is checked every
//     HealthIdleInterval ±50 %: the wide spread keeps nodes that started or pulled
//     together from checking together.
//   - The request that makes an idle balancer active has the endpoints not heard
//     from (answer or check) within 0.9 HealthInterval checked at once, in
//     parallel with it: its news may be stale. The endpoint that request waits on
//     is left to it, since a hedge delay without headers probes it anyway.
//   - A check that comes due just after the balancer turned idle still runs: a
//     node that was active when a master froze notices within HealthInterval plus
//     HealthTimeout even if its traffic stops.
//
// So no periodic check comes within 0.9 HealthInterval of the endpoint's previous
// one (on-demand probes aside), an active balancer notices a frozen master as fast
// as with checks every interval, an idle one costs each master one check per
// HealthIdleInterval, and a busy one almost none.
//
// # Slow start
//
// An endpoint that comes back into rotation (from unhealthy or ejected) ramps, as in
// Envoy's slow start, from a tenth of its weight to all of it, linearly over
// SlowStart: a thousand nodes that notice a thawed master within one check interval
// would otherwise send it its whole share at once, with its caches and connections
// cold. Only the weight SWRR uses changes; nothing else treats it differently, and a
// balancer that starts has every endpoint at full weight.
//
// A request that waits past its hedge delay also checks the endpoints it waits on at
// once (GET /v2/, bounded by twice the delay, at least 200 ms and at most
// HealthTimeout), one such check per endpoint at a time. A master that is only slow
// to serve (its upstream is slow) passes, and the request waits within the hedge
// budget; a frozen one fails, is marked unhealthy, and every attempt waiting on it
// is aborted and retried elsewhere at once: the cost of a master frozen at a pull's
// start is about one hedge delay plus that check, whatever the budget allows. The
// exception is a request's last endpoint, with every other one tried: it is waited
// on to ResponseHeader, since when each master in turn fails a check that quick, a
// node too busy to get the answers in time is likelier than every master frozen
// (seen with 100 balancers on 2 cores). A request that may not be repeated (an
// upload) has no other endpoint, and also waits.
//
// When no endpoint is in rotation, requests still go to them (panic routing), the
// best first: healthy by the last check, then the fewest consecutive failures, then
// the latest success. Only when every endpoint was tried and failed does a request
// end in *AllDownError, which names each endpoint and what it did; it is the only
// error that matches errdefs.ErrUnavailable, and so the only one that triggers the
// fallback to the image host.
//
// # Retries and hedging
//
// GET and HEAD without a body are retried on another endpoint after a failure, each
// endpoint at most once per request, and hedged: if no response headers arrive
// within the hedge delay, the same request goes to the next endpoint as well, and
// the first usable answer wins. Other methods go to one endpoint, once.
//
// The hedge delay is the 95th percentile of the time to response headers over the
// last 256 answers of the request's class (manifest and blob HEAD; blob GET; token
// and 401 exchanges), clamped to [HedgeMin, HedgeMax]. A class with fewer than 20
// samples uses four times the slowest recent active-check round trip, clamped the
// same way: what the node knows of the masters, so that a master frozen before any
// history exists costs about HedgeMin, not HedgeMax.
//
// Hedges come out of a budget, a token bucket as gRPC's retry throttling: each
// request earns HedgeBudgetPercent/100 of a token, up to HedgeBurst; a hedge spends
// one. With the budget spent, a request waits on the endpoints it was sent to: when
// every master is slow, hedging would only double their load. Retries after a
// failure spend a token too but are never refused. A loser is cancelled when a
// winner arrives, except an attempt a hedge had overtaken: it runs to its own
// deadline, as evidence against a possibly frozen master.
//
// # Bodies
//
// A response body is watched while the caller reads it. A Read that gets no byte for
// Stall is aborted. After Warmup, the throughput over each Window (bytes over the
// time spent blocked in reads, so a slow reader does not blame the master) is held
// against a floor: MinRate, and for a body the master serves from its cache
// (Hopless-Cache: hit), RelativeRate times the fastest other endpoint's recent
// throughput. A stream from a fill moves at the upstream's pace, which is not the
// master's doing. A body below the floor moves to another endpoint, at most once per
// endpoint.
//
// A stalled, broken or too slow body of a GET 200 or 206 is resumed with
// "Range: bytes=<offset>-<end>". The answer must continue the body: a 206 whose
// Content-Range matches, or a 200 of the whole resource, which is skipped up to the
// offset, with the same ETag and Docker-Content-Digest when both sides send them. A
// 401 calls Reauthorize and is sent once more. An answer that does not continue the
// body is a *ResumeError that says what mismatched, never all-down. Resumes after
// failures are counted, up to ResumeAttempts, with backoff: the first avoids the
// endpoint that failed, later ones may go to any, the same one included. When the
// balancer gives up it returns io.ErrUnexpectedEOF itself, which makes containerd
// reopen the body from its offset.
//
// A GET of /v2/<name>/blobs/<digest> without a Range header is hashed as it is
// handed to the caller; at its end a mismatch is a *DigestError instead of io.EOF,
// counted against every endpoint that served part of it. The transfer wrapper then
// drops the bad ingest and pulls again with WithReverify, whose requests carry
// "Cache-Control: no-cache": the master hashes its stored copy before serving it.
package balance
