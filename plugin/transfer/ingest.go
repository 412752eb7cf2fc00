package transfer

import (
	"context"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
)

// abortIngests aborts the ingests of the blobs dgsts in ctx's namespace. containerd
// keeps the ingest of a blob whose copy failed, and the next pull would resume onto
// its bytes: after a corrupt body those are wrong, and the commit could never
// succeed.
//
// The ingest of a blob is found by its ref, which remotes.MakeRefKey ends with the
// digest ("layer-sha256:..."): the metadata store does not fill Status.Expected (it
// writes to the backend without the digest), so that is matched too but not relied
// on.
func abortIngests(ctx context.Context, cs content.IngestManager, dgsts []digest.Digest) {
	if _, ok := namespaces.Namespace(ctx); !ok {
		log.G(ctx).Warn("pull without a namespace: cannot abort the ingests of corrupt blobs")
		return
	}
	sts, err := cs.ListStatuses(ctx)
	if err != nil {
		log.G(ctx).WithError(err).Warn("listing ingests to abort those of corrupt blobs")
		return
	}
	for _, st := range sts {
		if !slices.ContainsFunc(dgsts, func(d digest.Digest) bool {
			return st.Expected == d || strings.HasSuffix(st.Ref, d.String())
		}) {
			continue
		}
		l := log.G(ctx).WithFields(log.Fields{"ingest": st.Ref, "offset": st.Offset, "total": st.Total})
		if err := cs.Abort(ctx, st.Ref); err != nil && !errdefs.IsNotFound(err) {
			l.WithError(err).Warn("aborting the ingest of a corrupt blob")
			continue
		}
		l.Info("aborted the ingest of a corrupt blob")
	}
}
