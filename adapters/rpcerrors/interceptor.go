package rpcerrors

import (
	"context"
	"log/slog"

	"connectrpc.com/connect"
)

// NewInterceptor turns every handler error, unary or streaming, into its
// Connect form and logs the full error at its class's level.
func NewInterceptor(logger *slog.Logger) connect.Interceptor {
	return &interceptor{logger: logger}
}

type interceptor struct {
	logger *slog.Logger
}

func (i *interceptor) mapped(ctx context.Context, procedure string, err error) error {
	c := Classify(err)
	i.logger.Log(ctx, c.Level, "rpc failed", "procedure", procedure, "identifier", c.Identifier, "err", err)
	return ToConnect(err)
}

func (i *interceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		res, err := next(ctx, req)
		if err != nil {
			return nil, i.mapped(ctx, req.Spec().Procedure, err)
		}
		return res, nil
	}
}

func (i *interceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i *interceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if err := next(ctx, conn); err != nil {
			return i.mapped(ctx, conn.Spec().Procedure, err)
		}
		return nil
	}
}
