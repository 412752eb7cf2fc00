package server

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/hopless/hopless/registryd/cache"
)

// serveReferrers answers GET and HEAD /v2/<name>/referrers/<digest> with the image
// index of the manifests that refer to the digest (cache.Referrers), filtered by the
// artifactType parameter when it is given, which OCI-Filters-Applied then says.
func (s *Server) serveReferrers(ctx context.Context, w http.ResponseWriter, r *http.Request, req cache.Request, d digest.Digest) {
	at := r.URL.Query().Get("artifactType")
	refs, err := s.cache.Referrers(ctx, req, d, at)
	if err != nil {
		_ = errcode.ServeJSON(w, s.cache.ReferrersError(ctx, d, err))
		return
	}
	body, err := json.Marshal(refs.Index)
	if err != nil {
		writeRegistryError(w, http.StatusInternalServerError, "UNKNOWN", "encoding the referrers index failed")
		return
	}
	if refs.Filtered {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	writeJSON(w, r, v1.MediaTypeImageIndex, body)
}
