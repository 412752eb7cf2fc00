package lab

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"
)

// Request is one request that a master served, read from its access log.
type Request struct {
	Master string
	Method string
	Path   string
	Status int
	Bytes  int64
	Range  string
	// Time is when registryd logged the request, at its end; Duration is how long
	// it took, so Time-Duration is when its handler began.
	Time     time.Time
	Duration time.Duration
}

// IsBlobGET reports whether r fetched a blob's content.
func (r Request) IsBlobGET() bool {
	return r.Method == "GET" && strings.Contains(r.Path, "/blobs/sha256:")
}

// MasterRequests reads every master's access log: registryd writes one JSON line per
// request with method, path, status and bytes.
func (l *Lab) MasterRequests() ([]Request, error) {
	var out []Request
	for _, m := range l.Masters {
		reqs, err := readRequests(m.Name, m.Log)
		if err != nil {
			return nil, err
		}
		out = append(out, reqs...)
	}
	return out, nil
}

func readRequests(master, path string) ([]Request, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s's log: %w", master, err)
	}
	defer f.Close()
	var out []Request
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var e struct {
			Method string        `json:"method"`
			Path   string        `json:"path"`
			Status int           `json:"status"`
			Bytes  int64         `json:"bytes"`
			Range  string        `json:"range"`
			Time   time.Time     `json:"time"`
			Dur    time.Duration `json:"duration"`
		}
		if json.Unmarshal(sc.Bytes(), &e) != nil || e.Method == "" || e.Path == "" || e.Status == 0 {
			continue
		}
		out = append(out, Request{Master: master, Method: e.Method, Path: e.Path, Status: e.Status, Bytes: e.Bytes, Range: e.Range, Time: e.Time, Duration: e.Dur})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s's log: %w", master, err)
	}
	return out, nil
}
