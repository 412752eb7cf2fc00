// Package upstreamerr is the contract by which a registryd master tells whoever asked
// it (a node's balancer, or another master filling a blob from it) that a request
// failed because of the upstream registry, not because of the master.
//
// A master that cannot answer a /v2/ request (or a peer blob request) because its
// upstream answered 5xx or 429, could not be reached, timed out or sent nonsense
// answers with
//
//   - the status WireStatus gives: 429 when the upstream answered 429, 504 Gateway
//     Timeout when it gave no answer (timeout, connection refused, DNS, TLS), and 502
//     Bad Gateway for any other failure of the upstream (5xx, a malformed answer);
//   - the header Header ("Hopless-Upstream-Error") whose value is Failure.String;
//   - the upstream's Retry-After, unchanged, when the upstream sent a valid one with
//     its 429 or 503;
//   - a distribution error body (code UNAVAILABLE, or TOOMANYREQUESTS for 429) whose
//     message names the upstream host and what it did.
//
// A failure of the master's own (storage, a stored copy that fails verification, a
// bug) is a 500 or 503 without the header. A client must therefore count a 5xx
// against a master only when the header is absent: with the header, the master did
// its job and passed on the upstream's failure, and asking another master would meet
// the same upstream. The header is only ever sent with a 429 or 5xx status; 4xx
// answers of the upstream (404, 401, 403) are passed on as themselves without it.
//
// The header's grammar (OWS is optional spaces or tabs):
//
//	value    = OWS param *( OWS ";" OWS param ) OWS
//	param    = key OWS "=" OWS val
//	upstream = "upstream=" host [ ":" port ]   ; required, exactly once
//	status   = "status=" 3DIGIT                ; 100-599, the upstream's HTTP status
//	reason   = "reason=" ( "status" / "timeout" / "unreachable" / "bad-answer" )
//
// Each key appears at most once, in any order; at least one of status and reason is
// present. A status without a reason means reason "status" (the upstream answered
// with that failing status), which requires a status. host is a DNS name, an IPv4
// address or a bracketed IPv6 address: never a URL, a path or credentials. String
// writes upstream, status, reason in that order, "; "-separated, and omits
// reason=status, for example
//
//	upstream=registry.example; status=503
//	upstream=registry.example:5000; reason=timeout
//	upstream=[2001:db8::1]; status=206; reason=bad-answer
package upstreamerr

import (
	"fmt"
	"net/http"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
)

// Header is the response header that carries a Failure.
const Header = "Hopless-Upstream-Error"

// Reasons, the values of Failure.Reason.
const (
	// ReasonStatus: the upstream answered with Failure.Status (5xx or 429).
	ReasonStatus = "status"
	// ReasonTimeout: the upstream did not answer, or its body stalled, in time.
	ReasonTimeout = "timeout"
	// ReasonUnreachable: no answer at all (connection refused or reset, DNS, TLS).
	ReasonUnreachable = "unreachable"
	// ReasonBadAnswer: the upstream answered something unusable (a wrong
	// Content-Range, no size, a redirect to plain http, a cut body).
	ReasonBadAnswer = "bad-answer"
)

// Failure is what an upstream did wrong.
type Failure struct {
	// Upstream is the upstream's host[:port]; never a URL with credentials or a path.
	Upstream string
	// Status is the upstream's HTTP status, 0 when it gave no answer.
	Status int
	// Reason is one of the Reason constants.
	Reason string
}

// String formats f as the value of Header.
func (f Failure) String() string {
	var b strings.Builder
	b.WriteString("upstream=")
	b.WriteString(f.Upstream)
	if f.Status != 0 {
		b.WriteString("; status=")
		b.WriteString(strconv.Itoa(f.Status))
	}
	if f.Reason != "" && f.Reason != ReasonStatus {
		b.WriteString("; reason=")
		b.WriteString(f.Reason)
	}
	return b.String()
}

