package transfer

import (
	"context"
	"log/slog"

	"github.com/containerd/log"
)

// slogFromContainerd lets packages that log with slog (the balancer) write through
// containerd's logger, so a node has one log format.
func slogFromContainerd(e *log.Entry) *slog.Logger {
	return slog.New(&entryHandler{entry: e})
}

type entryHandler struct {
	entry *log.Entry
	group string
}

func (h *entryHandler) Enabled(_ context.Context, l slog.Level) bool {
	return h.entry.Logger.IsLevelEnabled(level(l))
}

func (h *entryHandler) Handle(_ context.Context, r slog.Record) error {
	fields := log.Fields{}
	r.Attrs(func(a slog.Attr) bool {
		fields[h.key(a.Key)] = a.Value.Resolve().Any()
		return true
	})
	h.entry.WithFields(fields).Log(level(r.Level), r.Message)
	return nil
}

func (h *entryHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	fields := log.Fields{}
	for _, a := range attrs {
		fields[h.key(a.Key)] = a.Value.Resolve().Any()
	}
	return &entryHandler{entry: h.entry.WithFields(fields), group: h.group}
}

func (h *entryHandler) WithGroup(name string) slog.Handler {
	return &entryHandler{entry: h.entry, group: h.key(name)}
}

func (h *entryHandler) key(k string) string {
	if h.group == "" {
		return k
	}
	return h.group + "." + k
}

func level(l slog.Level) log.Level {
	switch {
	case l >= slog.LevelError:
		return log.ErrorLevel
	case l >= slog.LevelWarn:
		return log.WarnLevel
	case l >= slog.LevelInfo:
		return log.InfoLevel
	default:
		return log.DebugLevel
	}
}
