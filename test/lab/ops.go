package lab

import (
	"context"
)

// Seed pushes a random image to the lab's upstream.
func (l *Lab) Seed(ctx context.Context, repo, tag string, layers int, layerSize int64, index bool) (SeedResult, error) {
	pool, err := LoadPool(l.CA)
	if err != nil {
		return SeedResult{}, err
	}
	return Seed(ctx, SeedOptions{Registry: l.Upstream, Repo: repo, Tag: tag, Layers: layers, LayerSize: layerSize, Index: index, RootCAs: pool})
}

// UpstreamLog reads the upstream's access log.
func (l *Lab) UpstreamLog() ([]AccessEntry, error) {
	return ReadAccessLog(l.AccessLog)
}
