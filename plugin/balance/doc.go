// Package balance is the weighted, health-checked balancer that our containerd build
// puts under the docker resolver of one image host. containerd talks to a single
// virtual host; the Balancer is its http.RoundTripper and sends every request
// straight to one of the master registries, rewriting only the scheme and host
// (path, query and headers are kept; the Host header becomes the master's).
//
// The failure it exists for is the frozen master: a process that is stopped or
// wedged still completes the TCP handshake (the kernel does it), so a connect timeout
// never fires, and containerd on its own waits 30 s for response headers on every
// request that lands there. Here such a request costs one hedge delay, and the master
// is out of rotation within ResponseHeader (or sooner, by the active check).
//
// # Picking: smooth weighted round robin
//
// Each request goes to the endpoint chosen by nginx's smooth weighted round robin
// (SWRR) over the endpoints that may take traffic. SWRR is deterministic: weights
// 3:1:1 give exactly three, one and one of every five requests, interleaved rather
// than in bursts. That is what an operator who sets weights expects and what tests
// can assert. Power-of-two-choices (P2C, least outstanding of two random picks) was
// rejected: a node has only a few requests in flight, so outstanding counts are
// mostly 0 or 1 and P2C degenerates into a random pick whose shares only hold on
// average; it sees one node's load, not the master's, so it cannot balance the
// masters anyway; and weights fit it only approximately. Slow masters are handled by
// hedging and ejection instead of by the picker. With PreferLocal, a healthy local
// endpoint takes every request and the others serve only as its failover.
//
// # Health: passive ejection, half-open trials and active checks
//
// An endpoint is up or ejected. A transport error, a 5xx, no response headers within
// ResponseHeader, a stalled or cut body, or a failed active check ejects it at once
// (one strike, as NGINX's default; a 4xx is a valid answer and never ejects). After
// a backoff (1 s, doubling to 30 s, reset by a successful request) the endpoint is
// half-open: exactly one request is let through as a trial, and that trial or the
// next active check, whichever finishes first, decides whether it is up again or
// ejected for twice as long. Results of requests that were not the trial, arriving
// while the endpoint is ejected, only update its last error.
//
// Run performs the active checks: GET <endpoint>/v2/ every HealthInterval, bounded by
// HealthTimeout; 200 or 401 (the registry asks for a token) counts as up. A passing
// check revives a half-open endpoint but does not reset the backoff, so a master
// that answers /v2/ yet fails real requests is tried less and less often.
//
// When no endpoint may take traffic, RoundTrip fails at once with *AllDownError,
// which names every endpoint and its last error, instead of waiting for timeouts.
//
// # Retries and hedging
//
// GET and HEAD without a body are retried on another endpoint, each endpoint at most
// once per request. They are also hedged: if no response headers arrive within the
// hedge delay, the same request goes to the next endpoint as well, and the first
// response with headers (any status below 500) wins. Other methods go to one
// endpoint, once, with their body passed through; their 5xx is returned as is.
//
// The hedge delay is the 95th percentile of the time to response headers over the
// last 256 successful attempts, clamped to [HedgeMin, HedgeMax]. Until 20 samples
// exist it is HedgeMax: with no data, a short delay would duplicate every request
// that is merely slow, and the first pulls after a rollout are exactly when caches
// are cold and requests slow. The frozen-master cost is still bounded: HedgeMax per
// request for the first seconds, until the master is ejected; once the window fills
// with a warm registry's answers the delay drops toward HedgeMin.
//
// A loser is cancelled as soon as a winner arrives, with one exception: an attempt
// that had already been overtaken by a hedge is left to run until its own
// ResponseHeader deadline (its body is closed the moment headers arrive). It is the
// evidence against a possibly frozen master; cancelling it would hide the failure
// from passive ejection, and every later request would pay the hedge delay again.
//
// # Bodies: stall detection and resume
//
// A response body is watched while the caller reads it: a Read that gets no byte for
// Stall is aborted. A stalled or broken body of a GET 200 or 206 is resumed on
// another endpoint with "Range: bytes=<offset>-<end>", where the offsets come from
// the first response (its Content-Range, which already accounts for the caller's own
// Range header). The answer must be a 206 whose Content-Range matches (a 200 only
// when resuming from byte 0 of a whole body), with the same ETag and
// Docker-Content-Digest when both sides send them; the caller sees one continuous
// body. Each endpoint serves a body at most once, so resuming gives up, with an
// error, once the endpoints are exhausted.
package balance
