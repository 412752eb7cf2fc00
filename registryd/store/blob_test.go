package store

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

func TestCommitAndOpen(t *testing.T) {
	t.Parallel()
	variants := []struct {
		name    string
		backend string
		setup   func(*Store)
	}{
		{"filesystem/rename", "filesystem", func(*Store) {}},
		{"filesystem/upload", "filesystem", func(s *Store) { s.noRename = true }},
		{"inmemory/tmp+move", "inmemory", func(*Store) {}},
		{"inmemory/direct", "inmemory", func(s *Store) { s.directWrite = true }},
	}
	sizes := []int{0, 10, holdback - 1, holdback + 1, 200 << 10}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			s := newBackend(t, v.backend).open(t)
			v.setup(s)
			var total int64
			for i, n := range sizes {
				content := randomBytes(uint64(i+1), n)
				d := commit(t, s, content)
				total += int64(n)
				if got := spoolFiles(t, s); len(got) != 0 {
					t.Fatalf("spool not emptied: %v", got)
				}
				size, err := s.StatBlob(t.Context(), d)
				if err != nil || size != int64(n) {
					t.Fatalf("StatBlob = %d, %v; want %d", size, err, n)
				}
				r, size, err := s.OpenBlob(t.Context(), d)
				if err != nil || size != int64(n) {
					t.Fatalf("OpenBlob = %d, %v; want %d", size, err, n)
				}
				got, err := io.ReadAll(r)
				_ = r.Close()
				if err != nil {
					t.Fatalf("read %d bytes: %v", n, err)
				}
				mustEqualBytes(t, got, content)

				// Committing again succeeds and cleans the spool.
				commit(t, s, content)
				if got := spoolFiles(t, s); len(got) != 0 {
					t.Fatalf("spool not emptied by an idempotent commit: %v", got)
				}
			}
			if s.Size() != total {
				t.Fatalf("Size = %d, want %d", s.Size(), total)
			}
		})
	}
}

// A client streaming from the spool file during the fill keeps reading the same
// bytes after the commit renames it.
func TestCommitRenameKeepsSpoolReaders(t *testing.T) {
	t.Parallel()
	s := newBackend(t, "filesystem").open(t)
	content := randomBytes(7, 100<<10)
	d := digest.FromBytes(content)
	sp := s.SpoolPath(d)
	if err := os.WriteFile(sp, content, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(sp)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	before, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CommitBlob(t.Context(), d, sp); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	mustEqualBytes(t, got, content)
	after, err := os.Stat(s.fsPath(blobPath(d)))
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(before, after) {
		t.Fatal("commit copied the spool file instead of renaming it")
	}
}

func TestCommitErrors(t *testing.T) {
	t.Parallel()
	s := newBackend(t, "filesystem").open(t)
	content := []byte("hello")
	d := digest.FromBytes(content)
	emptyForNonEmpty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(emptyForNonEmpty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		d     digest.Digest
		path  string
		check func(error) bool
	}{
		{"bad digest", "sha256:xyz", s.SpoolPath(d), errdefs.IsInvalidArgument},
		{"unknown algorithm", "md5:d41d8cd98f00b204e9800998ecf8427e", s.SpoolPath(d), errdefs.IsInvalidArgument},
		{"missing spool file", d, s.SpoolPath(d), errdefs.IsNotFound},
		{"empty file for a non-empty digest", d, emptyForNonEmpty, errdefs.IsInvalidArgument},
		{"directory", d, t.TempDir(), errdefs.IsInvalidArgument},
	}
	for _, tt := range tests {
		err := s.CommitBlob(t.Context(), tt.d, tt.path)
		if !tt.check(err) {
			t.Errorf("%s: CommitBlob error = %v", tt.name, err)
		}
	}
	// A retried commit whose spool file is already gone succeeds.
	commit(t, s, content)
	if err := s.CommitBlob(t.Context(), d, s.SpoolPath(d)); err != nil {
		t.Errorf("retried commit: %v", err)
	}
}

// A stored blob of the wrong size (damaged) is replaced by a new commit.
func TestCommitReplacesDamagedBlob(t *testing.T) {
	t.Parallel()
	for _, name := range backendNames {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := newBackend(t, name)
			s := b.open(t)
			content := randomBytes(3, 4096)
			d := commit(t, s, content)
			b.rewrite(t, s, d, content[:100])
			commit(t, s, content)
			r, _, err := s.OpenBlob(t.Context(), d)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			got, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			mustEqualBytes(t, got, content)
		})
	}
}

