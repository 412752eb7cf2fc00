package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Client calls a registryd's /hopless/v1/ API.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// NewClient returns a client for the registryd at base ("https://host:port"); token
// is the API token for prefetch, or a node's token for pins.
func NewClient(base, token string, tlsConfig *tls.Config) *Client {
	tr := &http.Transport{TLSClientConfig: tlsConfig, Proxy: nil, ResponseHeaderTimeout: 30 * time.Second}
	return &Client{base: strings.TrimSuffix(base, "/"), token: token, http: &http.Client{Transport: tr, Timeout: time.Minute}}
}

// StatusError is an answer with another status than the call expects. Body is the
// answer's body, usually errcode's JSON.
type StatusError struct {
	Method, URL string
	StatusCode  int
	Status      string
	Body        string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s %s: %s: %s", e.Method, e.URL, e.Status, e.Body)
}

// Job is a prefetch job's state.
type Job = job

// Prefetch starts warming images and returns the new job.
func (c *Client) Prefetch(ctx context.Context, images []string) (Job, error) {
	var j Job
	err := c.do(ctx, http.MethodPost, "prefetch", PrefetchRequest{Images: images}, http.StatusAccepted, &j)
	return j, err
}

// PrefetchStatus returns a job's progress.
func (c *Client) PrefetchStatus(ctx context.Context, id string) (Job, error) {
	var j Job
	err := c.do(ctx, http.MethodGet, "prefetch/"+id, nil, http.StatusOK, &j)
	return j, err
}

// PutPins renews the lease of p.Source, which must be the node the client's token
// names, with p's images.
func (c *Client) PutPins(ctx context.Context, p Pins) (PinsAnswer, error) {
	var a PinsAnswer
	err := c.do(ctx, http.MethodPut, "pins", p, http.StatusOK, &a)
	return a, err
}

func (c *Client) do(ctx context.Context, method, path string, in any, want int, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encoding %s request: %w", path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+Prefix+path, body)
	if err != nil {
		return fmt.Errorf("building %s request: %w", path, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, c.base+Prefix+path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBodyBytes))
	if err != nil {
		return fmt.Errorf("%s %s: reading response: %w", method, c.base+Prefix+path, err)
	}
	if resp.StatusCode != want {
		return &StatusError{Method: method, URL: c.base + Prefix + path, StatusCode: resp.StatusCode, Status: resp.Status, Body: strings.TrimSpace(string(b))}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: decoding response: %w", method, c.base+Prefix+path, err)
		}
	}
	return nil
}
