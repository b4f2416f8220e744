package esdb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// clientLogger bridges the client's printf-style logging to slog.
func clientLogger(logger *slog.Logger) esdb.LoggingFunc {
	logger = logger.With("source", "client")
	return func(level esdb.LogLevel, format string, args ...any) {
		lvl := clientLevel(level)
		// The client logs every failed call and dropped subscription as an
		// error, including those the adapter expects and handles: its own
		// cancellations and the conflicts it returns as typed errors.
		if lvl > slog.LevelDebug && expected(args) {
			lvl = slog.LevelDebug
		}
		ctx := context.Background()
		if !logger.Enabled(ctx, lvl) {
			return
		}
		logger.Log(ctx, lvl, fmt.Sprintf(format, args...))
	}
}

func clientLevel(level esdb.LogLevel) slog.Level {
	switch level {
	case esdb.LogDebug:
		return slog.LevelDebug
	case esdb.LogInfo:
		return slog.LevelInfo
	case esdb.LogWarn:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

// expected reports whether a log line's arguments carry an error that the
// adapter handles itself.
func expected(args []any) bool {
	for _, a := range args {
		err, ok := a.(error)
		if !ok {
			continue
		}
		if errors.Is(err, context.Canceled) {
			return true
		}
		switch status.Code(err) {
		case codes.Canceled, codes.FailedPrecondition:
			return true
		}
	}
	return false
}