func TestMissingAndInvalid(t *testing.T) {
	t.Parallel()
	for _, name := range backendNames {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := newBackend(t, name).open(t)
			absent := digest.FromString("absent")
			ops := map[string]func(digest.Digest) error{
				"StatBlob": func(d digest.Digest) error { _, err := s.StatBlob(t.Context(), d); return err },
				"OpenBlob": func(d digest.Digest) error { _, _, err := s.OpenBlob(t.Context(), d); return err },
				"GetManifest": func(d digest.Digest) error {
					_, _, err := s.GetManifest(t.Context(), d)
					return err
				},
			}
			for op, f := range ops {
				if err := f(absent); !errdefs.IsNotFound(err) {
					t.Errorf("%s(absent) = %v, want not found", op, err)
				}
				for _, bad := range []digest.Digest{"", "sha256:../../etc/passwd", "sha256:ABC", "../x"} {
					if err := f(bad); !errdefs.IsInvalidArgument(err) {
						t.Errorf("%s(%q) = %v, want invalid argument", op, bad, err)
					}
				}
			}
		})
	}
}

func TestSpoolPath(t *testing.T) {
	t.Parallel()
	s := newBackend(t, "filesystem").open(t)
	d := digest.FromString("x")
	want := filepath.Join(s.spool, "sha256", d.Encoded()+".partial")
	if got := s.SpoolPath(d); got != want {
		t.Errorf("SpoolPath = %s, want %s", got, want)
	}
	if got := s.SpoolPath("sha256:../../x"); got != "" {
		t.Errorf("SpoolPath(bad) = %q, want empty", got)
	}
	fi, err := os.Stat(s.spool)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("spool mode %v, want 0700", fi.Mode().Perm())
	}
}

func TestVerifyDetectsCorruption(t *testing.T) {
	t.Parallel()
	const big = 200 << 10
	tests := []struct {
		name string
		size int
		// damage returns the corrupt stored content.
		damage func([]byte) []byte
		// resized: the damage changes the size, which OpenBlob finds against the
		// index before a byte is read (a reader would announce the wrong size).
		resized bool
	}{
		{"first byte", big, func(p []byte) []byte { p[0] ^= 1; return p }, false},
		{"middle byte", big, func(p []byte) []byte { p[len(p)/2] ^= 0x80; return p }, false},
		{"last byte", big, func(p []byte) []byte { p[len(p)-1]++; return p }, false},
		{"truncated", big, func(p []byte) []byte { return p[:len(p)-10] }, true},
		{"grown", big, func(p []byte) []byte { return append(p, 0) }, true},
		{"small blob", 1000, func(p []byte) []byte { p[500] ^= 1; return p }, false},
		{"emptied", 1000, func(p []byte) []byte { return p[:0] }, true},
	}
	for _, name := range backendNames {
		for _, tt := range tests {
			t.Run(name+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				m := newMetrics()
				b := newBackend(t, name)
				s := b.open(t, WithMetrics(m))
				content := randomBytes(11, tt.size)
				d := commit(t, s, content)
				bad := tt.damage(append([]byte(nil), content...))
				b.rewrite(t, s, d, bad)

				r, size, err := s.OpenBlob(t.Context(), d)
				switch {
				case tt.resized:
					if !errdefs.IsNotFound(err) || !errdefs.IsDataLoss(err) {
						t.Fatalf("OpenBlob of a resized copy: err = %v, want not found (to fill it again) and data loss", err)
					}
				case err != nil:
					t.Fatal(err)
				default:
					got, err := io.ReadAll(r)
					_ = r.Close()
					if !errdefs.IsDataLoss(err) {
						t.Fatalf("read error = %v, want data loss", err)
					}
					if limit := max(0, size-holdback); int64(len(got)) > limit {
						t.Fatalf("%d bytes of %d released before verification failed; want at most %d", len(got), size, limit)
					}
				}
				if n := counter(t, m.VerifyFailures.WithLabelValues("store")); n != 1 {
					t.Fatalf("VerifyFailures{store} = %v, want 1", n)
				}
				if has(t, s, d) {
					t.Fatal("corrupt blob was not removed")
				}
				if _, err := s.StatBlob(t.Context(), d); !errdefs.IsNotFound(err) {
					t.Fatalf("StatBlob after quarantine = %v, want not found", err)
				}
				if s.Size() != 0 {
					t.Fatalf("Size = %d after quarantine, want 0", s.Size())
				}
				// The next fill stores it again.
				commit(t, s, content)
				readAll(t, s, d, content)
			})
		}
	}
}

