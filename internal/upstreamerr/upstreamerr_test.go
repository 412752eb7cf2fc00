package upstreamerr

import (
	"net/http"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	tests := []struct {
		f    Failure
		want string
		wire int
	}{
		{Failure{"registry.example", 503, ReasonStatus}, "upstream=registry.example; status=503", http.StatusBadGateway},
		{Failure{"registry.example", 500, ReasonStatus}, "upstream=registry.example; status=500", http.StatusBadGateway},
		{Failure{"registry.example:5000", 429, ReasonStatus}, "upstream=registry.example:5000; status=429", http.StatusTooManyRequests},
		{Failure{"registry.example", 0, ReasonTimeout}, "upstream=registry.example; reason=timeout", http.StatusGatewayTimeout},
		{Failure{"10.0.0.1:443", 0, ReasonUnreachable}, "upstream=10.0.0.1:443; reason=unreachable", http.StatusGatewayTimeout},
		{Failure{"[2001:db8::1]:5000", 206, ReasonBadAnswer}, "upstream=[2001:db8::1]:5000; status=206; reason=bad-answer", http.StatusBadGateway},
		{Failure{"[::1]", 0, ReasonBadAnswer}, "upstream=[::1]; reason=bad-answer", http.StatusBadGateway},
		// A 429 that is not the answer itself (e.g. a bad body) is a bad gateway.
		{Failure{"r.example", 429, ReasonBadAnswer}, "upstream=r.example; status=429; reason=bad-answer", http.StatusBadGateway},
		{Failure{"r.example", 504, ReasonTimeout}, "upstream=r.example; status=504; reason=timeout", http.StatusGatewayTimeout},
	}
	for _, tt := range tests {
		got := tt.f.String()
		if got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.f, got, tt.want)
		}
		back, err := Parse(got)
		if err != nil {
			t.Errorf("Parse(%q): %v", got, err)
		} else if back != tt.f {
			t.Errorf("Parse(%q) = %+v, want %+v", got, back, tt.f)
		}
		if w := WireStatus(tt.f); w != tt.wire {
			t.Errorf("WireStatus(%+v) = %d, want %d", tt.f, w, tt.wire)
		}
	}
}

func TestParseTolerant(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want Failure
	}{
		{"upstream=a.example;status=503", Failure{"a.example", 503, ReasonStatus}},
		{"  upstream = a.example ;\tstatus = 503\t", Failure{"a.example", 503, ReasonStatus}},
		{"status=429; upstream=a.example", Failure{"a.example", 429, ReasonStatus}},
		{"reason=timeout; upstream=a.example", Failure{"a.example", 0, ReasonTimeout}},
		{"upstream=a.example; status=502; reason=status", Failure{"a.example", 502, ReasonStatus}},
		{"upstream=localhost:5001; reason=unreachable", Failure{"localhost:5001", 0, ReasonUnreachable}},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestParseBad(t *testing.T) {
	t.Parallel()
	for _, in := range []string{
		"",
		" ",
		";",
		"garbage",
		"upstream=a.example",              // neither status nor reason
		"status=503",                      // no upstream
		"reason=timeout",                  // no upstream
		"upstream=a.example; status=503;", // trailing separator
		"upstream=a.example;; status=503", // empty parameter
		"upstream=a.example, status=503",  // wrong separator
		"upstream=a.example; status=503; extra=1",    // unknown key
		"Upstream=a.example; status=503",             // keys are lower case
		"upstream=a.example; status=503; status=500", // repeated key
		"upstream=a.example; upstream=b.example; status=503",
		"upstream=; status=503",
		"upstream=a.example; status=",
		"upstream=a.example; status=5O3",
		"upstream=a.example; status=99",
		"upstream=a.example; status=600",
		"upstream=a.example; status=+50",
		"upstream=a.example; status=0503",
		"upstream=a.example; reason=slow",
		"upstream=a.example; reason=status", // status reason without a status
		"upstream=a.example; reason=",
		"upstream=https://a.example; status=503",
		"upstream=a.example/v2/x; status=503",
		"upstream=user:pass@a.example; status=503",
		"upstream=a.example:0; status=503",
		"upstream=a.example:65536; status=503",
		"upstream=a.example:; status=503",
		"upstream=a..example; status=503",
		"upstream=-a.example; status=503",
		"upstream=a example; status=503",
		"upstream=2001:db8::1; status=503",
		"upstream=[2001:db8::1; status=503",
		"upstream=[10.0.0.1]; status=503",
		"upstream=[2001:db8::1]x; status=503",
		"upstream=[fe80::1%eth0]; status=503",
		"upstream=a.example; status=503 trailing",
		"upstream=a.example status=503",
	} {
		if f, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) = %+v, want an error", in, f)
		} else if !strings.Contains(err.Error(), Header) {
			t.Errorf("Parse(%q) error %q does not name the header", in, err)
		}
	}
}

func TestValidRetryAfter(t *testing.T) {
	t.Parallel()
	for v, want := range map[string]bool{
		"7":                                 true,
		"0":                                 true,
		"120":                               true,
		"Wed, 21 Oct 2015 07:28:00 GMT":     true,
		"Wednesday, 21-Oct-15 07:28:00 GMT": true,
		"":                                  false,
		"-1":                                false,
		"1.5":                               false,
		" 7":                                false,
		"soon":                              false,
		"99999999999":                       false,
		"2015-10-21T07:28:00Z":              false,
	} {
		if got := ValidRetryAfter(v); got != want {
			t.Errorf("ValidRetryAfter(%q) = %v, want %v", v, got, want)
		}
	}
}

func TestFromResponse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		status  int
		header  string
		found   bool
		wantErr bool
	}{
		{"502 with the header", 502, "upstream=registry.example; status=503", true, false},
		{"429 with the header", 429, "upstream=registry.example; status=429", true, false},
		{"a 5xx without it", 503, "", false, false},
		{"a 404 with it is no failure", 404, "upstream=registry.example; status=503", false, false},
		{"garbage", 502, "upstream registry.example", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			resp := &http.Response{StatusCode: tt.status, Header: http.Header{}}
			if tt.header != "" {
				resp.Header.Set(Header, tt.header)
			}
			f, found, err := FromResponse(resp)
			if found != tt.found || (err != nil) != tt.wantErr {
				t.Fatalf("FromResponse = %+v, %v, %v; want found %v, error %v", f, found, err, tt.found, tt.wantErr)
			}
			if found && err == nil && f.Upstream != "registry.example" {
				t.Errorf("upstream %q", f.Upstream)
			}
		})
	}
}
