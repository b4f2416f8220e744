package admin

import (
	"context"
	"errors"
	"log/slog"

	"connectrpc.com/connect"

	"github.com/harmony-postbox/postbox/adapters/rpcerrors"
)

// ErrorsInFull is the admin API's error mapping: each error keeps the code
// the one table (rpcerrors) gives it, and its whole text. The federation
// API tells callers only a sentinel's stable text, since they are strangers;
// the admin API is the operator's own, and an operator fixing a request
// needs the value at fault and the form expected.
func ErrorsInFull(logger *slog.Logger) connect.Interceptor {
	return fullErrors{logger: logger}
}

type fullErrors struct{ logger *slog.Logger }

func (f fullErrors) mapped(ctx context.Context, procedure string, err error) error {
	c := rpcerrors.Classify(err)
	f.logger.Log(ctx, c.Level, "admin rpc failed", "procedure", procedure, "err", err)
	if ce := (*connect.Error)(nil); errors.As(err, &ce) {
		return ce // built by a handler with its code and words
	}
	return connect.NewError(c.Code, errors.New(err.Error()))
}

func (f fullErrors) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		res, err := next(ctx, req)
		if err != nil {
			return nil, f.mapped(ctx, req.Spec().Procedure, err)
		}
		return res, nil
	}
}

func (f fullErrors) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (f fullErrors) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if err := next(ctx, conn); err != nil {
			return f.mapped(ctx, conn.Spec().Procedure, err)
		}
		return nil
	}
}