func readAll(t *testing.T, s *Store, d digest.Digest, want []byte) io.ReadSeekCloser {
	t.Helper()
	r, _, err := s.OpenBlob(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	_ = r.Close()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	mustEqualBytes(t, got, want)
	return r
}

func TestVerifiedCache(t *testing.T) {
	t.Parallel()
	for _, name := range backendNames {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := newBackend(t, name)
			s := b.open(t)
			content := randomBytes(5, 150<<10)
			d := commit(t, s, content)
			// A commit from the fill counts as verified; start from bytes that are not.
			b.rewrite(t, s, d, content)

			r := readAll(t, s, d, content)
			if _, ok := r.(*verifyingReader); !ok {
				t.Fatalf("first open returned %T, want a verifying reader", r)
			}
			if n := s.verifications.Load(); n != 1 {
				t.Fatalf("verifications = %d, want 1", n)
			}
			r = readAll(t, s, d, content)
			if n := s.verifications.Load(); n != 1 {
				t.Fatalf("verified blob hashed again: verifications = %d", n)
			}
			if _, ok := r.(*os.File); name == "filesystem" && !ok {
				t.Fatalf("verified blob opened as %T, want *os.File", r)
			}

			// The file changes (same bytes, new mtime): hash again.
			b.rewrite(t, s, d, content)
			readAll(t, s, d, content)
			if n := s.verifications.Load(); n != 2 {
				t.Fatalf("changed blob not hashed again: verifications = %d", n)
			}
			readAll(t, s, d, content)
			if n := s.verifications.Load(); n != 2 {
				t.Fatalf("verifications = %d, want 2", n)
			}

			// A flipped byte after verification is caught on the next open.
			bad := append([]byte(nil), content...)
			bad[1234] ^= 4
			b.rewrite(t, s, d, bad)
			r, _, err := s.OpenBlob(t.Context(), d)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if _, err := io.ReadAll(r); !errdefs.IsDataLoss(err) {
				t.Fatalf("read of changed corrupt blob: %v, want data loss", err)
			}
		})
	}
}

func TestRandomAccess(t *testing.T) {
	t.Parallel()
	for _, name := range backendNames {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := newBackend(t, name)
			s := b.open(t)
			content := randomBytes(9, 300<<10)
			d := commit(t, s, content)
			// A commit from the fill counts as verified; start from bytes that are not.
			b.rewrite(t, s, d, content)

			// Seek into an unverified blob: verified first, then served.
			r, _, err := s.OpenBlob(t.Context(), d)
			if err != nil {
				t.Fatal(err)
			}
			for _, off := range []int64{100_000, 5, int64(len(content)) - 3} {
				if _, err := r.Seek(off, io.SeekStart); err != nil {
					t.Fatal(err)
				}
				got := make([]byte, min(1000, int64(len(content))-off))
				if _, err := io.ReadFull(r, got); err != nil {
					t.Fatalf("read at %d: %v", off, err)
				}
				mustEqualBytes(t, got, content[off:off+int64(len(got))])
			}
			_ = r.Close()
			if n := s.verifications.Load(); n != 1 {
				t.Fatalf("verifications = %d, want 1", n)
			}

			// A Range request through http.ServeContent.
			b.rewrite(t, s, d, content) // unverified again
			rec := serve(t, s, d, "bytes=10-19")
			if rec.Code != http.StatusPartialContent || rec.Body.String() != string(content[10:20]) {
				t.Fatalf("range: %d %q", rec.Code, rec.Body.String())
			}
			rec = serve(t, s, d, "")
			if rec.Code != http.StatusOK || rec.Body.Len() != len(content) {
				t.Fatalf("full: %d, %d bytes", rec.Code, rec.Body.Len())
			}
			mustEqualBytes(t, rec.Body.Bytes(), content)

			// A Range request of a corrupt blob fails and serves nothing.
			bad := append([]byte(nil), content...)
			bad[len(bad)-1] ^= 1
			b.rewrite(t, s, d, bad)
			rec = serve(t, s, d, "bytes=10-19")
			if rec.Body.Len() != 0 {
				t.Fatalf("corrupt range served %d bytes", rec.Body.Len())
			}
			if has(t, s, d) {
				t.Fatal("corrupt blob kept")
			}
		})
	}
}

