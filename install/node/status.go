package node

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hopless/hopless/install/hostfs"
	"github.com/hopless/hopless/nri/cri"
)

// File states in a Status.
const (
	FileOK      = "ok"
	FileChanged = "changed"
	FileMissing = "missing"
	FileMode    = "mode changed"
	// FilePending is a file whose write a killed run did not finish.
	FilePending = "pending"
)

// Status is what the installer finds on the node.
type Status struct {
	Installed bool      `json:"installed"`
	Mode      string    `json:"mode,omitempty"`
	Release   string    `json:"release,omitempty"`
	Node      string    `json:"node,omitempty"`
	Complete  bool      `json:"complete"`
	Updated   time.Time `json:"updated,omitzero"`
	// Containerd is the containerd release of the installed hopless build.
	Containerd string `json:"containerd,omitempty"`
	// Running is the version the running containerd reports; empty when it does
	// not answer.
	Running string       `json:"running,omitempty"`
	Files   []FileStatus `json:"files"`
	// Drift counts the files that are not as the installer wrote them.
	Drift int `json:"drift"`
}

// FileStatus is one installed file.
type FileStatus struct {
	Path  string `json:"path"`
	Role  string `json:"role"`
	State string `json:"state"`
}

// Status compares the node with the installer's record.
func (in *Installer) Status(ctx context.Context) (*Status, error) {
	store, err := in.store()
	if err != nil {
		return nil, err
	}
	st, err := store.Load()
	if err != nil {
		return nil, err
	}
	s := &Status{Installed: st.Installed(), Mode: st.Mode, Release: st.Release, Node: st.Node, Complete: st.Complete, Updated: st.Updated}
	for _, f := range st.Files {
		fst := FileStatus{Path: f.Path, Role: f.Role, State: FileOK}
		rp, err := in.Root.Path(f.Path)
		if err != nil {
			return nil, err
		}
		b, fi, err := hostfs.ReadFile(rp)
		switch {
		case f.SHA256 == "":
			fst.State = FilePending
		case err != nil:
			fst.State = FileChanged
		case fi == nil:
			fst.State = FileMissing
		case hostfs.Sum(b) != f.SHA256:
			fst.State = FileChanged
		case fi.Mode().Perm() != fs.FileMode(f.Mode):
			fst.State = FileMode
		}
		if fst.State != FileOK {
			s.Drift++
		}
		if f.Path == BinDir+"/containerd" && fst.State == FileOK {
			if v, err := BinaryVersion(rp); err == nil {
				s.Containerd = v
			}
		}
		s.Files = append(s.Files, fst)
	}
	if sock, err := in.Root.Path(in.Socket); err == nil {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if c, err := cri.Dial(cctx, sock); err == nil {
			s.Running, _ = c.Version(cctx)
			c.Close()
		}
		cancel()
	}
	return s, nil
}

// WriteText prints s for people.
func (s *Status) WriteText(w io.Writer) error {
	if !s.Installed {
		_, err := fmt.Fprintln(w, "hopless is not installed on this node")
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "hopless %s installed in %s mode on node %q, %s\n", s.Release, s.Mode, s.Node, s.Updated.Format(time.RFC3339))
	if !s.Complete {
		b.WriteString("the last run did not finish: run hopless-install node again\n")
	}
	if s.Containerd != "" {
		fmt.Fprintf(&b, "containerd (hopless build): %s\n", s.Containerd)
	}
	if s.Running != "" {
		fmt.Fprintf(&b, "containerd running: %s\n", s.Running)
	} else {
		b.WriteString("containerd running: no answer on its socket\n")
	}
	fmt.Fprintf(&b, "drift: %d file(s)\n", s.Drift)
	if _, err := io.WriteString(w, b.String()); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STATE\tPATH\tROLE")
	for _, f := range s.Files {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", f.State, f.Path, f.Role)
	}
	return tw.Flush()
}
