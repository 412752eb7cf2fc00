// Package certreload serves a TLS certificate and key from files and picks up a
// replacement without a restart, as cert-manager or a renewed Secret delivers one.
package certreload

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// CheckInterval is how often, at most, the files are looked at again: on the first
// handshake after it has passed since the last look.
const CheckInterval = time.Second

// Reloader holds the certificate loaded from a pair of files.
type Reloader struct {
	certFile, keyFile string
	log               *slog.Logger
	now               func() time.Time

	mu         sync.Mutex
	cert       *tls.Certificate
	loaded     fileIDs // the files' identity when cert was loaded
	failed     fileIDs // the identity last refused, reported once
	unreadable bool    // the files could not be looked at, reported once
	checkedAt  time.Time
}

type fileID struct {
	size  int64
	mtime int64
}

type fileIDs [2]fileID

// Option configures a Reloader.
type Option func(*Reloader)

// WithClock sets the clock (for tests).
func WithClock(now func() time.Time) Option { return func(r *Reloader) { r.now = now } }

// New loads the pair; an error names both files ("certificate X and key Y: ...").
// log gets a line for every replacement taken and every one refused.
func New(certFile, keyFile string, log *slog.Logger, opts ...Option) (*Reloader, error) {
	r := &Reloader{certFile: certFile, keyFile: keyFile, log: log, now: time.Now}
	for _, o := range opts {
		o(r)
	}
	ids, err := r.ids()
	if err == nil {
		var cert tls.Certificate
		if cert, err = tls.LoadX509KeyPair(certFile, keyFile); err == nil {
			r.cert, r.loaded, r.checkedAt = &cert, ids, r.now()
			return r, nil
		}
	}
	return nil, fmt.Errorf("certificate %s and key %s: %w", certFile, keyFile, err)
}

// GetCertificate is for tls.Config.GetCertificate. A replacement that does not load
// (a key that does not match the certificate while the two are being written, a
// broken file) leaves the previous certificate in use, and is tried again once the
// files change once more.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if now.Sub(r.checkedAt) < CheckInterval {
		return r.cert, nil
	}
	r.checkedAt = now
	ids, err := r.ids()
	if err != nil {
		if !r.unreadable {
			r.unreadable = true
			r.log.Warn("server certificate files unreadable; serving the one loaded before", "cert", r.certFile, "key", r.keyFile, "err", err)
		}
		return r.cert, nil
	}
	r.unreadable = false
	if ids == r.loaded || ids == r.failed {
		return r.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		r.failed = ids
		r.log.Warn("server certificate replaced, but it does not load; serving the one loaded before", "cert", r.certFile, "key", r.keyFile, "err", err)
		return r.cert, nil
	}
	r.cert, r.loaded = &cert, ids
	r.log.Info("server certificate replaced; serving the new one", "cert", r.certFile)
	return r.cert, nil
}

func (r *Reloader) ids() (fileIDs, error) {
	var ids fileIDs
	for i, p := range []string{r.certFile, r.keyFile} {
		fi, err := os.Stat(p)
		if err != nil {
			return ids, fmt.Errorf("certificate file: %w", err)
		}
		ids[i] = fileID{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	}
	return ids, nil
}