func serve(t *testing.T, s *Store, d digest.Digest, rng string) *httptest.ResponseRecorder {
	t.Helper()
	r, _, err := s.OpenBlob(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	req := httptest.NewRequest(http.MethodGet, "/v2/x/blobs/"+d.String(), nil)
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	rec := httptest.NewRecorder()
	rec.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(rec, req, "", time.Time{}, r)
	return rec
}

// A reader keeps working when eviction removes the blob under it.
func TestEvictWhileReading(t *testing.T) {
	t.Parallel()
	for _, name := range backendNames {
		for _, verified := range []bool{false, true} {
			t.Run(name+"/verified="+strconv.FormatBool(verified), func(t *testing.T) {
				t.Parallel()
				clk := newClock()
				s := newBackend(t, name).open(t, WithClock(clk.Now))
				content := randomBytes(13, 300<<10)
				d := commit(t, s, content)
				if verified {
					readAll(t, s, d, content)
				}
				r, _, err := s.OpenBlob(t.Context(), d)
				if err != nil {
					t.Fatal(err)
				}
				defer r.Close()
				head := make([]byte, 1000)
				if _, err := io.ReadFull(r, head); err != nil {
					t.Fatal(err)
				}
				clk.Advance(2 * time.Hour)
				st, err := s.Evict(t.Context(), 0, time.Hour)
				if err != nil || st.Blobs != 1 {
					t.Fatalf("Evict = %+v, %v", st, err)
				}
				if has(t, s, d) {
					t.Fatal("blob not removed")
				}
				rest, err := io.ReadAll(r)
				if err != nil {
					t.Fatalf("reader broken by eviction: %v", err)
				}
				mustEqualBytes(t, append(head, rest...), content)
			})
		}
	}
}

// TestCommitCountsAsVerified: the fill hashed a blob while writing it, so the first
// read after a filesystem commit is served straight from the file.
func TestCommitCountsAsVerified(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "filesystem")
	s := b.open(t)
	content := randomBytes(11, 100<<10)
	d := commit(t, s, content)
	r := readAll(t, s, d, content)
	if _, ok := r.(*os.File); !ok {
		t.Fatalf("first open after commit returned %T, want *os.File", r)
	}
	if n := s.verifications.Load(); n != 0 {
		t.Fatalf("verifications = %d, want 0", n)
	}
}

// TestVerifyBlob flips a byte of a verified blob in place and restores its mtime, so
// that it looks unchanged: OpenBlob serves it whole, VerifyBlob finds and removes it.
func TestVerifyBlob(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "filesystem")
	m := newMetrics()
	s := b.open(t, WithMetrics(m))
	content := randomBytes(12, 200<<10)
	d := commit(t, s, content)
	if err := s.VerifyBlob(t.Context(), d); err != nil {
		t.Fatalf("VerifyBlob of a good blob: %v", err)
	}
	if n := s.verifications.Load(); n != 1 {
		t.Fatalf("verifications = %d, want 1: VerifyBlob hashes a blob verified at commit", n)
	}

	p := s.fsPath(blobPath(d))
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{content[777] ^ 1}, 777); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(content)
	bad[777] ^= 1
	readAll(t, s, d, bad) // the verified state trusts the unchanged-looking file

	if err := s.VerifyBlob(t.Context(), d); !errdefs.IsDataLoss(err) {
		t.Fatalf("VerifyBlob of the flipped blob: %v, want data loss", err)
	}
	if has(t, s, d) {
		t.Fatal("the corrupt blob was kept")
	}
	if v := counter(t, m.VerifyFailures.WithLabelValues("store")); v != 1 {
		t.Errorf("store verify failures = %v, want 1", v)
	}
	if err := s.VerifyBlob(t.Context(), d); !errdefs.IsNotFound(err) {
		t.Errorf("VerifyBlob of the removed blob: %v, want not found", err)
	}
}