// Parse reads a value of Header strictly: an unknown or repeated key, a missing
// upstream, a host that is not host[:port], a status outside 100-599, an unknown
// reason, or any other garbage is an error.
func Parse(value string) (Failure, error) {
	var f Failure
	bad := func(format string, args ...any) (Failure, error) {
		return Failure{}, fmt.Errorf("bad %s value %q: %s", Header, value, fmt.Sprintf(format, args...))
	}
	seen := map[string]bool{}
	for param := range strings.SplitSeq(value, ";") {
		param = strings.Trim(param, " \t")
		key, val, ok := strings.Cut(param, "=")
		key, val = strings.Trim(key, " \t"), strings.Trim(val, " \t")
		if !ok || key == "" || val == "" {
			return bad("want key=value, got %q", param)
		}
		if seen[key] {
			return bad("%s given twice", key)
		}
		seen[key] = true
		switch key {
		case "upstream":
			if !validHost(val) {
				return bad("upstream %q is not host[:port]", val)
			}
			f.Upstream = val
		case "status":
			n, err := strconv.Atoi(val)
			if err != nil || len(val) != 3 || n < 100 || n > 599 {
				return bad("status %q is not an HTTP status", val)
			}
			f.Status = n
		case "reason":
			switch val {
			case ReasonStatus, ReasonTimeout, ReasonUnreachable, ReasonBadAnswer:
			default:
				return bad("unknown reason %q", val)
			}
			f.Reason = val
		default:
			return bad("unknown key %q", key)
		}
	}
	switch {
	case f.Upstream == "":
		return bad("no upstream")
	case f.Status == 0 && f.Reason == "":
		return bad("neither status nor reason")
	case f.Status == 0 && f.Reason == ReasonStatus:
		return bad("reason status without a status")
	case f.Reason == "":
		f.Reason = ReasonStatus
	}
	return f, nil
}

// WireStatus is the status a master answers with for f: 429 when the upstream
// answered 429, 504 when it gave no answer (timeout, unreachable), and 502 for
// everything else the upstream did wrong.
func WireStatus(f Failure) int {
	switch {
	case f.Reason == ReasonTimeout || f.Reason == ReasonUnreachable:
		return http.StatusGatewayTimeout
	case f.Status == http.StatusTooManyRequests && (f.Reason == ReasonStatus || f.Reason == ""):
		return http.StatusTooManyRequests
	default:
		return http.StatusBadGateway
	}
}

// ValidRetryAfter reports whether v is a Retry-After value: a number of seconds or
// an HTTP date (RFC 9110, section 10.2.3). Only valid values are passed on.
func ValidRetryAfter(v string) bool {
	if v == "" {
		return false
	}
	if strings.Trim(v, "0123456789") == "" {
		return len(v) <= 10
	}
	_, err := http.ParseTime(v)
	return err == nil
}

// dnsName matches a DNS name or an IPv4 address.
var dnsName = regexp.MustCompile(`^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$`)

func validHost(s string) bool {
	host := s
	if rest, ok := strings.CutPrefix(s, "["); ok {
		addr, after, ok := strings.Cut(rest, "]")
		if !ok {
			return false
		}
		if a, err := netip.ParseAddr(addr); err != nil || !a.Is6() || a.Zone() != "" {
			return false
		}
		if after != "" {
			p, ok := strings.CutPrefix(after, ":")
			if !ok {
				return false
			}
			return validPort(p)
		}
		return true
	}
	if i := strings.LastIndexByte(s, ':'); i >= 0 {
		host = s[:i]
		if !validPort(s[i+1:]) {
			return false
		}
	}
	return len(host) <= 253 && dnsName.MatchString(host)
}

func validPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && strings.Trim(p, "0123456789") == "" && n >= 1 && n <= 65535
}

// FromResponse reads the failure that a 5xx or 429 answer carries in Header. found
// is false for any other answer and for one without the header; err says why a
// header that is there does not parse (the answer is then the sender's own failure).
func FromResponse(resp *http.Response) (f Failure, found bool, err error) {
	v := resp.Header.Get(Header)
	if v == "" || (resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests) {
		return Failure{}, false, nil
	}
	f, err = Parse(v)
	return f, true, err
}
